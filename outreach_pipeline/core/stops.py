"""Stopping leads: a new status, the address on the owner's suppression list, the pending jobs skipped.

Bounces, complaints, provider suppressions, replies and unsubscribes all end a lead's sequence the same way;
here it is done for any number of leads in a handful of statements, so a batch of webhook events costs
about what one does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from outreach_pipeline.core.jobs import among
from outreach_pipeline.core.suppression import suppress_many
from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus


@dataclass(frozen=True)
class StopLead:
    """One lead to stop. `status` None keeps the lead's status; `suppression_reason` None suppresses nothing."""

    lead_id: int
    owner_id: int
    email_key: str
    status: LeadStatus | None
    suppression_reason: str | None
    skip_reason: str
    outcome: Callable[[int], str]  # the event's outcome, given how many pending jobs were skipped


def skip_pending_jobs(session: Session, lead_ids: Sequence[int], reason: str) -> Counter[int]:
    """Skip the leads' jobs still to send; how many were skipped, by lead."""
    if not lead_ids:
        return Counter()
    skipped = session.execute(
        update(EmailJob).where(among(session, EmailJob.lead_id, sorted(set(lead_ids))),
                               EmailJob.status == JobStatus.PENDING)
        .values(status=JobStatus.SKIPPED, last_error=reason).returning(EmailJob.lead_id)
        .execution_options(synchronize_session=False)
    ).scalars()
    return Counter(skipped)


def stop_leads(session: Session, stops: Sequence[StopLead]) -> Counter[int]:
    """Apply every stop: one statement per new status, one for the suppressions, one per skip reason.
    Returns the jobs skipped by lead."""
    by_status: dict[LeadStatus, list[int]] = {}
    by_reason: dict[str, list[int]] = {}
    for stop in stops:
        if stop.status is not None:
            by_status.setdefault(stop.status, []).append(stop.lead_id)
        by_reason.setdefault(stop.skip_reason, []).append(stop.lead_id)
    for status, lead_ids in by_status.items():
        # In id order: concurrent writers lock the rows in one order, so they wait rather than deadlock.
        session.execute(update(Lead).where(among(session, Lead.id, sorted(lead_ids))).values(status=status)
                        .execution_options(synchronize_session=False))
    suppress_many(session, [(stop.owner_id, stop.email_key, stop.suppression_reason)
                            for stop in stops if stop.suppression_reason is not None])
    skipped: Counter[int] = Counter()
    for reason, lead_ids in by_reason.items():
        skipped += skip_pending_jobs(session, lead_ids, reason)
    return skipped
