"""Creating email jobs: the first step for every eligible lead, and each next step after a send."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, func, insert, literal, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from outreach_pipeline.db.dialect import among, insert_ignoring_conflicts, is_postgresql
from outreach_pipeline.db.models import (
    Campaign,
    CampaignCount,
    CampaignStep,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    SendCount,
    Suppression,
)


_FIRST_JOB_COLUMNS = ["campaign_id", "lead_id", "step_number", "due_at", "status", "attempts", "created_at"]


def _has_first_jobs(session: Session, campaign: Campaign) -> bool:
    """Whether any lead of the campaign already has a step-1 job (a resume, or leads added to a running
    campaign). Read from the campaign's job counters (kept by triggers on email_jobs, a few rows): email_jobs
    has no index on the campaign alone, and its partial indexes hold only the jobs of some statuses."""
    if is_postgresql(session):
        # Launch, resume and imports into a running campaign all come through here: holding the campaign
        # row until commit keeps the answer true for the INSERT below.
        session.execute(select(Campaign.id).where(Campaign.id == campaign.id).with_for_update(key_share=True))
    counts = CampaignCount.__table__.c
    first_jobs = select(func.coalesce(func.sum(counts.n), 0)).where(
        counts.campaign_id == campaign.id, counts.kind == "job", counts.step_number == 1)
    return (session.connection().scalar(first_jobs) or 0) > 0


def schedule_first_jobs(session: Session, campaign: Campaign, now: datetime) -> int:
    """Give every PENDING lead without one a step-1 job due now, in one INSERT ... SELECT.

    Leads that already have a step-1 job are never found with a NOT EXISTS on email_jobs: that probe reads
    the table the statement is filling, and when the planner believes it small (statistics taken before
    a bulk insert) it walks every row inserted so far for each lead, which is quadratic (a 100,000-lead
    launch stalled for minutes). A first launch has none to skip and runs a plain INSERT ... SELECT, as
    cheap as the bare statement; later calls let ON CONFLICT on the unique (lead, step) key skip them,
    one index lookup per lead whatever the statistics say.
    """
    suppressed = exists().where(and_(Suppression.owner_id == campaign.owner_id, Suppression.email == Lead.email_key))
    eligible = select(
        literal(campaign.id),
        Lead.id,
        literal(1),
        literal(now, EmailJob.due_at.type),
        literal(JobStatus.PENDING.value),
        literal(0),
        literal(now, EmailJob.created_at.type),
    ).where(Lead.campaign_id == campaign.id, Lead.status == LeadStatus.PENDING, ~suppressed)
    if _has_first_jobs(session, campaign):
        statement = insert_ignoring_conflicts(session, EmailJob, ["lead_id", "step_number"])
    else:
        statement = insert(EmailJob)
    # SQLAlchemy keeps an INSERT's row count only when asked (preserve_rowcount).
    return session.connection().execute(
        statement.from_select(_FIRST_JOB_COLUMNS, eligible).execution_options(preserve_rowcount=True)).rowcount


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



@dataclass(frozen=True)
class Accepted:
    """One job the provider accepted, as the send path and the reconciler both know it."""

    job_id: int
    lead_id: int
    campaign_id: int
    step_number: int
    provider_message_id: str | None
    message_id_header: str | None
    subject: str | None = None  # as sent; threaded follow-ups answer it
    template_id: int | None = None


# Only jobs not SENT yet change (the first of two paths settling one job wins) and are counted, in their
# campaign's quarter hour; counters are taken in campaign order, so two batches never wait on each other
# crosswise.
_SENT_FROM_JSON = text("""
    WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS json))
               AS v(id integer, lead_id integer, pmid varchar, header varchar, subject varchar, template_id integer)),
    contacted AS (UPDATE leads AS l SET status = 'CONTACTED' FROM v WHERE l.id = v.lead_id AND l.status = 'PENDING'),
    sent AS (
        UPDATE email_jobs AS j SET status = 'SENT', sent_at = :sent_at, last_error = NULL,
            provider_message_id = v.pmid, message_id_header = v.header,
            subject = coalesce(v.subject, j.subject), template_id = coalesce(v.template_id, j.template_id)
        FROM v WHERE j.id = v.id AND j.status <> 'SENT'
        RETURNING j.campaign_id)
    INSERT INTO send_counts (campaign_id, quarter, sent)
    SELECT campaign_id, :quarter, count(*) FROM sent GROUP BY campaign_id ORDER BY campaign_id
    ON CONFLICT (campaign_id, quarter) DO UPDATE SET sent = send_counts.sent + EXCLUDED.sent
