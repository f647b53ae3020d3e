"""The send path: claim due jobs, compose, send through a Mailer, record each result.

Each batch moves through three short transactions so a job is never held in a
transaction while the provider is called: claim (PENDING -> SENDING), compose,
record (SENDING -> SENT | FAILED | SKIPPED, or back to PENDING on a passing error).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.campaigns import complete_finished_campaigns
from outreach_pipeline.core.compose import SenderConfig, ThreadParent, compose_email
from outreach_pipeline.core.jobs import schedule_next_step
from outreach_pipeline.core.placeholders import MissingFieldError
from outreach_pipeline.core.suppression import is_suppressed, suppress
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.dialect import is_postgresql
from outreach_pipeline.db.models import Campaign, CampaignStatus, EmailJob, JobStatus, Lead, LeadStatus, Template
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.mail.message import (
    Mailer,
    MailerAccountError,
    MailerUnavailableError,
    OutgoingEmail,
    SendOutcome,
    SendResult,
)

log = logging.getLogger(__name__)

SENDABLE_LEADS = (LeadStatus.PENDING, LeadStatus.CONTACTED)


@dataclass
class DispatchReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    requeued: int = 0
    batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def as_metadata(self) -> dict[str, int]:
        return {"claimed": self.claimed, "sent": self.sent, "failed": self.failed, "skipped": self.skipped,
                "requeued": self.requeued, "batches": self.batches}


def claim_due_jobs(session: Session, due_before: datetime, limit: int) -> list[int]:
    """Mark up to `limit` due jobs of active campaigns SENDING and return their ids.

    One UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING: concurrent
    senders on PostgreSQL each take different rows; on SQLite the statement is atomic.
    """
    due = (
        select(EmailJob.id)
        .join(Campaign, Campaign.id == EmailJob.campaign_id)
        .where(EmailJob.status == JobStatus.PENDING, EmailJob.due_at <= due_before,
               Campaign.status == CampaignStatus.ACTIVE)
        .order_by(EmailJob.due_at, EmailJob.id)
        .limit(limit)
    )
    if is_postgresql(session):
        due = due.with_for_update(of=EmailJob, skip_locked=True)
    claimed = session.scalars(
        update(EmailJob)
        .where(EmailJob.id.in_(due.scalar_subquery()), EmailJob.status == JobStatus.PENDING)
        .values(status=JobStatus.SENDING, attempts=EmailJob.attempts + 1)
        .returning(EmailJob.id)
    )
    return sorted(claimed)


def _thread_parent(session: Session, job: EmailJob, campaign: Campaign) -> ThreadParent | None:
    step = next((s for s in campaign.steps if s.number == job.step_number), None)
    if job.step_number == 1 or step is None or not step.thread:
        return None
    first = session.scalar(select(EmailJob).where(EmailJob.lead_id == job.lead_id, EmailJob.step_number == 1))
    if first is None or first.status != JobStatus.SENT or not first.message_id_header:
        return None
    return ThreadParent(subject=first.subject or "", message_id_header=first.message_id_header)


def _settle(job: EmailJob, status: JobStatus, reason: str, report: DispatchReport) -> None:
    job.status = status
    job.last_error = reason
    report.reasons[reason] += 1
    if status == JobStatus.SKIPPED:
        report.skipped += 1
    elif status == JobStatus.FAILED:
        report.failed += 1
    else:
        report.requeued += 1


def prepare_batch(
    session: Session, job_ids: list[int], config: SenderConfig, report: DispatchReport
) -> list[tuple[int, OutgoingEmail]]:
    """Re-check each claimed job against its lead, campaign and the suppression list, and compose it."""
    prepared: list[tuple[int, OutgoingEmail]] = []
    jobs = session.scalars(select(EmailJob).where(EmailJob.id.in_(job_ids)).order_by(EmailJob.id)).all()
    for job in jobs:
        lead = job.lead
        campaign = lead.campaign
        if campaign.status != CampaignStatus.ACTIVE:
            _settle(job, JobStatus.PENDING, f"campaign is {campaign.status.value}", report)
            continue
        if lead.status not in SENDABLE_LEADS:
            _settle(job, JobStatus.SKIPPED, f"lead is {lead.status.value}", report)
            continue
        if is_suppressed(session, campaign.owner_id, lead.email_key):
            _settle(job, JobStatus.SKIPPED, "address is suppressed", report)
            continue
        template = session.scalar(select(Template).where(
            Template.campaign_id == campaign.id, Template.step_number == job.step_number
        ).order_by(Template.variant).limit(1))
        if template is None:
            _settle(job, JobStatus.FAILED, f"no template for step {job.step_number}", report)
            continue
        try:
            email = compose_email(job, lead, campaign, template, config, _thread_parent(session, job, campaign))
        except MissingFieldError as error:
            _settle(job, JobStatus.FAILED, f"template field missing: {error}", report)
            continue
        job.template_id, job.subject = template.id, email.subject
        prepared.append((job.id, email))
    return prepared


def record_results(
    session: Session, prepared: list[tuple[int, OutgoingEmail]], results: list[SendResult], report: DispatchReport
) -> None:
    for (job_id, _email), result in zip(prepared, results, strict=True):
        job = session.get_one(EmailJob, job_id)
        lead, campaign = job.lead, job.lead.campaign
        if result.outcome == SendOutcome.SENT:
            sent_at = utcnow()
            job.status, job.sent_at, job.last_error = JobStatus.SENT, sent_at, None
            job.provider_message_id, job.message_id_header = result.provider_message_id, result.message_id_header
            if lead.status == LeadStatus.PENDING:
                lead.status = LeadStatus.CONTACTED
            schedule_next_step(session, campaign, job, sent_at)
            report.sent += 1
            continue
        _settle(job, JobStatus.FAILED, f"{result.outcome.value}: {result.error or result.error_code}", report)
        if result.outcome in (SendOutcome.INVALID_RECIPIENT, SendOutcome.INACTIVE_RECIPIENT):
            lead.status = LeadStatus.FAILED
        if result.outcome == SendOutcome.INACTIVE_RECIPIENT:
            suppress(session, campaign.owner_id, lead.email_key, "inactive")


def _release(factory: sessionmaker[Session], job_ids: list[int], reason: str) -> None:
    with session_scope(factory) as session:
        session.execute(
            update(EmailJob).where(EmailJob.id.in_(job_ids), EmailJob.status == JobStatus.SENDING)
            .values(status=JobStatus.PENDING, last_error=reason)
        )


def dispatch_due(
    factory: sessionmaker[Session],
    mailer: Mailer,
    config: SenderConfig,
    due_before: datetime,
    batch_size: int = 500,
) -> DispatchReport:
    """Send every job due before `due_before`, batch by batch, until none is left or the provider fails."""
    report = DispatchReport()
    while True:
        with session_scope(factory) as session:
            job_ids = claim_due_jobs(session, due_before, batch_size)
        if not job_ids:
            break
        report.claimed += len(job_ids)
        report.batches += 1
        with session_scope(factory) as session:
            prepared = prepare_batch(session, job_ids, config, report)
        if not prepared:
            continue
        try:
            results = mailer.send_batch([email for _, email in prepared])
        except MailerUnavailableError as error:
            # The batch may be retried as a whole on the next run; nothing of it was accepted.
            _release(factory, [job_id for job_id, _ in prepared], f"provider unavailable: {error}")
            report.requeued += len(prepared)
            log.warning("provider unavailable, %d jobs back to PENDING: %s", len(prepared), error)
            break
        except MailerAccountError as error:
            _release(factory, [job_id for job_id, _ in prepared], f"provider refused the account: {error}")
            raise
        with session_scope(factory) as session:
            record_results(session, prepared, results, report)
        log.info("batch sent", extra={"sent": report.sent, "failed": report.failed, "skipped": report.skipped})
    with session_scope(factory) as session:
        complete_finished_campaigns(session)
    return report
