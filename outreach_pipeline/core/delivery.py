"""The send path: reconcile, claim due jobs, compose, send through a Mailer, record each result.

Each batch moves through three short transactions so a job is never held in a transaction while
the provider is called: claim (PENDING -> SENDING), compose, record (SENDING -> SENT | FAILED |
SKIPPED, or back to PENDING on a passing error). Jobs a crashed run left SENDING are settled by
asking the provider first (core/reconcile.py), so nothing is sent twice and nothing is lost; a batch
renews its claim as it is composed and sends only the jobs still its own (core/claim.py, renew_claim).
On PostgreSQL one thread claims and `concurrency` threads compose, send and record, so database work
and HTTP calls overlap (requests releases the GIL while it waits); `processes` worker processes each do
so, for more than one core's worth of composing and recording (core/send_processes.py).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from outreach_pipeline.core.campaigns import complete_finished_campaigns, pause_campaign
from outreach_pipeline.core.claim import claim_due_jobs, defer_closed_windows, renew_claim
from outreach_pipeline.core.compose import Composer, SenderConfig, ThreadParent
from outreach_pipeline.core.jobs import Accepted, mark_sent
from outreach_pipeline.core.openers import opener_values
from outreach_pipeline.core.placeholders import AI_OPENER, MissingFieldError, uses_field
from outreach_pipeline.core.reconcile import reconcile_stale_jobs
from outreach_pipeline.core.suppression import suppress, suppressed_among
from outreach_pipeline.core.templates import choose_variant
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.dialect import among
from outreach_pipeline.db.locks import lock_campaign
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
    concurrency: int = 1  # batches in flight in each process
    processes: int = 1  # worker processes sending together (PostgreSQL only)
    # Batches one claim takes when several senders share the run: a claim's fixed cost (the campaigns with
    # due jobs, the campaign's lock and budget, the follow-ups query, the commit) is shared by more emails.
    claim_batches: int = 4
    max_retries: int = 4  # per batch, on 429 / 5xx / refused connections
    backoff_base_s: float = 1.0  # 1, 2, 4, 8 s... each scaled by a random factor in [0.5, 1)
    backoff_max_s: float = 30.0
    # A SENDING job older than this belongs to a dead run; half of it must exceed the longest a batch takes
    # to send (retries included), since a claim that young is sent without being renewed.
    lease: timedelta = timedelta(minutes=15)

    def check_lease(self, request_timeout_s: float) -> None:
        """A claim younger than half the lease is sent without being renewed (_Run._still_ours), so half the
        lease must outlast the longest a batch can take to send (every attempt timing out, every pause at its
        longest); else a reconciler could take back a batch still being sent, and it would go out twice."""
        longest_s = (self.max_retries + 1) * (request_timeout_s + self.backoff_max_s)
        if self.lease.total_seconds() / 2 <= longest_s:
            raise ValueError(f"the send lease must be more than {2 * longest_s / 60:g} minutes: twice the longest "
                             f"a batch can take to send with {self.max_retries} retries")


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
    sent_per_process: list[int] = field(default_factory=list)  # when the run spans processes: how evenly
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

    def merge(self, counts: dict[str, int], reasons: dict[str, int]) -> None:
        """Add the report of one send process (its `as_metadata` counts and its reasons)."""
        self.add(**counts)
        with self._lock:
            self.reasons.update(reasons)
            self.sent_per_process.append(counts.get("sent", 0))


def _note(report: DispatchReport, status: JobStatus, reason: str) -> None:
    with report._lock:
        report.reasons[reason] += 1
        if status == JobStatus.SKIPPED:
            report.skipped += 1
        elif status == JobStatus.FAILED:
            report.failed += 1
        else:
            report.requeued += 1


def _settle(job: EmailJob, status: JobStatus, reason: str, report: DispatchReport) -> None:
    job.status = status
    job.last_error = reason
    _note(report, status, reason)


def pick_template(session: Session, job: JobRow, cache: dict[tuple[int, int], list[Template]]) -> Template | None:
    """The one place the template of a job is chosen: the A/B variant of its step for this lead."""
    key = (job.campaign_id, job.step_number)
    if key not in cache:
        cache[key] = list(session.scalars(select(Template).where(
            Template.campaign_id == job.campaign_id, Template.step_number == job.step_number)))
    variants = cache[key]
    return choose_variant(variants, job.lead_id) if variants else None


class Prepared(NamedTuple):
    """A claimed job ready to go: its email, the template (A/B variant) it was rendered from, and what
    recording its result needs, so recording reads nothing back."""

    job_id: int
    email: OutgoingEmail
    template_id: int
    lead_id: int
    campaign_id: int
    step_number: int


class JobRow(Protocol):
    """One claimed job with its lead's columns, as prepare_batch reads it (a row, not ORM objects)."""

    id: int
    lead_id: int
    campaign_id: int
    step_number: int
    status: LeadStatus
    email: str
    email_key: str
    first_name: str | None
    last_name: str | None
    company: str | None
    title: str | None
    custom_fields: dict[str, Any] | None
    reply_token: str