""")


def send_quarter(moment: datetime) -> datetime:
    """The quarter hour (UTC) whose SendCount a send at `moment` adds to."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def _record_sent(session: Session, accepted: Sequence[Accepted], sent_at: datetime) -> None:
    """Jobs SENT with what the provider answered, and their leads CONTACTED."""
    if is_postgresql(session):
        # One statement for the batch, its rows in one JSON parameter: the C json encoder writes it, where
        # array parameters cost psycopg a Python loop (and a regex) per element.
        rows = json.dumps([{"id": a.job_id, "lead_id": a.lead_id, "pmid": a.provider_message_id,
                            "header": a.message_id_header, "subject": a.subject, "template_id": a.template_id}
                           for a in accepted])
        session.execute(_SENT_FROM_JSON, {"sent_at": sent_at, "rows": rows, "quarter": send_quarter(sent_at)})
        return
    # The status first, in one UPDATE that says which jobs it changed: it takes SQLite's write lock, so
    # a second settling of the same jobs (another process) waits, then changes and counts none of them.
    unsent = {job_id: campaign_id for job_id, campaign_id in session.connection().execute(
        update(EmailJob).where(among(session, EmailJob.id, [a.job_id for a in accepted]),
                               EmailJob.status != JobStatus.SENT)
        .values(status=JobStatus.SENT, sent_at=sent_at, last_error=None)
        .returning(EmailJob.id, EmailJob.campaign_id))}
    if unsent:
        session.execute(update(EmailJob), [
            {"id": a.job_id, "provider_message_id": a.provider_message_id, "message_id_header": a.message_id_header,
             **({"subject": a.subject} if a.subject is not None else {}),
             **({"template_id": a.template_id} if a.template_id is not None else {})}
            for a in accepted if a.job_id in unsent])
    session.execute(update(Lead).where(among(session, Lead.id, [a.lead_id for a in accepted]),
                                       Lead.status == LeadStatus.PENDING)
                    .values(status=LeadStatus.CONTACTED).execution_options(synchronize_session=False))
    if newly_sent := Counter(unsent.values()):
        counted = sqlite.insert(SendCount)
        session.execute(counted.on_conflict_do_update(
            index_elements=["campaign_id", "quarter"], set_={"sent": SendCount.sent + counted.excluded.sent}),
            [{"campaign_id": campaign_id, "quarter": send_quarter(sent_at), "sent": n}
             for campaign_id, n in sorted(newly_sent.items())])


def mark_sent(session: Session, accepted: Sequence[Accepted], sent_at: datetime) -> None:
    """Record accepted jobs SENT, mark their leads CONTACTED and queue each next step: a few set-based
    statements per batch, whatever its size. Shared by the send path and the reconciler, so a job
    settled either way ends in the same state."""
    if not accepted:
        return
    _record_sent(session, accepted, sent_at)
    steps = {(s.campaign_id, s.number): s.delay_days for s in session.connection().execute(
        select(CampaignStep.campaign_id, CampaignStep.number, CampaignStep.delay_days)
        .where(CampaignStep.campaign_id.in_({a.campaign_id for a in accepted})))}
    following = [
        {"campaign_id": a.campaign_id, "lead_id": a.lead_id, "step_number": a.step_number + 1,
         "due_at": sent_at + timedelta(days=steps[(a.campaign_id, a.step_number + 1)]),
         "status": JobStatus.PENDING, "attempts": 0, "created_at": sent_at}
        for a in accepted if (a.campaign_id, a.step_number + 1) in steps]
    if following:
        # The unique key (lead, step) keeps a step single even if two paths settle the same job.
        session.execute(insert_ignoring_conflicts(session, EmailJob, ["lead_id", "step_number"]), following)
