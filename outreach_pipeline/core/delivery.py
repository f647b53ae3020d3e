"""The send path: reconcile, claim due jobs, compose, send through a Mailer, record each result.

Each batch moves through three short transactions so a job is never held in a transaction while
the provider is called: claim (PENDING -> SENDING), compose, record (SENDING -> SENT | FAILED |
SKIPPED, or back to PENDING on a passing error). Jobs a crashed run left SENDING are settled by
asking the provider first (core/reconcile.py), so nothing is sent twice and nothing is lost.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload, sessionmaker

from outreach_pipeline.core.campaigns import complete_finished_campaigns
from outreach_pipeline.core.claim import claim_due_jobs, defer_closed_windows
from outreach_pipeline.core.compose import SenderConfig, ThreadParent, compose_email
from outreach_pipeline.core.jobs import Accepted, mark_sent
from outreach_pipeline.core.openers import opener_values
from outreach_pipeline.core.placeholders import AI_OPENER, MissingFieldError
from outreach_pipeline.core.reconcile import reconcile_stale_jobs
from outreach_pipeline.core.suppression import suppress, suppressed_among
from outreach_pipeline.core.templates import choose_variant
from outreach_pipeline.db.base import utcnow
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
# Test hook for the crash test: seconds to sleep after the provider accepted a batch, before recording it,
# so a test can SIGKILL the process at the worst moment. Unset in production.
PAUSE_AFTER_SEND_ENV = "OUTREACH_PAUSE_AFTER_SEND_S"


@dataclass(frozen=True)
class SendPolicy:
    """How a run sends: batch size, batches in flight, retries of a passing provider failure, the lease."""

    batch_size: int = 500
    concurrency: int = 1
    max_retries: int = 4  # per batch, on 429 / 5xx / refused connections
    backoff_base_s: float = 1.0  # 1, 2, 4, 8 s... each scaled by a random factor in [0.5, 1)
    backoff_max_s: float = 30.0
    # A SENDING job older than this belongs to a dead run; must exceed the longest a batch can take.
    lease: timedelta = timedelta(minutes=15)


@dataclass
class DispatchReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    requeued: int = 0
    retried: int = 0  # whole-batch retries after a passing provider failure
    deferred: int = 0  # jobs moved to their window's next opening
    uncertain: int = 0  # left SENDING for the reconciler: the provider may have accepted them
    reconciled_sent: int = 0
    reconciled_requeued: int = 0
    batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_metadata(self) -> dict[str, int]:
        return {"claimed": self.claimed, "sent": self.sent, "failed": self.failed, "skipped": self.skipped,
                "requeued": self.requeued, "retried": self.retried, "deferred": self.deferred,
                "uncertain": self.uncertain, "reconciled_sent": self.reconciled_sent,
                "reconciled_requeued": self.reconciled_requeued, "batches": self.batches}

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


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
    with report._lock:
        report.reasons[reason] += 1
        if status == JobStatus.SKIPPED:
            report.skipped += 1
        elif status == JobStatus.FAILED:
            report.failed += 1
        else:
            report.requeued += 1


def pick_template(session: Session, job: EmailJob, cache: dict[tuple[int, int], list[Template]]) -> Template | None:
    """The one place the template of a job is chosen: the A/B variant of its step for this lead."""
    key = (job.campaign_id, job.step_number)
    if key not in cache:
        cache[key] = list(session.scalars(select(Template).where(
            Template.campaign_id == job.campaign_id, Template.step_number == job.step_number)))
    variants = cache[key]
    return choose_variant(variants, job.lead_id) if variants else None


class Prepared(NamedTuple):
    """A claimed job ready to go: its email and the template (A/B variant) it was rendered from."""

    job_id: int
    email: OutgoingEmail
    template_id: int


def _suppressed(session: Session, jobs: Sequence[EmailJob]) -> set[tuple[int, str]]:
    by_owner: dict[int, list[str]] = {}
    for job in jobs:
        by_owner.setdefault(job.lead.campaign.owner_id, []).append(job.lead.email_key)
    return {(owner, email) for owner, emails in by_owner.items() for email in suppressed_among(session, owner, emails)}


def prepare_batch(
    session: Session, job_ids: list[int], config: SenderConfig, report: DispatchReport
) -> list[tuple[int, OutgoingEmail]]:
    """Re-check each claimed job against its lead, campaign and the suppression list, and compose it."""
    prepared: list[Prepared] = []
    # Leads and campaigns in the same query, suppressions and openers in one each: a batch costs a
    # handful of queries, not a few per job.
    jobs = session.scalars(select(EmailJob).options(joinedload(EmailJob.lead).joinedload(Lead.campaign))
                           .where(EmailJob.id.in_(job_ids)).order_by(EmailJob.id)).all()
    openers = opener_values(session, [job.lead_id for job in jobs])
    suppressed = _suppressed(session, jobs)
    templates: dict[tuple[int, int], list[Template]] = {}
    for job in jobs:
        lead = job.lead
        campaign = lead.campaign
        if campaign.status != CampaignStatus.ACTIVE:
            _settle(job, JobStatus.PENDING, f"campaign is {campaign.status.value}", report)
            continue
        if lead.status not in SENDABLE_LEADS:
            _settle(job, JobStatus.SKIPPED, f"lead is {lead.status.value}", report)
            continue
        if (campaign.owner_id, lead.email_key) in suppressed:
            _settle(job, JobStatus.SKIPPED, "address is suppressed", report)
            continue
        template = pick_template(session, job, templates)
        if template is None:
            _settle(job, JobStatus.FAILED, f"no template for step {job.step_number}", report)
            continue
        extra = {AI_OPENER: openers[lead.id]} if lead.id in openers else {}
        try:
            email = compose_email(job, lead, campaign, template, config, _thread_parent(session, job, campaign),
                                  extra_values=extra)
        except MissingFieldError as error:
            _settle(job, JobStatus.FAILED, f"template field missing: {error}", report)
            continue
        prepared.append(Prepared(job.id, email, template.id))
    return prepared


def record_results(
    session: Session, prepared: list[Prepared], results: list[SendResult], report: DispatchReport
) -> None:
    sent_at = utcnow()
    ids = [p.job_id for p in prepared]
    known = {row.id: row for row in session.execute(
        select(EmailJob.id, EmailJob.lead_id, EmailJob.campaign_id, EmailJob.step_number).where(EmailJob.id.in_(ids)))}
    accepted: list[Accepted] = []
    for (job_id, email, template_id), result in zip(prepared, results, strict=True):
        if result.outcome == SendOutcome.SENT:
            row = known[job_id]
            accepted.append(Accepted(job_id, row.lead_id, row.campaign_id, row.step_number,
                                     result.provider_message_id, result.message_id_header, email.subject, template_id))
            continue
        job = session.get_one(EmailJob, job_id)
        job.template_id, job.subject = template_id, email.subject
        lead = job.lead
        _settle(job, JobStatus.FAILED, f"{result.outcome.value}: {result.error or result.error_code}", report)
        if result.outcome in (SendOutcome.INVALID_RECIPIENT, SendOutcome.INACTIVE_RECIPIENT):
            lead.status = LeadStatus.FAILED
        if result.outcome == SendOutcome.INACTIVE_RECIPIENT:
            suppress(session, lead.campaign.owner_id, lead.email_key, "inactive")
    mark_sent(session, accepted, sent_at)
    report.add(sent=len(accepted))


def _release(factory: sessionmaker[Session], job_ids: list[int], reason: str) -> None:
    with session_scope(factory) as session:
        session.execute(
            update(EmailJob).where(EmailJob.id.in_(job_ids), EmailJob.status == JobStatus.SENDING)
            .values(status=JobStatus.PENDING, last_error=reason)
        )


def send_with_retries(mailer: Mailer, emails: Sequence[OutgoingEmail], policy: SendPolicy, report: DispatchReport,
                      stop: threading.Event) -> list[SendResult]:
    """Send one batch; a passing failure is retried whole, with exponential backoff and jitter."""
    for attempt in range(policy.max_retries + 1):
        try:
            return mailer.send_batch(emails)
        except MailerUnavailableError as error:
            # A batch that may have been accepted is never re-sent blind: the reconciler asks first.
            if error.maybe_sent or attempt == policy.max_retries or stop.is_set():
                raise
            report.add(retried=1)
            delay = min(policy.backoff_max_s, policy.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning("provider unavailable, retrying the batch in %.2f s: %s", delay, error)
            stop.wait(delay)
    raise AssertionError("unreachable")


def _pause_for_crash_test() -> None:
    pause = os.environ.get(PAUSE_AFTER_SEND_ENV)
    if pause:
        time.sleep(float(pause))


class _Run:
    """One dispatch: workers share the report and a stop flag; the first account error stops them all."""

    def __init__(self, factory: sessionmaker[Session], mailer: Mailer, config: SenderConfig, due_before: datetime,
                 policy: SendPolicy, now: datetime) -> None:
        self.factory, self.mailer, self.config = factory, mailer, config
        self.due_before, self.policy, self.now = due_before, policy, now
        self.report = DispatchReport()
        self.stop = threading.Event()
        self.account_error: MailerAccountError | None = None

    def work(self) -> None:
        try:
            while not self.stop.is_set() and self._one_batch():
                pass
        except BaseException:
            self.stop.set()
            raise

    def _one_batch(self) -> bool:
        with session_scope(self.factory) as session:
            job_ids = claim_due_jobs(session, self.due_before, self.policy.batch_size, self.now)
        if not job_ids:
            return False
        self.report.add(claimed=len(job_ids), batches=1)
        with session_scope(self.factory) as session:
            prepared = prepare_batch(session, job_ids, self.config, self.report)
        if not prepared:
            return True
        ids = [p.job_id for p in prepared]
        try:
            results = send_with_retries(self.mailer, [p.email for p in prepared], self.policy, self.report,
                                        self.stop)
        except MailerUnavailableError as error:
            self.stop.set()
            if error.maybe_sent:
                self.report.add(uncertain=len(ids))
                log.warning("provider may have accepted %d jobs; left SENDING for the reconciler: %s", len(ids), error)
                return False
            # Nothing of the batch was accepted: back to PENDING for a later run.
            _release(self.factory, ids, f"provider unavailable: {error}")
            self.report.add(requeued=len(ids))
            log.warning("provider unavailable, %d jobs back to PENDING: %s", len(ids), error)
            return False
        except MailerAccountError as error:
            self.stop.set()
            _release(self.factory, ids, f"provider refused the account: {error}")
            self.account_error = self.account_error or error
            return False
        _pause_for_crash_test()
        with session_scope(self.factory) as session:
            record_results(session, prepared, results, self.report)
        return True


def dispatch_due(
    factory: sessionmaker[Session],
    mailer: Mailer,
    config: SenderConfig,
    due_before: datetime,
    batch_size: int = 500,
    policy: SendPolicy | None = None,
    now: datetime | None = None,
) -> DispatchReport:
    """Send every job due before `due_before`, until none is left, the caps are spent or the provider fails.

    Raises MailerAccountError (every unsent job back to PENDING) when the provider refuses the account.
    """
    policy = policy or SendPolicy(batch_size=batch_size)
    now = now or utcnow()
    run = _Run(factory, mailer, config, due_before, policy, now)
    settled = reconcile_stale_jobs(factory, mailer, now, policy.lease)
    run.report.add(reconciled_sent=settled.found_sent, reconciled_requeued=settled.requeued)
    with session_scope(factory) as session:
        run.report.add(deferred=defer_closed_windows(session, due_before, now))
    # SQLite has one writer at a time: parallel claims would only race on the daily budget.
    on_sqlite = factory.kw["bind"].dialect.name == "sqlite"
    if policy.concurrency <= 1 or on_sqlite:
        run.work()
    else:
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                run.work()
            except BaseException as error:  # surfaced after every worker has stopped
                errors.append(error)

        threads = [threading.Thread(target=worker, name=f"sender-{n}") for n in range(policy.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    if run.account_error is not None:
        raise run.account_error
    with session_scope(factory) as session:
        complete_finished_campaigns(session)
    return run.report
