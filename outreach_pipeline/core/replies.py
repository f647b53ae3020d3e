"""Inbound mail: find the lead a reply belongs to, tell people from auto-responders, act on it.

A reply is matched, most certain first: by the `reply+TOKEN@` MailboxHash our Reply-To carries; by its
In-Reply-To/References against the Message-IDs we sent; by the sender's address among leads of running
campaigns (only when they all belong to one owner, so one tenant's reply never lands in another's
campaign). A person's reply stops the lead's sequence; an auto-reply is recorded against the lead and
changes nothing. Mail nothing of that matched, from the company domain of a lead we wrote to, is recorded
against that lead for review, the sequence left running; any other stays in `webhook_events` for review.
"""

from __future__ import annotations

import re
from email.utils import getaddresses
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.events import Action
from outreach_pipeline.core.stops import skip_pending_jobs
from outreach_pipeline.db.base import as_token, utcnow
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    EmailJob,
    Lead,
    LeadStatus,
    holds_reply_token,
)

UNMATCHED = "reply matched no lead; kept for review"

# Subjects auto-responders use, in the languages our users mail in most (compared case-folded), after any
# reply or forward prefixes ("RE:", "AW:", "SV:", "Fwd:") and an opening bracket ("[Auto-Reply]").
_REPLY_PREFIXES = r"(?:(?:re|aw|sv|vs|wg|fw|fwd|tr|rv|odp|ynt|r)\s*:\s*)*[\[(]?\s*"
AUTO_REPLY_SUBJECTS = re.compile(
    r"^\s*" + _REPLY_PREFIXES + r"(?:"
    r"auto(?:matic)?[\s_-]*repl(?:y|ied)|auto[\s_-]*response|autoreply|out[\s-]+of[\s-]+(?:the[\s-]+)?office|"
    r"ooo\b|"
    r"abwesenheit|automatische antwort|abwesend|"  # German
    r"r[ée]ponse automatique|absence du bureau|absent\b|"  # French
    r"respuesta autom[áa]tica|fuera de la oficina|ausente\b|"  # Spanish, Portuguese
    r"risposta automatica|fuori ufficio|"  # Italian
    r"automatisch antwoord|afwezig|"  # Dutch
    r"resposta autom[áa]tica|fora do escrit[óo]rio|"  # Portuguese
    r"autosvar|automatiskt? svar|fr[åa]nvaro|frav[æe]r|automaattinen vastaus|"  # Nordic
    r"odpowied[źz] automatyczna|automatick[áa] odpov[ěe][dď]|automatick[áa] odpove[dď]|"  # Polish, Czech, Slovak
    r"otomatik yan[ıi]t|ofis d[ıi][şs][ıi]nda|"  # Turkish
    r"automatikus v[áa]lasz|h[áa]zon k[íi]v[üu]l|"  # Hungarian
    r"r[ăa]spuns automat|automatski odgovor|"  # Romanian, Croatian and Serbian
    r"αυτόματη απάντηση|εκτός γραφείου|"  # Greek
    r"автоответ|автоматический ответ|автоматична відповідь|"  # Russian, Ukrainian
    r"自動応答|自動返信|不在|自动回复|自動回覆|자동\s*응답|"  # Japanese, Chinese, Korean
    r"رد تلقائي|מענה אוטומטי"  # Arabic, Hebrew
    r")",
    re.IGNORECASE,
)
# Precedence values auto-responders set (RFC 3834 asks for Auto-Submitted; many send these instead).
AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk", "list"}
# Lead statuses a reply can still change; a bounced or unsubscribed lead stays as it is.
OPEN_STATUSES = (LeadStatus.PENDING, LeadStatus.CONTACTED)
RUNNING = (CampaignStatus.ACTIVE, CampaignStatus.PAUSED)
MESSAGE_ID = re.compile(r"<[^<>\s]{1,298}>")
# Mailbox and internet providers whose domain many unrelated people share: mail from one is never tied to
# a lead by its domain. No list is complete; a domain match only records the mail, it never stops a lead.
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "outlook.de", "outlook.fr", "hotmail.com", "hotmail.co.uk",
    "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es", "live.com", "live.co.uk", "live.de", "live.fr",
    "msn.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.es", "yahoo.it", "yahoo.ca",
    "yahoo.co.jp", "yahoo.com.br", "ymail.com", "rocketmail.com", "aol.com", "aim.com", "icloud.com", "me.com",
    "mac.com", "proton.me", "protonmail.com", "pm.me", "gmx.com", "gmx.de", "gmx.net", "gmx.at", "gmx.ch",
    "web.de", "t-online.de", "mail.com", "inbox.com", "zoho.com", "yandex.com", "yandex.ru", "yandex.ua",
    "mail.ru", "rambler.ru", "ukr.net", "qq.com", "163.com", "126.com", "139.com", "sina.com", "naver.com",
    "daum.net", "hanmail.net", "rediffmail.com", "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr", "laposte.net",
    "libero.it", "bluewin.ch", "seznam.cz", "wp.pl", "o2.pl", "interia.pl", "btinternet.com", "sky.com",
    "virginmedia.com", "comcast.net", "verizon.net", "att.net", "sbcglobal.net", "bellsouth.net", "cox.net",
    "charter.net", "earthlink.net", "juno.com", "shaw.ca", "rogers.com", "bigpond.com", "fastmail.com",
    "hey.com", "tutanota.com",
})