_JOB_COLUMNS = (EmailJob.id, EmailJob.lead_id, EmailJob.campaign_id, EmailJob.step_number, Lead.status, Lead.email,
                Lead.email_key, Lead.first_name, Lead.last_name, Lead.company, Lead.title, Lead.custom_fields,
                Lead.reply_token)


def _thread_parents(session: Session, jobs: Sequence[JobRow], campaigns: dict[int, Campaign]) -> dict[int, ThreadParent]:
    """The first email each threaded follow-up of the batch answers, by lead: one query for the batch."""
    threaded = [job.lead_id for job in jobs if job.step_number > 1 and any(
        s.number == job.step_number and s.thread for s in campaigns[job.campaign_id].steps)]
    if not threaded:
        return {}
    return {row.lead_id: ThreadParent(subject=row.subject or "", message_id_header=row.message_id_header)
            for row in session.execute(select(EmailJob.lead_id, EmailJob.subject, EmailJob.message_id_header).where(
                among(session, EmailJob.lead_id, threaded), EmailJob.step_number == 1,
                EmailJob.status == JobStatus.SENT, EmailJob.message_id_header.is_not(None)))}


def _suppressed(session: Session, jobs: Sequence[JobRow], campaigns: dict[int, Campaign]) -> set[tuple[int, str]]:
    by_owner: dict[int, list[str]] = {}
    for job in jobs:
        by_owner.setdefault(campaigns[job.campaign_id].owner_id, []).append(job.email_key)
    return {(owner, email) for owner, emails in by_owner.items() for email in suppressed_among(session, owner, emails)}


def _openers(session: Session, jobs: Sequence[JobRow], templates: dict[tuple[int, int], list[Template]]) -> dict[int, str]:
    """Generated opening lines, read only when a template of the batch uses them."""
    if not any(uses_field(t.subject + "\n" + t.body, AI_OPENER) for variants in templates.values() for t in variants):
        return {}
    return opener_values(session, [job.lead_id for job in jobs])


def prepare_batch(
    session: Session, job_ids: list[int], config: SenderConfig, report: DispatchReport
) -> list[Prepared]:
    """Re-check each claimed job against its lead, campaign and the suppression list, and compose it."""
    # A batch costs a handful of queries, whatever its size: the jobs with their leads' columns as plain
    # rows, each campaign once, and suppressions, templates, openers and thread parents in one each.
    # Core rows from the connection: the ORM would only add per-row work to read plain columns.
    jobs: Sequence[JobRow] = session.connection().execute(  # type: ignore[assignment]
        select(*_JOB_COLUMNS).join(Lead, Lead.id == EmailJob.lead_id)
        .where(among(session, EmailJob.id, job_ids)).order_by(EmailJob.id)).all()
    campaigns = {c.id: c for c in session.scalars(select(Campaign).where(
        Campaign.id.in_({job.campaign_id for job in jobs})).options(selectinload(Campaign.steps)))}
    templates: dict[tuple[int, int], list[Template]] = {}
    picked = {job.id: pick_template(session, job, templates) for job in jobs}
    openers = _openers(session, jobs, templates)
    suppressed = _suppressed(session, jobs, campaigns)
    parents = _thread_parents(session, jobs, campaigns)
    composer = Composer(config)
    prepared: list[Prepared] = []
    settled: list[dict[str, Any]] = []

    def settle(job: JobRow, status: JobStatus, reason: str) -> None:
        settled.append({"id": job.id, "status": status, "last_error": reason})
        _note(report, status, reason)

    for job in jobs:
        campaign = campaigns[job.campaign_id]
        if campaign.status != CampaignStatus.ACTIVE:
            settle(job, JobStatus.PENDING, f"campaign is {campaign.status.value}")
            continue
        if job.status not in SENDABLE_LEADS:
            settle(job, JobStatus.SKIPPED, f"lead is {job.status.value}")
            continue
        if (campaign.owner_id, job.email_key) in suppressed:
            settle(job, JobStatus.SKIPPED, "address is suppressed")
            continue
        template = picked[job.id]
        if template is None:
            settle(job, JobStatus.FAILED, f"no template for step {job.step_number}")
            continue
        extra = {AI_OPENER: openers[job.lead_id]} if job.lead_id in openers else {}
        try:
            email = composer.compose(job, job, campaign, template, parents.get(job.lead_id), extra_values=extra)
        except MissingFieldError as error:
            settle(job, JobStatus.FAILED, f"template field missing: {error}")
            continue
        prepared.append(Prepared(job.id, email, template.id, job.lead_id, job.campaign_id, job.step_number))
    if settled:
        session.execute(update(EmailJob), settled)
    return prepared


