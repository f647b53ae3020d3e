"""Turning a job, its lead and its template into the email that goes out."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formataddr
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


def lead_values(lead: LeadFields, sender_name: str | None) -> dict[str, str | None]:
    custom = lead.custom_fields
    values = {str(k): (None if v is None else str(v)) for k, v in custom.items()} if custom else {}
    values.update(email=lead.email, first_name=lead.first_name, last_name=lead.last_name, company=lead.company,
                  title=lead.title, sender_name=sender_name)
    return values


_FOOTER_STYLE = '<p style="font-size:12px;color:#666">'


@dataclass(frozen=True)
class _Fixed:
    """What an email takes from its campaign, template and sender config alone."""

    campaign_id: int
    sender_name: str | None
    from_header: str
    subject: str
    body: str
    html_template: str  # HTML whose placeholders take escaped values: the template's own, or its text body
    html_is_text: bool  # made from the text body: its line breaks become <br>
    postal_text: str  # the postal address closing each body, or ""
    postal_html: str
    unsubscribe_base: str  # the lead's reply token completes the link
    inbound_domain: str

    @classmethod
    def of(cls, campaign: Campaign, template: Template, config: SenderConfig) -> _Fixed:
        postal = (campaign.postal_address or "").strip()
        sender_name, sender_email = campaign.sender_name, campaign.sender_email or config.default_from
        return cls(
            campaign_id=campaign.id,
            sender_name=sender_name,
            from_header=formataddr((sender_name, sender_email)) if sender_name else sender_email,
            subject=template.subject,
            body=template.body,
            # The HTML version written for the template (by the model or by hand) when it has one.
            html_template=template.html_body or html.escape(template.body),
            html_is_text=not template.html_body,
            postal_text=f"{postal}\n" if postal else "",
            postal_html=f'{_FOOTER_STYLE}{html.escape(postal).replace(chr(10), "<br>")}</p>' if postal else "",
            unsubscribe_base=f"{config.app_base_url.rstrip('/')}/unsubscribe/",
            inbound_domain=config.inbound_domain,
        )


class Composer:
    """Composes emails for one sender config. A batch renders the same few templates for hundreds of leads,
    so what depends on the campaign and template alone is read and worked out once per pair."""

    def __init__(self, config: SenderConfig) -> None:
        self._config = config
        self._fixed: dict[tuple[int, int], _Fixed] = {}

    def compose(self, job: JobRef, lead: LeadFields, campaign: Campaign, template: Template,
                parent: ThreadParent | None, extra_values: Mapping[str, str] | None = None) -> OutgoingEmail:
        """Render a template for one lead; raises MissingFieldError when a field has no value and no fallback.

        `extra_values` are per-lead values that are not lead columns (the generated `ai_opener`).
        """
        key = (campaign.id, template.id)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = _Fixed.of(campaign, template, self._config)
        return _compose(job, lead, fixed, parent, extra_values)


def compose_email(
    job: JobRef, lead: LeadFields, campaign: Campaign, template: Template, config: SenderConfig,
    parent: ThreadParent | None, extra_values: Mapping[str, str] | None = None,
) -> OutgoingEmail:
    """One email on its own (see Composer.compose)."""
    return Composer(config).compose(job, lead, campaign, template, parent, extra_values)


def _compose(job: JobRef, lead: LeadFields, fixed: _Fixed, parent: ThreadParent | None,
             extra_values: Mapping[str, str] | None) -> OutgoingEmail:
    values = lead_values(lead, fixed.sender_name)
    if extra_values:
        values.update(extra_values)
    # A threaded follow-up answers the first email: same subject with "Re:", and its Message-ID.
    subject = f"Re: {parent.subject}" if parent is not None else render(fixed.subject, values, header=True)
    text = render(fixed.body, values)
    link = f"{fixed.unsubscribe_base}{lead.reply_token}"
    html_text = render(fixed.html_template, values, escape_html=True)
    if fixed.html_is_text:
        html_text = html_text.replace("\n", "<br>\n")
    headers = {"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    if parent is not None:
        headers["In-Reply-To"] = parent.message_id_header
        headers["References"] = parent.message_id_header
    return OutgoingEmail(
        to=lead.email,
        from_email=fixed.from_header,
        subject=subject,
        text_body=f"{text}\n\n--\nNot interested? Unsubscribe: {link}\n{fixed.postal_text}",
        html_body=f'<div>{html_text}</div>{_FOOTER_STYLE}Not interested? <a href="{html.escape(link)}">Unsubscribe</a>'
                  f"</p>{fixed.postal_html}",
        reply_to=f"reply+{lead.reply_token}@{fixed.inbound_domain}",
        headers=headers,
        metadata={"job_id": str(job.id), "campaign_id": str(fixed.campaign_id), "step": str(job.step_number)},
        tag=f"campaign-{fixed.campaign_id}",
    )
