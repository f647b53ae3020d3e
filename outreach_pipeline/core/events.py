"""Postmark webhooks: store each event once, then act on it (stop sequences, suppress, record)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.suppression import lift_suppression, suppress
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.dialect import insert_ignoring_conflicts
from outreach_pipeline.db.models import (
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    WebhookEvent,
)

log = logging.getLogger(__name__)

# Bounce types after which the address must never be mailed again.
HARD_BOUNCE_TYPES = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"}
# Passing trouble at the receiving end: the sequence waits a day; repeated, the address is given up.
SOFT_BOUNCE_TYPES = {"SoftBounce", "Transient", "DnsError"}
SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_DELAY = timedelta(days=1)
# Records that can arrive many times for one message: each distinct one is kept, by its timestamp.
TIMESTAMPED_RECORDS = {"Open": "ReceivedAt", "Click": "ReceivedAt", "SubscriptionChange": "ChangedAt"}


@dataclass(frozen=True)
class EventResult:
    event_id: int | None
    duplicate: bool
    outcome: str


def _event_key(record_type: str, payload: dict[str, Any]) -> str:
    # Bounces carry their own ID; other records are identified by the message they concern.
    if record_type in ("Bounce", "SpamComplaint") and payload.get("ID") is not None:
        return str(payload["ID"])
    if payload.get("MessageID"):
        stamp = payload.get(TIMESTAMPED_RECORDS.get(record_type, ""))
        return f"{payload['MessageID']}@{stamp}" if stamp else str(payload["MessageID"])
    raise ValueError("the payload has neither ID nor MessageID")


def record_type_of(payload: dict[str, Any], default: str) -> str:
    return str(payload.get("RecordType") or default)


def skip_pending_jobs(session: Session, lead_id: int, reason: str) -> int:
    result = session.execute(
        update(EmailJob).where(EmailJob.lead_id == lead_id, EmailJob.status == JobStatus.PENDING)
        .values(status=JobStatus.SKIPPED, last_error=reason)
    )
    return result.rowcount or 0


Handler = Callable[[Session, dict[str, Any], WebhookEvent], str]


def _job_for_message(session: Session, message_id: str | None) -> EmailJob | None:
    if not message_id:
        return None
    return session.scalar(select(EmailJob).where(EmailJob.provider_message_id == str(message_id)))


def _on_inbound(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
    # Matching (mailbox hash, thread, sender) and auto-reply detection live in core/replies.py.
    from outreach_pipeline.core.replies import handle_inbound

    return handle_inbound(session, payload, event)


def _on_bounce(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
    job = _job_for_message(session, payload.get("MessageID"))
    if job is None:
        return "bounce for a message we did not send"
    event.job_id, event.lead_id = job.id, job.lead_id
    bounce_type = str(payload.get("Type", ""))
    lead = job.lead
    if bounce_type == "SpamComplaint":
        return _on_spam_complaint(session, payload, event)
    if bounce_type in SOFT_BOUNCE_TYPES:
        return _on_soft_bounce(session, lead, bounce_type)
    if bounce_type not in HARD_BOUNCE_TYPES:
        return f"{bounce_type or 'unknown'} bounce recorded"
    lead.status = LeadStatus.BOUNCED
    suppress(session, lead.campaign.owner_id, lead.email_key, "bounce")
    skipped = skip_pending_jobs(session, lead.id, f"address bounced ({bounce_type})")
    return f"lead {lead.id} bounced ({bounce_type}); address suppressed; {skipped} pending job(s) skipped"


def _soft_bounces(session: Session, lead_id: int) -> int:
    types = session.scalars(select(WebhookEvent.payload).where(
        WebhookEvent.lead_id == lead_id, WebhookEvent.record_type == "Bounce")).all()
    return sum(1 for payload in types if str(payload.get("Type", "")) in SOFT_BOUNCE_TYPES)


def _on_soft_bounce(session: Session, lead: Lead, bounce_type: str) -> str:
    session.flush()  # this event's lead_id must count
    count = _soft_bounces(session, lead.id)
    if count >= SOFT_BOUNCE_LIMIT:
        lead.status = LeadStatus.BOUNCED
        suppress(session, lead.campaign.owner_id, lead.email_key, "soft-bounce")
        skipped = skip_pending_jobs(session, lead.id, f"address soft-bounced {count} times")
        return f"lead {lead.id} soft-bounced {count} times; address suppressed; {skipped} pending job(s) skipped"
    # Retry later: the lead's next email waits a day for the receiving side to recover.
    pending = session.scalars(select(EmailJob).where(EmailJob.lead_id == lead.id,
                                                     EmailJob.status == JobStatus.PENDING)).all()
    for job in pending:  # a lead has a handful of jobs at most; date arithmetic in Python is portable
        job.due_at = job.due_at + SOFT_BOUNCE_DELAY
    delayed = len(pending)
    log.info("soft bounce %d of %d for lead %d; %d pending job(s) delayed a day",
             count, SOFT_BOUNCE_LIMIT, lead.id, delayed)
    return f"{bounce_type} bounce recorded"


def _on_spam_complaint(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
    job = _job_for_message(session, payload.get("MessageID"))
    if job is None:
        return "complaint for a message we did not send"
    event.job_id, event.lead_id = job.id, job.lead_id
    lead = job.lead
    lead.status = LeadStatus.UNSUBSCRIBED
    suppress(session, lead.campaign.owner_id, lead.email_key, "complaint")
    skip_pending_jobs(session, lead.id, "spam complaint")
    return f"lead {lead.id} complained; address suppressed"


def _on_delivery(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
    job = _job_for_message(session, payload.get("MessageID"))
    if job is None:
        return "delivery for a message we did not send"
    event.job_id, event.lead_id = job.id, job.lead_id
    job.delivered_at = job.delivered_at or utcnow()
    return f"job {job.id} delivered"


def _engagement(record_type: str, stamp: str, verb: str) -> Handler:
    """Opens and clicks: the first one stamps the job; one for a message we did not send is only recorded."""

    def handle(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
        job = _job_for_message(session, payload.get("MessageID"))
        if job is None:
            return f"{record_type} recorded"
        event.job_id, event.lead_id = job.id, job.lead_id
        if getattr(job, stamp) is None:
            setattr(job, stamp, utcnow())
        return f"job {job.id} {verb}"

    return handle


_on_open = _engagement("Open", "opened_at", "opened")
_on_click = _engagement("Click", "clicked_at", "clicked")


def _on_subscription_change(session: Session, payload: dict[str, Any], event: WebhookEvent) -> str:
    """Postmark's own suppression list changed: SuppressSending true suppresses, false lifts ours too."""
    job = _job_for_message(session, payload.get("MessageID"))
    if job is None:
        return "SubscriptionChange recorded"  # for a message we did not send
    event.job_id, event.lead_id = job.id, job.lead_id
    lead = job.lead
    owner_id = lead.campaign.owner_id
    if payload.get("SuppressSending"):
        reason = str(payload.get("SuppressionReason") or "provider")[:32]
        suppress(session, owner_id, lead.email_key, reason)
        skipped = skip_pending_jobs(session, lead.id, f"provider suppressed the address ({reason})")
        return f"lead {lead.id} suppressed by the provider ({reason}); {skipped} pending job(s) skipped"
    lifted = lift_suppression(session, owner_id, lead.email_key)
    return f"suppression of lead {lead.id} lifted" if lifted else f"lead {lead.id} was not suppressed"