def headers_of(payload: dict[str, Any]) -> dict[str, str]:
    """Postmark's `Headers` list as a name (lower-cased) -> value map; malformed entries are skipped."""
    found: dict[str, str] = {}
    headers = payload.get("Headers")
    for header in headers if isinstance(headers, list) else []:
        if isinstance(header, dict) and isinstance(header.get("Name"), str):
            found.setdefault(header["Name"].strip().lower(), str(header.get("Value") or ""))
    return found


def is_auto_reply(headers: dict[str, str], subject: str) -> bool:
    auto_submitted = headers.get("auto-submitted", "").strip().lower()
    if auto_submitted and auto_submitted != "no":
        return True
    if "x-autoreply" in headers or "x-autorespond" in headers:
        return True
    if headers.get("precedence", "").strip().lower() in AUTO_PRECEDENCE:
        return True
    return AUTO_REPLY_SUBJECTS.match(subject) is not None


def sender_of(payload: dict[str, Any]) -> str:
    """The From address (lower-cased); Postmark's parsed FromFull when From is missing."""
    addresses = getaddresses([str(payload.get("From") or "")])
    if addresses and "@" in addresses[0][1]:
        return addresses[0][1].strip().lower()
    full = payload.get("FromFull")
    email = full.get("Email") if isinstance(full, dict) else None
    return email.strip().lower() if isinstance(email, str) else ""


def _by_mailbox_hash(session: Session, payload: dict[str, Any]) -> Lead | None:
    token = str(payload.get("MailboxHash") or "")
    # Text that is not a token cannot match and is not worth a query.
    if as_token(token) is None:
        return None
    return session.scalar(select(Lead).where(holds_reply_token(token)))


def _by_thread(session: Session, headers: dict[str, str]) -> Lead | None:
    ids = MESSAGE_ID.findall(headers.get("in-reply-to", "") + " " + headers.get("references", ""))
    if not ids:
        return None
    job = session.scalar(select(EmailJob).where(EmailJob.message_id_header.in_(ids[:50]))
                         .order_by(EmailJob.id.desc()).limit(1))
    return job.lead if job is not None else None


def _single_owner_lead(session: Session, *conditions: ColumnElement[bool]) -> Lead | None:
    """The lead meeting `conditions` in a running campaign (a contacted one first, then the newest), when
    they all belong to one owner: with several tenants, a person decides."""
    scope = (*conditions, Lead.status.in_(OPEN_STATUSES))
    return _only_owner(session, scope, scope, ((Lead.status == LeadStatus.CONTACTED).desc(), Lead.id.desc()))


def _only_owner(session: Session, owned: tuple[ColumnElement[bool], ...], chosen: tuple[ColumnElement[bool], ...],
                order: tuple[Any, ...]) -> Lead | None:
    """The first lead meeting `chosen` in `order`, among running campaigns, when every lead meeting `owned`
    there belongs to one owner."""
    running = Campaign.status.in_(RUNNING)
    owners = session.scalars(select(Campaign.owner_id).join(Lead, Lead.campaign_id == Campaign.id)
                             .where(*owned, running).distinct().limit(2)).all()
    if len(owners) != 1:
        return None
    return session.scalar(select(Lead).join(Campaign, Campaign.id == Lead.campaign_id).where(*chosen, running)
                          .order_by(*order).limit(1))


