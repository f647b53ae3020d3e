"""Turning a job, its lead and its template into the email that goes out."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formataddr

from outreach_pipeline.core.placeholders import render
from outreach_pipeline.db.models import Campaign, EmailJob, Lead, Template
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


def lead_values(lead: Lead, campaign: Campaign) -> dict[str, str | None]:
    return {
        **{str(k): (None if v is None else str(v)) for k, v in (lead.custom_fields or {}).items()},
        "email": lead.email,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "company": lead.company,
        "title": lead.title,
        "sender_name": campaign.sender_name,
    }


def unsubscribe_url(config: SenderConfig, lead: Lead) -> str:
    return f"{config.app_base_url.rstrip('/')}/unsubscribe/{lead.reply_token}"


def compose_email(
    job: EmailJob, lead: Lead, campaign: Campaign, template: Template, config: SenderConfig,
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
        "<div>" + render(html.escape(template.body), values, escape_html=True).replace("\n", "<br>\n") + "</div>"
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
        from_email=formataddr((campaign.sender_name, sender_email)) if campaign.sender_name else sender_email,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        reply_to=f"reply+{lead.reply_token}@{config.inbound_domain}",
        headers=headers,
        metadata={"job_id": str(job.id), "campaign_id": str(campaign.id), "step": str(job.step_number)},
        tag=f"campaign-{campaign.id}",
    )
