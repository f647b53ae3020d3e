"""Creating email jobs: the first step for every eligible lead, and each next step after a send."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, exists, literal, select
from sqlalchemy.orm import Session

from outreach_pipeline.db.dialect import insert_ignoring_conflicts
from outreach_pipeline.db.models import Campaign, EmailJob, JobStatus, Lead, LeadStatus, Suppression


def schedule_first_jobs(session: Session, campaign: Campaign, now: datetime) -> int:
    """Give every PENDING lead without one a step-1 job due now, in one INSERT ... SELECT."""
    has_job = exists().where(and_(EmailJob.lead_id == Lead.id, EmailJob.step_number == 1))
    suppressed = exists().where(and_(Suppression.owner_id == campaign.owner_id, Suppression.email == Lead.email_key))
    eligible = select(
        literal(campaign.id),
        Lead.id,
        literal(1),
        literal(now, EmailJob.due_at.type),
        literal(JobStatus.PENDING.value),
        literal(0),
        literal(now, EmailJob.created_at.type),
    ).where(Lead.campaign_id == campaign.id, Lead.status == LeadStatus.PENDING, ~has_job, ~suppressed)
    statement = insert_ignoring_conflicts(session, EmailJob, ["lead_id", "step_number"]).from_select(
        ["campaign_id", "lead_id", "step_number", "due_at", "status", "attempts", "created_at"], eligible
    )
    # SQLAlchemy keeps an INSERT's row count only when asked (preserve_rowcount).
    return session.connection().execute(statement.execution_options(preserve_rowcount=True)).rowcount


def schedule_next_step(session: Session, campaign: Campaign, job: EmailJob, sent_at: datetime) -> EmailJob | None:
    """After a send, queue the following step `delay_days` later; the unique key keeps it single."""
    following = next((s for s in campaign.steps if s.number == job.step_number + 1), None)
    if following is None:
        return None
    statement = insert_ignoring_conflicts(session, EmailJob, ["lead_id", "step_number"]).values(
        campaign_id=campaign.id,
        lead_id=job.lead_id,
        step_number=following.number,
        due_at=sent_at + timedelta(days=following.delay_days),
        status=JobStatus.PENDING,
        attempts=0,
        created_at=sent_at,
    )
    session.execute(statement)
    return session.scalar(
        select(EmailJob).where(EmailJob.lead_id == job.lead_id, EmailJob.step_number == following.number)
    )