def record_results(
    session: Session, prepared: list[Prepared], results: list[SendResult], report: DispatchReport
) -> list[tuple[Prepared, SendResult]]:
    """Record each result; returns the jobs refused for our sender or account, left for the caller."""
    sent_at = utcnow()
    accepted: list[Accepted] = []
    refused: list[tuple[Prepared, SendResult]] = []
    for sent, result in zip(prepared, results, strict=True):
        if result.outcome == SendOutcome.SENT:
            accepted.append(Accepted(sent.job_id, sent.lead_id, sent.campaign_id, sent.step_number,
                                     result.provider_message_id, result.message_id_header, sent.email.subject,
                                     sent.template_id))
            continue
        if result.outcome in _OUR_SIDE:  # not this lead's fault: it must not lose its turn
            refused.append((sent, result))
            continue
        job = session.get_one(EmailJob, sent.job_id)
        job.template_id, job.subject = sent.template_id, sent.email.subject
        lead = job.lead
        _settle(job, JobStatus.FAILED, f"{result.outcome.value}: {result.error or result.error_code}", report)
        if result.outcome in (SendOutcome.INVALID_RECIPIENT, SendOutcome.INACTIVE_RECIPIENT):
            lead.status = LeadStatus.FAILED
        if result.outcome == SendOutcome.INACTIVE_RECIPIENT:
            suppress(session, lead.campaign.owner_id, lead.email_key, "inactive")
    mark_sent(session, accepted, sent_at)
    report.add(sent=len(accepted))
    return refused


_OUR_SIDE = (SendOutcome.SENDER_REFUSED, SendOutcome.ACCOUNT_REFUSED)


def _pause_for_sender(session: Session, campaign_id: int, result: SendResult) -> None:
    campaign = lock_campaign(session, campaign_id)
    if campaign is not None and campaign.status == CampaignStatus.ACTIVE:  # a batch in flight may have paused it already
        pause_campaign(session, campaign, reason=(
            f"Paused automatically: the mail provider refused this campaign's sender ([{result.error_code}] "
            f"{result.error}). Fix the sender address (a confirmed sender signature), then resume."))
        log.warning("campaign %d paused: the provider refused its sender: %s", campaign_id, result.error)


def release(factory: sessionmaker[Session], claim: Claim, reason: str) -> None:
    """The claim's jobs back to PENDING, those still held under it: one a reconciler took back and another
    run claimed again is that run's to send, and must not go back to PENDING under it."""
    with session_scope(factory) as session:
        session.execute(
            update(EmailJob).where(among(session, EmailJob.id, claim.job_ids), EmailJob.status == JobStatus.SENDING,
                                   EmailJob.claimed_at == claim.claimed_at)
            .values(status=JobStatus.PENDING, last_error=reason).execution_options(synchronize_session=False)
        )


def send_with_retries(mailer: Mailer, emails: Sequence[OutgoingEmail], policy: SendPolicy, report: DispatchReport,
                      stop: StopFlag) -> list[SendResult]:
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


class Claim(NamedTuple):
    """One claimed batch: its jobs and the moment of the claim, which also tells this claim from a later one."""

    job_ids: list[int]
    claimed_at: datetime

    def batches(self, size: int) -> list[Claim]:
        """The claim cut into batches of `size`, each still under this claim's moment."""
        return [Claim(self.job_ids[start:start + size], self.claimed_at) for start in range(0, len(self.job_ids), size)]