def _by_sender(session: Session, sender: str) -> Lead | None:
    return _single_owner_lead(session, Lead.email_key == sender) if "@" in sender else None


def match_reply(session: Session, payload: dict[str, Any], headers: dict[str, str], sender: str) -> Lead | None:
    """The lead a reply answers, by the most certain evidence first."""
    return _by_mailbox_hash(session, payload) or _by_thread(session, headers) or _by_sender(session, sender)


def colleague_lead(session: Session, sender: str) -> Lead | None:
    """For mail nothing more certain matched (a fresh email from an address we never wrote to): the lead
    we last emailed at the sender's company domain, when one owner has such leads. Never for a free-mail
    domain. Reads the running campaigns' contacted leads (no index on the domain: a lead row stays as cheap
    to import as it can be)."""
    domain = sender.rpartition("@")[2]
    if not domain or domain in FREE_MAIL_DOMAINS:
        return None
    # A sender who is a lead somewhere is no colleague: when _by_sender left them unmatched (two owners,
    # or a lead no longer open), a person decides.
    if session.scalar(select(Lead.id).where(Lead.email_key == sender).limit(1)) is not None:
        return None
    at_company = Lead.email_key.endswith(f"@{domain}", autoescape=True)
    last_sent = (select(func.max(EmailJob.sent_at)).where(EmailJob.lead_id == Lead.id)
                 .correlate(Lead).scalar_subquery())
    # Owners counted over every lead at the domain: one tenant's contacted lead must not take mail another
    # tenant's leads there could be meant by.
    return _only_owner(session, (at_company,), (at_company, Lead.status == LeadStatus.CONTACTED),
                       (last_sent.desc().nulls_last(), Lead.id.desc()))


def _who(lead: Lead, sender: str) -> str:
    if not sender or sender == lead.email_key:
        return ""
    same_company = sender.rpartition("@")[2] == lead.email_key.rpartition("@")[2]
    # Cut short: the outcome column holds 200 characters and an address may have 320.
    return f" (from {'a colleague at the lead company' if same_company else 'another address'}, {sender[:80]})"


def handle_inbound(session: Session, payload: dict[str, Any]) -> Action:
    """Record an inbound message against its lead and, when a person wrote it, stop the lead's sequence."""
    headers, sender = headers_of(payload), sender_of(payload)
    lead = match_reply(session, payload, headers, sender)
    if lead is None:
        return _from_colleague(session, sender)
    lead_id, opened = lead.id, lead.status in OPEN_STATUSES
    who = _who(lead, sender)
    if is_auto_reply(headers, str(payload.get("Subject") or "")):
        return Action(f"auto-reply for lead {lead_id} recorded{who}; sequence continues", lead_id=lead_id)

    def outcome(skipped: int) -> str:
        return f"lead {lead_id} replied{who}; {skipped} pending job(s) skipped"

    def record_reply(session: Session) -> str:
        if opened:
            session.execute(update(Lead).where(Lead.id == lead_id)
                            .values(status=LeadStatus.REPLIED, replied_at=utcnow()))
        return outcome(skip_pending_jobs(session, [lead_id], "lead replied")[lead_id])

    # Replies are rare next to deliveries: the skipped count is written once known (one more statement).
    return Action(outcome(0), lead_id=lead_id, apply=record_reply)


def _from_colleague(session: Session, sender: str) -> Action:
    """Mail from the company of a lead we wrote to, by nothing but its domain: recorded against that lead
    for a person to read, the sequence left running. The domain alone is weak evidence (a large company,
    an internet provider's domain missing from FREE_MAIL_DOMAINS): stopping on it could stop the wrong
    lead, while a reply to our email itself (its Reply-To, its thread) is matched above and stops."""
    lead = colleague_lead(session, sender)
    if lead is None:
        return Action(UNMATCHED)
    return Action(f"mail from {sender[:80]}, at the company of lead {lead.id}, recorded for review; "
                  "sequence continues", lead_id=lead.id)
