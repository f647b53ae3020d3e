"""Spreading a backlog: after a pause, overdue jobs are re-timed across the coming windows, at most a
daily cap's worth per window, evenly spaced, so resuming never fires a week of mail at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.claim import window_of
from outreach_pipeline.core.schedule_window import openings
from outreach_pipeline.db.models import Campaign, EmailJob, JobStatus, job_status_is


def _slots(campaign: Campaign, now: datetime) -> Iterator[datetime]:
    """Send times: each coming window holds `daily_cap` slots spread evenly over its length."""
    cap = max(campaign.daily_cap, 1)
    for opens, closes in openings(window_of(campaign), now):
        step = (closes - opens) / cap
        for n in range(cap):
            yield opens + step * n


def spread_overdue_jobs(session: Session, campaign: Campaign, now: datetime) -> int:
    """Re-time the campaign's overdue PENDING jobs into the coming windows, follow-ups first."""
    overdue = session.scalars(
        select(EmailJob.id).where(EmailJob.campaign_id == campaign.id, job_status_is(JobStatus.PENDING),
                                  EmailJob.due_at < now)
        .order_by(EmailJob.step_number.desc(), EmailJob.due_at, EmailJob.id)
    ).all()
    if not overdue:
        return 0
    slots = _slots(campaign, now)
    session.execute(update(EmailJob), [{"id": job_id, "due_at": next(slots)} for job_id in overdue])
    return len(overdue)