class StopFlag(Protocol):
    """What a run needs of its stop flag: a threading.Event, or one shared by processes (send_processes)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class _Run:
    """One dispatch: workers share the report and a stop flag; the first account error stops them all."""

    def __init__(self, factory: sessionmaker[Session], mailer: Mailer, config: SenderConfig, due_before: datetime,
                 policy: SendPolicy, now: datetime, stop: StopFlag | None = None) -> None:
        self.factory, self.mailer, self.config = factory, mailer, config
        self.due_before, self.policy, self.now = due_before, policy, now
        self.report = DispatchReport()
        # Shared by the processes when the run spans several: a refused account in one stops them all.
        self.stop: StopFlag = stop if stop is not None else threading.Event()
        self.account_error: MailerAccountError | None = None
        # Batches nothing of which was sent, handed back to PENDING once every worker has stopped: released
        # earlier, a worker still claiming would take them again in this same failing run.
        self.to_release: list[tuple[Claim, str]] = []
        self.spent: set[int] = set()  # campaigns with nothing more to give in this run (claim_due_jobs)
        self._release_lock = threading.Lock()

    def release_later(self, claim: Claim, reason: str) -> None:
        with self._release_lock:
            self.to_release.append((claim, reason))

    def release_all(self) -> None:
        for claim, reason in self.to_release:
            release(self.factory, claim, reason)

    def work(self) -> None:
        try:
            while not self.stop.is_set() and self._one_batch():
                pass
        except BaseException:
            self.stop.set()
            raise

    def claim(self, batches: int = 1) -> Claim:
        """Up to `batches` batches' worth of jobs, claimed together."""
        # Stamped with the wall clock, not `now`: the lease runs from the moment of the claim.
        claimed_at = utcnow()
        with session_scope(self.factory) as session:
            job_ids = claim_due_jobs(session, self.due_before, self.policy.batch_size * batches, self.now,
                                     claimed_at, self.config.default_from, self.spent)
        self.report.add(claimed=len(job_ids), batches=-(-len(job_ids) // self.policy.batch_size))
        return Claim(job_ids, claimed_at)

    def _one_batch(self) -> bool:
        claim = self.claim()
        return bool(claim.job_ids) and self.send_claimed(claim)

    def refused(self, refused: list[tuple[Prepared, SendResult]], claimed_at: datetime) -> bool:
        """Jobs the provider refused for our side go back to PENDING. A refused account stops the run; a
        refused sender pauses its campaign, saying why, and the run goes on with the others. False to stop."""
        job_ids = [sent.job_id for sent, _ in refused]
        account = [result for _, result in refused if result.outcome == SendOutcome.ACCOUNT_REFUSED]
        if account:
            refusal = account[0]
            error = MailerAccountError(f"the provider refused the account: [{refusal.error_code}] {refusal.error}")
            self.account_refused(Claim(job_ids, claimed_at), error)
            return False
        self.release_later(Claim(job_ids, claimed_at), "the provider refused the campaign's sender")
        for sent, result in refused:  # counted as requeued, with the reason in the run's metadata
            _note(self.report, JobStatus.PENDING,
                  f"sender refused ({result.error_code}); campaign {sent.campaign_id} paused")
        with session_scope(self.factory) as session:
            for campaign_id, result in {sent.campaign_id: result for sent, result in refused}.items():
                _pause_for_sender(session, campaign_id, result)
        return True

    def account_refused(self, claim: Claim, error: MailerAccountError) -> None:
        """The provider refuses the account: the run stops, these jobs back to PENDING, the error raised."""
        self.stop.set()
        self.release_later(claim, f"provider refused the account: {error}")
        self.account_error = self.account_error or error

    def _still_ours(self, session: Session, claim: Claim) -> Claim:
        """The claimed jobs this batch may send, under the claim's moment. A claim younger than half the
        lease is ours whatever happens next: no reconciler touches it before the lease is over, and sending
        a batch takes far less than the other half. An older one (the batch waited behind slow sends) is
        renewed, and only the jobs still held under it are sent: a reconciler may have taken some back."""
        if utcnow() - claim.claimed_at < self.policy.lease / 2:
            return claim
        renewed_at = utcnow()
        job_ids = renew_claim(session, claim.job_ids, claim.claimed_at, renewed_at)
        if len(job_ids) < len(claim.job_ids):
            log.warning("%d claimed job(s) were taken back while waiting to be sent; not sending them",
                        len(claim.job_ids) - len(job_ids))
        return Claim(job_ids, renewed_at)

    def send_claimed(self, claim: Claim) -> bool:
        """Prepare, send and record one claimed batch; False once the run must stop."""
        with session_scope(self.factory) as session:
            claim = self._still_ours(session, claim)
            prepared = prepare_batch(session, claim.job_ids, self.config, self.report) if claim.job_ids else []
        if not prepared:
            return True
        ids = [p.job_id for p in prepared]
        held = Claim(ids, claim.claimed_at)
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
            self.release_later(held, f"provider unavailable: {error}")
            self.report.add(requeued=len(ids))
            log.warning("provider unavailable, %d jobs back to PENDING: %s", len(ids), error)
            return False
        except MailerAccountError as error:
            self.account_refused(held, error)
            return False
        _pause_for_crash_test()
        with session_scope(self.factory) as session:
            refused = record_results(session, prepared, results, self.report)
        return self.refused(refused, claim.claimed_at) if refused else True


STOPPED_BEFORE_SENDING = "the run stopped before this batch was sent"


def _hand_to_senders(run: _Run, claim: Claim, claimed: queue.Queue[Claim | None]) -> None:
    """Queue the claim batch by batch; if interrupted while queueing, the batches not queued go back to
    PENDING with the run's other leftovers (a batch a sender has sent meanwhile is SENT, which release
    leaves alone)."""
    batches = claim.batches(run.policy.batch_size)
    for number, batch in enumerate(batches):
        try:
            claimed.put(batch)
        except BaseException:
            for rest in batches[number:]:
                run.release_later(rest, STOPPED_BEFORE_SENDING)
            raise


def run_workers(run: _Run) -> None:
    """One claimer and `policy.concurrency` senders: the claimer takes batch after batch (so our own threads
    never queue on the campaign lock the claim holds), senders prepare, send and record them, so one's
    database work overlaps another's HTTP call. Claimed batches wait in a short queue, already SENDING."""
    # SQLite has one writer at a time: parallel claims would only race on the daily budget.
    on_sqlite = run.factory.kw["bind"].dialect.name == "sqlite"
    if run.policy.concurrency <= 1 or on_sqlite:
        run.work()
        return
    claimed: queue.Queue[Claim | None] = queue.Queue(maxsize=run.policy.concurrency)
    errors: list[BaseException] = []

    def sender() -> None:
        while (claim := claimed.get()) is not None:
            if run.stop.is_set():  # never sent: straight back to PENDING once the run is over
                run.release_later(claim, STOPPED_BEFORE_SENDING)
                run.report.add(requeued=len(claim.job_ids))
                continue
            try:
                if not run.send_claimed(claim):
                    run.stop.set()
            except BaseException as error:  # surfaced after every sender has stopped
                run.stop.set()
                errors.append(error)

    threads = [threading.Thread(target=sender, name=f"sender-{n}") for n in range(run.policy.concurrency)]
    for thread in threads:
        thread.start()
    try:
        # Several batches a claim (SendPolicy.claim_batches): the claimer was the run's bottleneck.
        while not run.stop.is_set() and (claim := run.claim(run.policy.claim_batches)).job_ids:
            _hand_to_senders(run, claim, claimed)
    except BaseException as error:
        run.stop.set()
        errors.append(error)
    finally:
        for _ in threads:
            claimed.put(None)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def _run(run: _Run) -> None:
    """In this process, or in `policy.processes` worker processes on PostgreSQL (SQLite has one writer)."""
    from outreach_pipeline.core import send_processes  # noqa: PLC0415 (it builds on this module)

    if run.policy.processes > 1:
        if run.factory.kw["bind"].dialect.name != "postgresql":
            log.warning("sending from one process: SEND_PROCESSES needs PostgreSQL (SQLite has one writer)")
        elif not send_processes.can_start_processes():
            log.warning("sending from one process: this process is a daemon, which may not start others")
        else:
            send_processes.run_in_processes(run)
            return
    run_workers(run)


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

    Raises MailerAccountError (every unsent job back to PENDING) when the provider refuses the account,
    whether for the whole batch or message by message. A refused sender pauses its own campaign instead
    (its jobs back to PENDING), and the run goes on with the others.
    """
    policy = policy or SendPolicy(batch_size=batch_size)
    now = now or utcnow()
    run = _Run(factory, mailer, config, due_before, policy, now)
    settled = reconcile_stale_jobs(factory, mailer, now, policy.lease)
    run.report.add(reconciled_sent=settled.found_sent, reconciled_requeued=settled.requeued)
    with session_scope(factory) as session:
        run.report.add(deferred=defer_closed_windows(session, due_before, now))
    try:
        _run(run)
    finally:
        run.release_all()
    if run.account_error is not None:
        run.account_error.sent = run.report.sent
        raise run.account_error
    with session_scope(factory) as session:
        complete_finished_campaigns(session)
    return run.report
