"""Per-lead opening lines (`{{ai_opener}}`): written in batch before launch, stored per lead, never sent blank.

A batch asks the model concurrently (bounded by `concurrency`) through async clients; the SDK retries
429 (honouring retry-after) and 5xx with backoff. An invalid answer is asked once more with the reason;
a lead whose opener still failed is stored FAILED and asked again on the next run. Answers already in the
cache (same model, prompt version and lead facts) cost no call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.llm_cache import CacheWrite, cache_key, cached_answers, remember
from outreach_pipeline.core.placeholders import AI_OPENER, campaign_template_texts, uses_field
from outreach_pipeline.db.models import Campaign, CampaignStatus, Lead, LeadOpener, LeadStatus, Template
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.llm.brief import (
    InvalidModelOutput,
    OpenerBrief,
    OpenerClient,
    TemplateWriter,
    WriterUnavailableError,
)
from outreach_pipeline.llm.prompts import PROMPT_VERSION, opener_messages

READY, FAILED, BATCHED = "READY", "FAILED", "BATCHED"
MAX_OPENER = 300
OPEN_STATUSES = (CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED)
# Leads that may still receive a first email.
WAITING = (LeadStatus.PENDING,)
_STORE_EVERY = 200  # results are written as they come, so a crash mid-batch keeps what was paid for


@dataclass
class OpenerReport:
    leads: int = 0  # leads that needed an opener
    written: int = 0  # of which now READY (cache hits included)
    cache_hits: int = 0
    failed: int = 0
    model_requests: int = 0  # requests made, validation retries included (not the SDK's own retries)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # lead id -> why (first few)

    def add(self, other: OpenerReport) -> None:
        for name in ("leads", "written", "cache_hits", "failed", "model_requests", "prompt_tokens",
                     "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for lead_id, error in other.errors.items():
            if len(self.errors) < 20:
                self.errors[lead_id] = error


@dataclass(frozen=True)
class Outcome:
    lead_ids: tuple[int, ...]  # leads with the same facts share one request
    key: str
    text: str | None
    error: str | None
    source: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


# --- what needs an opener ----------------------------------------------------------------------


def campaign_uses_openers(session: Session, campaign_id: int) -> bool:
    return any(uses_field(text, AI_OPENER) for text in campaign_template_texts(session, campaign_id))


def campaigns_needing_openers(session: Session) -> list[int]:
    """Open campaigns whose templates use `{{ai_opener}}`."""
    ids = session.scalars(select(Campaign.id).where(Campaign.status.in_(OPEN_STATUSES)).order_by(Campaign.id))
    return [campaign_id for campaign_id in ids if campaign_uses_openers(session, campaign_id)]


def _without_opener(campaign_id: int, waiting_for_batch: bool = False) -> Select[tuple[int]]:
    settled = (READY,) if waiting_for_batch else (READY, BATCHED)
    ready = select(LeadOpener.lead_id).where(LeadOpener.campaign_id == campaign_id, LeadOpener.status.in_(settled))
    return select(Lead.id).where(Lead.campaign_id == campaign_id, Lead.status.in_(WAITING), Lead.id.not_in(ready))


def leads_without_opener(session: Session, campaign_id: int, *, waiting_for_batch: bool = False) -> list[Lead]:
    """Waiting leads with no READY opener; those in a submitted batch count as having one unless
    `waiting_for_batch` (launch must still wait for them)."""
    return list(session.scalars(select(Lead).where(Lead.id.in_(_without_opener(campaign_id, waiting_for_batch)))
                                .order_by(Lead.id)))


def opener_problems(text: str) -> list[str]:
    """Why an opener cannot be used as it is."""
    problems: list[str] = []
    stripped = text.strip()
    if not stripped:
        problems.append("The opener is empty.")
    if len(stripped) > MAX_OPENER:
        problems.append(f"The opener is longer than {MAX_OPENER} characters.")
    if "\n" in stripped:
        problems.append("The opener must be one line.")
    if "{" in stripped or "}" in stripped:
        problems.append("The opener must not contain braces or placeholders.")
    return problems


def opener_brief(campaign: Campaign, lead: Lead | Row[Any]) -> OpenerBrief:
    facts = {"first_name": lead.first_name, "last_name": lead.last_name, "company": lead.company,
             "title": lead.title, **{str(k): v for k, v in (lead.custom_fields or {}).items()}}
    return OpenerBrief(campaign.name, campaign.pitch, campaign.tone,
                       {k: str(v) for k, v in facts.items() if v not in (None, "")})


# --- the batch ---------------------------------------------------------------------------------


async def _write_one(client: OpenerClient, brief: OpenerBrief, lead_ids: tuple[int, ...], key: str,
                     limit: asyncio.Semaphore) -> Outcome:
    feedback: str | None = None
    tokens = [0, 0]
    error = "no answer"
    source, model = "openai", None
    for attempt in (1, 2):
        async with limit:
            try:
                written = await client.write_opener(brief, feedback)
            except InvalidModelOutput as failure:
                error = f"The answer could not be read: {failure}"
            except WriterUnavailableError as failure:  # the SDK already retried what was worth retrying
                return Outcome(lead_ids, key, None, str(failure)[:500], source, model, tokens[0], tokens[1], attempt)
            else:
                source, model = written.source, written.model
                tokens[0] += written.prompt_tokens
                tokens[1] += written.completion_tokens
                problems = opener_problems(written.text)
                if not problems:
                    return Outcome(lead_ids, key, written.text.strip(), None, source, model, tokens[0], tokens[1],
                                    attempt)
                error = "; ".join(problems)
        feedback = error
    return Outcome(lead_ids, key, None, error, source, model, tokens[0], tokens[1], 2)


def store_outcomes(factory: sessionmaker[Session], campaign_id: int, outcomes: Iterable[Outcome], cached: bool,
                   report: OpenerReport) -> None:
    """Write outcomes as READY or FAILED rows (bulk statements: this runs while requests are in flight)."""
    outcomes = list(outcomes)
    lead_ids = [lead_id for o in outcomes for lead_id in o.lead_ids]
    now = utcnow()
    with session_scope(factory) as session:
        existing = {lead_id: (row_id, attempts) for row_id, lead_id, attempts in session.execute(
            select(LeadOpener.id, LeadOpener.lead_id, LeadOpener.attempts).where(LeadOpener.lead_id.in_(lead_ids)))}
        inserts: list[dict[str, object]] = []
        updates: list[dict[str, object]] = []
        for outcome in outcomes:
            for index, lead_id in enumerate(outcome.lead_ids):
                # Tokens are counted once, on the first lead that shared the request.
                first = index == 0 and not cached
                values: dict[str, object] = {
                    "status": READY if outcome.text else FAILED, "text": outcome.text, "error": outcome.error,
                    "source": outcome.source, "model": outcome.model, "prompt_version": PROMPT_VERSION,
                    "prompt_tokens": outcome.prompt_tokens if first else 0,
                    "completion_tokens": outcome.completion_tokens if first else 0, "updated_at": now,
                }
                attempts = 0 if cached else outcome.attempts
                if lead_id in existing:
                    row_id, before = existing[lead_id]
                    updates.append({"id": row_id, **values, "attempts": (before or 0) + attempts})
                else:
                    inserts.append({"lead_id": lead_id, "campaign_id": campaign_id, **values, "attempts": attempts})
                if outcome.text:
                    report.written += 1
                    report.cache_hits += 1 if cached else 0
                else:
                    report.failed += 1
                    if len(report.errors) < 20:
                        report.errors[lead_id] = outcome.error or "failed"
            if not cached:
                report.model_requests += outcome.attempts
                report.prompt_tokens += outcome.prompt_tokens
                report.completion_tokens += outcome.completion_tokens
        if inserts:
            session.execute(insert(LeadOpener), inserts)
        if updates:
            session.execute(update(LeadOpener), updates)  # bulk UPDATE by primary key
        remember(session, [CacheWrite(o.key, "opener", o.model, {"opener": o.text}, o.prompt_tokens,
                                      o.completion_tokens)
                           for o in outcomes if o.text and o.model and not cached])


async def _run(writer: TemplateWriter, factory: sessionmaker[Session], campaign_id: int,
               work: list[tuple[OpenerBrief, tuple[int, ...], str]], concurrency: int, report: OpenerReport) -> None:
    limit = asyncio.Semaphore(concurrency)
    async with writer.opener_client(concurrency) as client:
        tasks = [asyncio.create_task(_write_one(client, brief, ids, key, limit)) for brief, ids, key in work]
        done: list[Outcome] = []
        try:
            for finished in asyncio.as_completed(tasks):
                done.append(await finished)
                if len(done) >= _STORE_EVERY:
                    # In a thread, so the requests in flight keep going while the database writes.
                    await asyncio.to_thread(store_outcomes, factory, campaign_id, done, False, report)
                    done = []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(store_outcomes, factory, campaign_id, done, False, report)


Work = list[tuple[OpenerBrief, tuple[int, ...], str]]  # (brief, the leads it serves, its cache key)


def plan_openers(factory: sessionmaker[Session], writer: TemplateWriter, campaign_id: int,
                 report: OpenerReport) -> Work:
    """The requests a campaign's waiting leads need: cache hits are stored at once, the rest returned."""
    with session_scope(factory) as session:
        campaign = session.get_one(Campaign, campaign_id)
        leads = session.execute(select(Lead.id, Lead.first_name, Lead.last_name, Lead.company, Lead.title,
                                       Lead.custom_fields).where(Lead.id.in_(_without_opener(campaign_id)))
                                .order_by(Lead.id)).all()
        # Leads with the same facts get the same question: ask once, and key the cache by it.
        groups: dict[str, tuple[OpenerBrief, list[int]]] = {}
        for lead in leads:
            brief = opener_brief(campaign, lead)
            key = cache_key("opener", writer.model or writer.name, opener_messages(brief))
            groups.setdefault(key, (brief, []))[1].append(lead.id)
        hits = cached_answers(session, groups) if writer.model else {}
    report.leads = len(leads)
    cached = [Outcome(tuple(ids), key, str(hits[key]["opener"]), None, "openai", writer.model, 0, 0, 0)
              for key, (_brief, ids) in groups.items() if key in hits]
    if cached:
        store_outcomes(factory, campaign_id, cached, True, report)
    return [(brief, tuple(ids), key) for key, (brief, ids) in groups.items() if key not in hits]


