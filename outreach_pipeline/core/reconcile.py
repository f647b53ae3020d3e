"""Settling jobs a crashed run left in SENDING, by asking the provider, before anything is re-sent.

A run that dies between the provider's answer and our commit leaves its jobs SENDING. Once their
claim is older than the lease (longer than any live run holds a batch), each is looked up at the
provider by the `job_id` metadata it was sent with: found means it went out (record it SENT, with the
subject the provider reports and the variant the lead gets, so follow-ups thread under it and replies
count for it), not found means it never did (back to PENDING, to be sent by this or a later run). If
the provider cannot be asked, the job stays SENDING: never guessed, never re-sent blind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.compose import lead_values
from outreach_pipeline.core.jobs import Accepted, mark_sent
from outreach_pipeline.core.placeholders import render
from outreach_pipeline.core.templates import choose_variant
from outreach_pipeline.db.models import EmailJob, JobStatus, Template, job_status_is
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.mail.message import Mailer, MailerAccountError, MailerUnavailableError

log = logging.getLogger(__name__)

NOT_AT_PROVIDER = "reconciled: the provider has no message for this job; it will be sent again"


@dataclass
class ReconcileReport:
    found_sent: int = 0
    requeued: int = 0
    unresolved: int = 0


def stale_sending_jobs(session: Session, claimed_before: datetime) -> list[int]:
    return list(session.scalars(
        select(EmailJob.id).where(job_status_is(JobStatus.SENDING),
                                  (EmailJob.claimed_at < claimed_before) | EmailJob.claimed_at.is_(None))
        .order_by(EmailJob.id)
    ))


def _variant_sent(session: Session, job: EmailJob, subject: str | None) -> int | None:
    """The template the job was composed from. The one variant whose subject, rendered for the lead, is the
    subject the provider reports; else the variant the lead gets (the choice is deterministic, as long as
    no variant was added or removed since the send)."""
    templates = session.scalars(select(Template).where(Template.campaign_id == job.campaign_id,
                                                       Template.step_number == job.step_number)).all()
    if not templates:
        return job.template_id
    if subject and len(templates) > 1:
        values = lead_values(job.lead, job.lead.campaign.sender_name)
        matching = [t for t in templates if render(t.subject, values, header=True) == subject]
        if len(matching) == 1:
            return matching[0].id
    return choose_variant(templates, job.lead_id).id


def reconcile_stale_jobs(factory: sessionmaker[Session], mailer: Mailer, now: datetime, lease: timedelta) -> ReconcileReport:
    """Settle every job SENDING for longer than `lease`; returns what was found."""
    report = ReconcileReport()
    cutoff = now - lease
    with session_scope(factory) as session:
        job_ids = stale_sending_jobs(session, cutoff)
    for job_id in job_ids:
        try:
            found = mailer.find_sent(str(job_id))
        except (MailerUnavailableError, MailerAccountError, OSError) as error:
            report.unresolved += len(job_ids) - report.found_sent - report.requeued
            log.warning("reconciler could not ask the provider; %d job(s) stay SENDING: %s", report.unresolved, error)
            break
        with session_scope(factory) as session:
            # Locked: its run may be renewing the claim to send it right now (claim.renew_claim); one of us wins.
            job = session.get_one(EmailJob, job_id, with_for_update=True)
            # Another reconciler may have settled it meanwhile; only a still-stale claim is ours to settle.
            if job.status != JobStatus.SENDING or (job.claimed_at is not None and job.claimed_at >= cutoff):
                continue
            if found is not None:
                mark_sent(session, [Accepted(job.id, job.lead_id, job.campaign_id, job.step_number,
                                             found.provider_message_id, found.message_id_header,
                                             found.subject or job.subject,
                                             _variant_sent(session, job, found.subject))],
                          job.claimed_at or now)
                report.found_sent += 1
            else:
                session.execute(update(EmailJob).where(EmailJob.id == job_id)
                                .values(status=JobStatus.PENDING, last_error=NOT_AT_PROVIDER))
                report.requeued += 1
    if job_ids:
        log.info("reconciled %d stale job(s): %s", len(job_ids), report)
    return report
