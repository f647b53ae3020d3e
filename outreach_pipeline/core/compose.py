"""Turning a job, its lead and its template into the email that goes out."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formataddr
from functools import lru_cache
from typing import Any, Protocol

from outreach_pipeline.core.placeholders import render
from outreach_pipeline.db.models import Campaign, Template
from outreach_pipeline.mail.message import OutgoingEmail


@dataclass(frozen=True)
class SenderConfig:
    default_from: str  # used when the campaign names no sender address
    inbound_domain: str  # replies go to reply+TOKEN@inbound_domain
    app_base_url: str  # where the unsubscribe page lives


@dataclass(frozen=True)
class ThreadParent:
    """The first email of the sequence, which threaded follow-ups answer."""

    subject: str
    message_id_header: str


class LeadFields(Protocol):
    """What composing reads of a lead: a Lead, or a plain row of its columns (the send path reads rows,
    not ORM objects, to keep a 500-email batch cheap)."""

    @property
    def email(self) -> str: ...
    @property
    def first_name(self) -> str | None: ...
    @property
    def last_name(self) -> str | None: ...
    @property
    def company(self) -> str | None: ...
    @property
    def title(self) -> str | None: ...
    @property
    def custom_fields(self) -> dict[str, Any] | None: ...
    @property
    def reply_token(self) -> str: ...


class JobRef(Protocol):
    """What composing reads of a job: an EmailJob, or a row with its id and step."""

    @property
    def id(self) -> int: ...
    @property
    def step_number(self) -> int: ...


def lead_values(lead: LeadFields, campaign: Campaign) -> dict[str, str | None]:
    return {
        **{str(k): (None if v is None else str(v)) for k, v in (lead.custom_fields or {}).items()},
        "email": lead.email,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "company": lead.company,
        "title": lead.title,
        "sender_name": campaign.sender_name,
    }


def unsubscribe_url(config: SenderConfig, lead: LeadFields) -> str:
    return f"{config.app_base_url.rstrip('/')}/unsubscribe/{lead.reply_token}"


# A batch renders one template for hundreds of leads: what depends on the template or sender alone is
# worked out once, not per email.
@lru_cache(maxsize=256)
def _escaped(template_body: str) -> str:
    return html.escape(template_body)


@lru_cache(maxsize=256)
def _from_header(sender_name: str | None, sender_email: str) -> str:
    return formataddr((sender_name, sender_email)) if sender_name else sender_email


def compose_email(
    job: JobRef, lead: LeadFields, campaign: Campaign, template: Template, config: SenderConfig,
    parent: ThreadParent | None, extra_values: Mapping[str, str] | None = None,
) -> OutgoingEmail:
    """Render a template for one lead; raises MissingFieldError when a field has no value and no fallback.

    `extra_values` are per-lead values that are not lead columns (the generated `ai_opener`).
    """
    values = {**lead_values(lead, campaign), **(extra_values or {})}
    # A threaded follow-up answers the first email: same subject with "Re:", and its Message-ID.
    subject = f"Re: {parent.subject}" if parent is not None else render(template.subject, values, header=True)
    text = render(template.body, values)
    link = unsubscribe_url(config, lead)
    postal = (campaign.postal_address or "").strip()
    text_body = f"{text}\n\n--\nNot interested? Unsubscribe: {link}\n" + (f"{postal}\n" if postal else "")
    html_body = (
        "<div>" + render(_escaped(template.body), values, escape_html=True).replace("\n", "<br>\n") + "</div>"
        f'<p style="font-size:12px;color:#666">Not interested? <a href="{html.escape(link)}">Unsubscribe</a></p>'
        + (f'<p style="font-size:12px;color:#666">{html.escape(postal).replace(chr(10), "<br>")}</p>' if postal else "")
    )
    sender_email = campaign.sender_email or config.default_from
    headers = {
        "List-Unsubscribe": f"<{link}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    if parent is not None:
        headers["In-Reply-To"] = parent.message_id_header
        headers["References"] = parent.message_id_header
    return OutgoingEmail(
        to=lead.email,
        from_email=_from_header(campaign.sender_name, sender_email),
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        reply_to=f"reply+{lead.reply_token}@{config.inbound_domain}",
        headers=headers,
        metadata={"job_id": str(job.id), "campaign_id": str(campaign.id), "step": str(job.step_number)},
        tag=f"campaign-{campaign.id}",
    )