def generate_openers(factory: sessionmaker[Session], writer: TemplateWriter, campaign_id: int,
                     concurrency: int = 16) -> OpenerReport:
    """Write the opener of every waiting lead of a campaign that has no READY one (FAILED ones again)."""
    report = OpenerReport()
    work = plan_openers(factory, writer, campaign_id, report)
    if work:
        asyncio.run(_run(writer, factory, campaign_id, work, concurrency, report))
    return report


# --- launch and send ---------------------------------------------------------------------------


def missing_opener_problems(session: Session, campaign: Campaign) -> list[str]:
    """Launch pre-flight: a template uses `{{ai_opener}}` without a fallback and some waiting leads have none."""
    templates = session.scalars(select(Template).where(Template.campaign_id == campaign.id))
    if not any(uses_field(t.subject + "\n" + t.body, AI_OPENER, without_fallback=True) for t in templates):
        return []
    missing = leads_without_opener(session, campaign.id, waiting_for_batch=True)
    if not missing:
        return []
    failed = session.scalars(select(LeadOpener.error).where(
        LeadOpener.lead_id.in_([lead.id for lead in missing]), LeadOpener.status == FAILED).limit(1)).first()
    why = f" (last error: {failed})" if failed else ""
    return [f"{len(missing)} lead(s) have no {{{{{AI_OPENER}}}}} opening line yet; materialise the lead_openers "
            f"asset or POST /api/campaigns/{campaign.id}/templates/openers{why}."]


def opener_values(session: Session, lead_ids: Iterable[int]) -> dict[int, str]:
    """READY openers by lead id, to merge into the values a template is rendered with (`ai_opener`)."""
    ids = list(lead_ids)
    found: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        for lead_id, text in session.execute(select(LeadOpener.lead_id, LeadOpener.text).where(
                LeadOpener.lead_id.in_(ids[start:start + 500]), LeadOpener.status == READY)):
            found[lead_id] = text
    return found