HANDLERS = {
    "Inbound": _on_inbound,
    "Bounce": _on_bounce,
    "SpamComplaint": _on_spam_complaint,
    "Delivery": _on_delivery,
    "Open": _on_open,
    "Click": _on_click,
    "SubscriptionChange": _on_subscription_change,
}


def handle_postmark_event(session: Session, payload: dict[str, Any], default_type: str) -> EventResult:
    """Store the event once and act on it in the same transaction; a replay changes nothing."""
    record_type = record_type_of(payload, default_type)
    key = _event_key(record_type, payload)
    inserted = session.execute(
        insert_ignoring_conflicts(session, WebhookEvent, ["provider", "record_type", "provider_id"])
        .values(provider="postmark", record_type=record_type, provider_id=key, payload=payload)
        .returning(WebhookEvent.id)
    ).scalar()
    if inserted is None:
        return EventResult(None, True, "already processed")
    event = session.get_one(WebhookEvent, inserted)
    handler = HANDLERS.get(record_type)
    event.outcome = handler(session, payload, event) if handler else f"{record_type} recorded"
    event.processed_at = utcnow()
    log.info("postmark event", extra={"record_type": record_type, "outcome": event.outcome})
    return EventResult(event.id, False, event.outcome)


def unsubscribe_by_token(session: Session, reply_token: str) -> Lead | None:
    """The lead behind an unsubscribe link stops receiving mail from its owner, in every campaign."""
    lead = session.scalar(select(Lead).where(Lead.reply_token == reply_token))
    if lead is None:
        return None
    if lead.status in (LeadStatus.PENDING, LeadStatus.CONTACTED, LeadStatus.REPLIED):
        lead.status = LeadStatus.UNSUBSCRIBED
    suppress(session, lead.campaign.owner_id, lead.email_key, "unsubscribe")
    skip_pending_jobs(session, lead.id, "lead unsubscribed")
    return lead
