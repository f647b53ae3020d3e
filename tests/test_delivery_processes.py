"""Exactly once across real processes: a SIGKILL between the provider's answer and our commit, and
several sender processes on one PostgreSQL database, all through the real postmarker client.

Run as a script (`python -m tests.test_delivery_processes DB_URL POSTMARK_URL TOKEN BATCH CONCURRENCY PROCESSES`)
this module is one sender process: it sends every due job once and prints its report as JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.bounce_guard import pause_bouncing_campaigns
from outreach_pipeline.core.campaigns import (
    CampaignCreate,
    StepSpec,
    complete_campaign,
    create_campaign,
    get_campaign,
    launch_campaign,
    pause_campaign,
)
from outreach_pipeline.core.claim import claim_due_jobs
from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.core.delivery import PAUSE_AFTER_SEND_ENV, DispatchReport, SendPolicy, dispatch_due
from outreach_pipeline.core.jobs import Accepted, mark_sent
from outreach_pipeline.core.leads import add_leads
from outreach_pipeline.core.send_processes import SendProcessError
from outreach_pipeline.core.stops import StopLead, skip_pending_jobs, stop_leads
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    SenderLimit,
    User,
)
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.mail.message import MailerAccountError, OutgoingEmail, SendOutcome, SendResult
from outreach_pipeline.mail.postmark import PostmarkMailer
from tests.fakes.postmark import FakePostmark

ROOT = Path(__file__).resolve().parents[1]
CONFIG = SenderConfig("team@sender.example", "inbound.sender.example", "https://outreach.example")


@pytest.fixture
def sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's PostgreSQL database, whose URL the sender processes are given too."""
    engine = create_db_engine(postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@dataclass(frozen=True)
class Seeded:
    campaign_id: int
    owner_id: int


def seed_campaign(sessions: sessionmaker[Session], leads: int, *, owner_email: str = "op@company.example",
                  **settings: Any) -> Seeded:
    """An ACTIVE one-step campaign whose `leads` leads each have a step-1 job due an hour ago."""
    with session_scope(sessions) as session:
        owner = session.scalar(select(User).where(User.email == owner_email))
        if owner is None:
            owner = User(email=owner_email)
            session.add(owner)
            session.flush()
        campaign = create_campaign(session, owner.id, CampaignCreate(
            name="Bulk", sender_name="Ada", sender_email=settings.pop("sender_email", "ada@sender.example"),
            steps=settings.pop("steps", [StepSpec()]), **settings))
        session.execute(insert(Lead), [
            {"campaign_id": campaign.id, "email": f"lead{n}@c{campaign.id}.example",
             "email_key": f"lead{n}@c{campaign.id}.example", "first_name": f"L{n}", "company": "Acme",
             "custom_fields": {}, "reply_token": secrets.token_hex(16)} for n in range(leads)])
        for step in campaign.steps:
            save_template(session, campaign, TemplateInput(step_number=step.number, subject="Hello {{company}}",
                                                           body="Hi {{first_name|there}}, step %d." % step.number))
        launch_campaign(session, campaign, now=datetime.now(UTC) - timedelta(hours=1))
        return Seeded(campaign.id, owner.id)


def _job_statuses(sessions: sessionmaker[Session], campaign_id: int) -> Counter[JobStatus]:
    with session_scope(sessions) as session:
        return Counter(session.scalars(select(EmailJob.status).where(EmailJob.campaign_id == campaign_id)))


def _sender(database_url: str, fake: FakePostmark, batch: int, concurrency: int,
            env: dict[str, str] | None = None, processes: int = 1) -> subprocess.Popen[str]:
    """A sender process in a process group of its own (with its send processes), as a terminal starts one."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_delivery_processes", database_url, fake.url, fake.server_token,
         str(batch), str(concurrency), str(processes)],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.postgres
def test_a_sender_killed_after_the_provider_accepted_is_reconciled_and_nothing_is_sent_twice(
    postgres_url: str, sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 30)
    # The sender sleeps between the provider's answer and its commit; we SIGKILL it there.
    sender = _sender(postgres_url, fake_postmark, batch=10, concurrency=1, env={PAUSE_AFTER_SEND_ENV: "60"})
    try:
        _wait_for(lambda: len(fake_postmark.messages) >= 10, 60, "the first batch at the provider")
        time.sleep(0.2)  # nothing more arrives: the sender is asleep before recording
    finally:
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(10)
    assert sender.returncode == -signal.SIGKILL
    accepted = {m["Metadata"]["job_id"]: m["MessageID"] for m in fake_postmark.messages}
    assert len(accepted) == 10
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENDING: 10, JobStatus.PENDING: 20}

    # While the lease runs, a new run leaves the 10 alone (their sender might still be alive)...
    live = dispatch_due(sessions, PostmarkMailer(fake_postmark.server_token, fake_postmark.url, "outbound"),
                        CONFIG, datetime.now(UTC), policy=SendPolicy(batch_size=10))
    assert (live.sent, live.reconciled_sent) == (20, 0)
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENDING: 10, JobStatus.SENT: 20}
    # ...and once it has passed, the reconciler asks the provider and records them, sending nothing.
    before = len(fake_postmark.messages)
    later = dispatch_due(sessions, PostmarkMailer(fake_postmark.server_token, fake_postmark.url, "outbound"),
                         CONFIG, datetime.now(UTC), policy=SendPolicy(batch_size=10, lease=timedelta(0)))
    assert (later.reconciled_sent, later.reconciled_requeued, later.sent, later.claimed) == (10, 0, 0, 0)
    assert len(fake_postmark.messages) == before == 30
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert set(per_job.values()) == {1}
    with session_scope(sessions) as session:
        jobs = session.execute(select(EmailJob.id, EmailJob.status, EmailJob.provider_message_id)
                               .where(EmailJob.campaign_id == seeded.campaign_id)).all()
    assert {status for _, status, _ in jobs} == {JobStatus.SENT}
    for job_id, _, message_id in jobs:
        if str(job_id) in accepted:
            assert message_id == accepted[str(job_id)]


@pytest.mark.postgres
def test_several_sender_processes_on_one_database_send_each_job_exactly_once(
    postgres_url: str, sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 600, daily_cap=1000)
    fake_postmark.latency_s = 0.01  # batches overlap in time across the processes
    senders = [_sender(postgres_url, fake_postmark, batch=20, concurrency=2) for _ in range(4)]
    reports = []
    for sender in senders:
        out, err = sender.communicate(timeout=90)
        assert sender.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 600
    assert max(per_job.values()) == 1, [job for job, n in per_job.items() if n > 1]
    assert sum(r["sent"] for r in reports) == 600
    assert sum(1 for r in reports if r["sent"] > 0) >= 2  # the work really was shared
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 600}


class _Gated(PostmarkMailer):
    """Postmark through postmarker, but every batch waits at Postmark's door until the gate opens."""

    def __init__(self, fake: FakePostmark) -> None:
        super().__init__(fake.server_token, fake.url, "outbound")
        self.held: list[int] = []  # the jobs of the batches waiting at the door
        self.gate = threading.Event()

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        self.held += [int(m.metadata["job_id"]) for m in messages]
        self.gate.wait(30)
        return super().send_batch(messages)


def _mailer(fake: FakePostmark) -> PostmarkMailer:
    return PostmarkMailer(fake.server_token, fake.url, "outbound")


@pytest.mark.postgres
def test_one_run_over_several_send_processes_sends_each_job_once_and_sums_their_reports(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 600, daily_cap=1000)
    fake_postmark.latency_s = 0.02  # batches overlap in time across the processes
    policy = SendPolicy(batch_size=20, concurrency=2, processes=3)

    report = dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC), policy=policy)

    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 600 and set(per_job.values()) == {1}
    assert (report.claimed, report.sent, report.batches) == (600, 600, 30)
    assert len(report.sent_per_process) == 3 and sum(report.sent_per_process) == 600
    assert sum(1 for sent in report.sent_per_process if sent > 0) >= 2  # the work really was shared
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 600}


@pytest.mark.postgres
def test_a_refused_account_stops_every_send_process_and_leaves_the_jobs_pending(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 200)
    wrong_token = PostmarkMailer("not-the-token", fake_postmark.url, "outbound")
    policy = SendPolicy(batch_size=10, concurrency=2, processes=2)

    with pytest.raises(MailerAccountError, match="Server Token you provided") as refused:
        dispatch_due(sessions, wrong_token, CONFIG, datetime.now(UTC), policy=policy)

    assert refused.value.sent == 0
    assert fake_postmark.messages == []
    # A refused batch stops its process and the other: a handful of batches are tried, not all twenty.
    assert fake_postmark.requests <= 2 * policy.processes * policy.concurrency
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.PENDING: 200}


@pytest.mark.postgres
def test_one_refused_batch_stops_the_other_send_process_too(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 200, daily_cap=1000)  # the cap is not what stops the run
    fake_postmark.latency_s = 0.2
    fake_postmark.fail_next(401)  # one batch, in one of the processes, meets a refused account
    policy = SendPolicy(batch_size=10, concurrency=2, processes=2)

    with pytest.raises(MailerAccountError, match="Server Token you provided") as refused:
        dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC), policy=policy)

    # Only the batches already on their way when the refusal came went out (three at most, one per other
    # sender); the other process stopped too rather than sending the rest of the 200.
    sent = len(fake_postmark.messages)
    assert sent <= 3 * policy.batch_size and refused.value.sent == sent
    # Counters compare missing statuses as zero (Python 3.10+): SENT may be 0.
    assert _job_statuses(sessions, seeded.campaign_id) == Counter({JobStatus.SENT: sent, JobStatus.PENDING: 200 - sent})


@pytest.mark.postgres
def test_a_send_process_killed_mid_run_fails_the_run_and_its_claims_are_reconciled_not_resent(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 400, daily_cap=1000)
    fake_postmark.latency_s = 0.05
    policy = SendPolicy(batch_size=10, concurrency=2, processes=2)
    outcome: list[BaseException | DispatchReport] = []

    def run() -> None:
        try:
            outcome.append(dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC), policy=policy))
        except BaseException as error:  # noqa: BLE001 (the test looks at it)
            outcome.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    _wait_for(lambda: len(fake_postmark.messages) >= 40, 60, "sends from the send processes")
    victim = max(multiprocessing.active_children(), key=lambda child: child.name == "send-process-0")
    assert victim.name == "send-process-0"
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    runner.join(120)

    assert len(outcome) == 1 and isinstance(outcome[0], SendProcessError), outcome
    assert "send-process-0 exited with code -9" in str(outcome[0])
    statuses = _job_statuses(sessions, seeded.campaign_id)
    assert statuses[JobStatus.SENT] < 400 and set(statuses) <= {JobStatus.SENT, JobStatus.SENDING, JobStatus.PENDING}

    # Once the lease is over, the next run settles what the killed process left SENDING by asking the
    # provider, and sends the rest: every job exactly once.
    dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC),
                 policy=SendPolicy(batch_size=10, lease=timedelta(0)))
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 400 and set(per_job.values()) == {1}
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 400}


def _sending_from_two_processes(postgres_url: str, sessions: sessionmaker[Session],
                                fake: FakePostmark) -> tuple[Seeded, subprocess.Popen[str]]:
    """A sender process with two send processes, well into 1,500 jobs (about 270 a second, 0.3 s a batch)."""
    seeded = seed_campaign(sessions, 1500, daily_cap=5000)
    fake.latency_s = 0.3
    sender = _sender(postgres_url, fake, batch=10, concurrency=4, processes=2)
    _wait_for(lambda: len(fake.messages) >= 100, 60, "sends from the send processes")
    return seeded, sender


@pytest.mark.postgres
def test_an_interrupted_run_over_several_processes_hands_back_every_job_it_had_not_sent(
    postgres_url: str, sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded, sender = _sending_from_two_processes(postgres_url, sessions, fake_postmark)
    # Ctrl-C twice in the terminal: the whole group, the send processes too (cancelling a Dagster run
    # signals the run's process only).
    os.killpg(sender.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(sender.pid, signal.SIGINT)
    _, err = sender.communicate(timeout=60)

    assert sender.returncode != 0 and "KeyboardInterrupt" in err
    # The batches in flight finished and were recorded; those claimed and waiting went back to PENDING,
    # not left SENDING for the reconciler to ask the provider about.
    statuses = _job_statuses(sessions, seeded.campaign_id)
    assert JobStatus.SENDING not in statuses
    assert statuses[JobStatus.SENT] == len(fake_postmark.messages) < 1500
    assert statuses[JobStatus.SENT] + statuses[JobStatus.PENDING] == 1500


@pytest.mark.postgres
def test_send_processes_stop_soon_after_their_run_process_is_killed(
    postgres_url: str, sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded, sender = _sending_from_two_processes(postgres_url, sessions, fake_postmark)
    os.kill(sender.pid, signal.SIGKILL)
    sender.wait(10)

    time.sleep(2)  # the batches in hand end; nothing new starts
    settled = len(fake_postmark.messages)
    time.sleep(2)
    assert len(fake_postmark.messages) == settled < 1500  # still sending, it would take ~270 more a second
    # With nobody to report to, the send processes handed back what they had claimed and not sent.
    statuses = _job_statuses(sessions, seeded.campaign_id)
    assert JobStatus.SENDING not in statuses and statuses[JobStatus.SENT] == settled


class _Tagged(PostmarkMailer):
    """A mailer of the operator's own, built on ours."""

    def __init__(self, fake: FakePostmark, tag: str) -> None:
        super().__init__(fake.server_token, fake.url, "outbound")
        self.tag = tag


def test_a_postmark_mailer_reaches_a_send_process_as_itself(fake_postmark: FakePostmark) -> None:
    mailer = _Tagged(fake_postmark, "ours")
    mailer.send_batch([OutgoingEmail("a@example.com", "ada@sender.example", "Hi", "Hello")])  # a client in use

    copy = pickle.loads(pickle.dumps(mailer))

    assert type(copy) is _Tagged and copy.tag == "ours"
    (result,) = copy.send_batch([OutgoingEmail("b@example.com", "ada@sender.example", "Hi", "Hello")])
    assert result.outcome == SendOutcome.SENT
    assert [m["To"] for m in fake_postmark.messages] == ["a@example.com", "b@example.com"]


@pytest.mark.postgres
def test_a_mailer_that_cannot_reach_a_send_process_stops_the_run_saying_why_before_anything_is_sent(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 20)
    unpicklable = _Gated(fake_postmark)  # holds a threading.Event

    with pytest.raises(TypeError, match="needs a mailer that can be sent to another process; _Gated cannot"):
        dispatch_due(sessions, unpicklable, CONFIG, datetime.now(UTC), policy=SendPolicy(batch_size=10, processes=2))

    assert fake_postmark.messages == []
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.PENDING: 20}


@pytest.mark.postgres
def test_a_claim_of_several_batches_is_sent_batch_by_batch_each_job_once(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 7)
    policy = SendPolicy(batch_size=2, concurrency=2, claim_batches=3)

    report = dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC), policy=policy)

    # Six jobs in the first claim, one in the second: four batches of at most two.
    assert (report.claimed, report.batches, report.sent) == (7, 4, 7)
    assert sorted(fake_postmark.batches) == [1, 2, 2, 2]
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 7 and set(per_job.values()) == {1}
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 7}
    with session_scope(sessions) as session:  # two claims, told apart by their moment
        claims = Counter(session.scalars(select(EmailJob.claimed_at).where(
            EmailJob.campaign_id == seeded.campaign_id)))
    assert sorted(claims.values()) == [1, 6]


def _held_with_a_full_queue(sessions: sessionmaker[Session], seeded: Seeded, fake: FakePostmark, now: datetime,
                            leads: int, lease: timedelta = timedelta(minutes=15),
                            ) -> tuple[_Gated, threading.Thread, list[DispatchReport]]:
    """Run A, started at `now`, one job per batch: both its senders hold a batch at Postmark's door and
    behind them three claimed batches wait (two in the queue, one in the claimer's hand)."""
    gated, reports = _Gated(fake), []
    policy = SendPolicy(batch_size=1, concurrency=2, claim_batches=1, lease=lease)
    run = threading.Thread(target=lambda: reports.append(dispatch_due(
        sessions, gated, CONFIG, datetime.now(UTC), policy=policy, now=now)))
    run.start()
    _wait_for(lambda: len(gated.held) == 2 and _job_statuses(sessions, seeded.campaign_id)
              == {JobStatus.SENDING: 5, JobStatus.PENDING: leads - 5}, 20, "a full queue of claimed batches")
    return gated, run, reports


@pytest.mark.postgres
def test_a_run_longer_than_the_lease_keeps_its_claims_from_another_runs_reconciler(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 6)
    # Run A started half an hour ago, longer than the 15-minute lease; its claims are a few moments old.
    gated, run, first = _held_with_a_full_queue(sessions, seeded, fake_postmark,
                                                datetime.now(UTC) - timedelta(minutes=30), 6)
    try:
        second = dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC),
                              policy=SendPolicy(batch_size=10))
    finally:
        gated.gate.set()
        run.join(30)

    assert (second.reconciled_requeued, second.sent, first[0].sent) == (0, 1, 5)
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 6 and set(per_job.values()) == {1}, per_job
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 6}


@pytest.mark.postgres
def test_a_batch_the_reconciler_took_back_while_it_waited_to_be_sent_is_not_sent_by_its_claimer(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 8)
    # Run A's lease is 2 s: a batch that waited over 1 s renews its claim before sending.
    gated, run, first = _held_with_a_full_queue(sessions, seeded, fake_postmark, datetime.now(UTC), 8,
                                                lease=timedelta(seconds=2))
    try:
        with session_scope(sessions) as session:  # to run B (a 15-minute lease) they look long dead
            session.execute(update(EmailJob).where(EmailJob.status == JobStatus.SENDING,
                                                   EmailJob.id.not_in(gated.held))
                            .values(claimed_at=EmailJob.claimed_at - text("interval '20 minutes'")))
        time.sleep(1.2)  # and to run A, its waiting batches are now old enough to be checked
        second = dispatch_due(sessions, _mailer(fake_postmark), CONFIG, datetime.now(UTC),
                              policy=SendPolicy(batch_size=10))
    finally:
        gated.gate.set()
        run.join(30)

    # Run B took the three back and sent them with the three never claimed; A sent only its two.
    assert (second.reconciled_requeued, second.sent, first[0].sent) == (3, 6, 2)
    per_job = Counter(m["Metadata"]["job_id"] for m in fake_postmark.messages)
    assert len(per_job) == 8 and set(per_job.values()) == {1}, per_job
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.SENT: 8}


def _main(argv: list[str]) -> None:
    database_url, api_url, token, batch, concurrency, processes = argv
    sessions = make_session_factory(create_db_engine(database_url))
    report = dispatch_due(sessions, PostmarkMailer(token, api_url, "outbound"), CONFIG, datetime.now(UTC),
                          policy=SendPolicy(batch_size=int(batch), concurrency=int(concurrency),
                                            processes=int(processes)))
    print(json.dumps(report.as_metadata()))


if __name__ == "__main__":
    _main(sys.argv[1:])


def accepted_jobs(sessions: sessionmaker[Session], campaign_id: int) -> list[Accepted]:
    """The campaign's jobs as the provider accepted them, in id order: what mark_sent records."""
    with session_scope(sessions) as session:
        return [Accepted(job.id, job.lead_id, job.campaign_id, job.step_number, f"pm-{job.id}", f"<{job.id}@x>")
                for job in session.scalars(select(EmailJob).where(EmailJob.campaign_id == campaign_id)
                                           .order_by(EmailJob.id))]


@pytest.mark.postgres
def test_a_claim_in_progress_never_blocks_recording_the_sends_of_its_campaign(
    sessions: sessionmaker[Session]
) -> None:
    """Recording a send inserts rows that point at the campaign (the follow-up, the send count): they must
    not queue behind the claimer's lock on that campaign, or the claimer and a sender deadlock."""
    seeded = seed_campaign(sessions, 5, steps=[StepSpec(), StepSpec(delay_days=2)])
    accepted = accepted_jobs(sessions, seeded.campaign_id)
    with session_scope(sessions) as session:
        mark_sent(session, accepted[:1], datetime.now(UTC))  # this quarter hour's count row exists
    with session_scope(sessions) as claiming:
        now = datetime.now(UTC)
        # The claim holds the campaign's row until commit; another sender records the jobs it sent before.
        assert claim_due_jobs(claiming, now, 2, now, now) == [a.job_id for a in accepted[1:3]]
        with session_scope(sessions) as recording:
            recording.execute(text("SET LOCAL lock_timeout = '2s'"))
            mark_sent(recording, accepted[3:], datetime.now(UTC) + timedelta(hours=1))  # a new count row
    with session_scope(sessions) as session:
        follow_ups = session.scalar(select(func.count()).select_from(EmailJob).where(EmailJob.step_number == 2))
    assert follow_ups == 3


@pytest.mark.postgres
def test_claims_of_two_campaigns_sharing_a_sender_never_wait_on_each_other(sessions: sessionmaker[Session]) -> None:
    """A claim that finds nothing to take from one campaign (its cap spent) lets go of it, and of its
    sender's budget row, before it tries the next campaign: held together, a claim waiting for the next
    campaign and another claim of that campaign waiting for the sender's row would deadlock."""
    spent = seed_campaign(sessions, 2, sender_email="team@sender.example")
    due = seed_campaign(sessions, 3, sender_email="team@sender.example")
    with session_scope(sessions) as session:
        session.add(SenderLimit(email="team@sender.example", daily_cap=100))
        session.execute(update(Campaign).where(Campaign.id == spent.campaign_id).values(daily_cap=0))
    result: dict[str, Any] = {}

    def claim() -> None:
        now = datetime.now(UTC)
        with session_scope(sessions) as session:
            result["claimed"] = claim_due_jobs(session, now, 10, now, now)

    with session_scope(sessions) as other:  # another claim holds the second campaign
        other.get_one(Campaign, due.campaign_id, with_for_update={"key_share": True})
        claimer = threading.Thread(target=claim)
        claimer.start()
        _wait_for(lambda: _waiting_for_a_lock(sessions), 10, "the claim to wait for the second campaign")
        other.execute(text("SET LOCAL lock_timeout = '3s'"))
        assert other.scalar(select(SenderLimit.daily_cap).where(SenderLimit.email == "team@sender.example")
                            .with_for_update()) == 100
    claimer.join(10)
    assert len(result["claimed"]) == 3
    assert _job_statuses(sessions, due.campaign_id) == {JobStatus.SENDING: 3}
    assert _job_statuses(sessions, spent.campaign_id) == {JobStatus.PENDING: 2}


def _waiting_for_a_lock(sessions: sessionmaker[Session]) -> bool:
    with session_scope(sessions) as session:
        return bool(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND datname = current_database()")))


def _while_locked(sessions: sessionmaker[Session], holder: Callable[[Session], None], work: Callable[[], None],
                  waiting_for: str) -> None:
    """Run `work` in a thread while `holder`'s transaction holds the locks it took: the work must wait for
    them (checked in pg_locks), then go on once that transaction commits."""
    with session_scope(sessions) as holding:
        holder(holding)
        worker = threading.Thread(target=work)
        worker.start()
        _wait_for(lambda: _waiting_for_a_lock(sessions), 10, waiting_for)
    worker.join(10)


@pytest.mark.postgres
def test_a_webhook_stop_takes_the_lead_before_its_jobs_as_a_reply_does(sessions: sessionmaker[Session]) -> None:
    """A reply (or an unsubscribe) locks the lead, then skips its jobs. A webhook batch stopping the same lead
    must wait for the lead before it touches a job: taking the jobs first, it deadlocked with the reply."""
    seeded = seed_campaign(sessions, 1)
    with session_scope(sessions) as session:
        lead_id, email_key = session.execute(select(Lead.id, Lead.email_key)
                                             .where(Lead.campaign_id == seeded.campaign_id)).one()
    failures: list[BaseException] = []

    def bounce() -> None:
        try:
            with session_scope(sessions) as session:
                stop_leads(session, [StopLead(lead_id, seeded.owner_id, email_key, LeadStatus.BOUNCED, "bounce",
                                              "address bounced (HardBounce)", lambda skipped: "")])
        except Exception as error:  # noqa: BLE001 - a deadlock victim; the assertion below reports it
            failures.append(error)

    with session_scope(sessions) as replying:  # the reply path's order: the lead, then its jobs
        replying.execute(update(Lead).where(Lead.id == lead_id).values(status=LeadStatus.REPLIED))
        worker = threading.Thread(target=bounce)
        worker.start()
        _wait_for(lambda: _waiting_for_a_lock(sessions), 10, "the bounce to wait for the lead")
        skip_pending_jobs(replying, [lead_id], "lead replied")
    worker.join(10)

    assert failures == []
    with session_scope(sessions) as session:
        assert session.scalar(select(Lead.status).where(Lead.id == lead_id)) == LeadStatus.BOUNCED
        assert session.scalar(select(EmailJob.last_error).where(EmailJob.lead_id == lead_id)) == "lead replied"


@pytest.mark.postgres
def test_a_claim_waiting_on_a_pause_claims_nothing_once_the_pause_commits(sessions: sessionmaker[Session]) -> None:
    seeded = seed_campaign(sessions, 3)
    result: dict[str, Any] = {}

    def claim() -> None:
        now = datetime.now(UTC)
        with session_scope(sessions) as session:
            result["claimed"] = claim_due_jobs(session, now, 10, now, now)

    def pause(pausing: Session) -> None:  # the API's pause: the campaign row locked, then changed
        pause_campaign(pausing, get_campaign(pausing, seeded.owner_id, seeded.campaign_id, lock=True))

    _while_locked(sessions, pause, claim, "the claim to wait for the paused campaign")

    assert result["claimed"] == []
    assert _job_statuses(sessions, seeded.campaign_id) == {JobStatus.PENDING: 3}


@pytest.mark.postgres
def test_leads_added_while_a_launch_commits_get_their_first_email(sessions: sessionmaker[Session]) -> None:
    """The import read the campaign as a DRAFT, then waited for the launch's lock: under the lock it must
    see the launch, or its leads would never be mailed."""
    with session_scope(sessions) as session:
        owner = User(email="racer@company.example")
        session.add(owner)
        session.flush()
        campaign = create_campaign(session, owner.id, CampaignCreate(
            name="Race", sender_name="Ada", sender_email="ada@sender.example", steps=[StepSpec()]))
        save_template(session, campaign, TemplateInput(step_number=1, subject="Hello", body="Hi there."))
        add_leads(session, campaign, [{"email": "first@lead.example"}])
        campaign_id, owner_id = campaign.id, owner.id
    result: dict[str, Any] = {}

    def add_late_lead() -> None:
        with session_scope(sessions) as session:
            draft = session.get_one(Campaign, campaign_id)
            assert draft.status == CampaignStatus.DRAFT  # what the launch has not committed yet
            result["report"] = add_leads(session, draft, [{"email": "late@lead.example"}])

    def launch(launching: Session) -> None:
        launch_campaign(launching, get_campaign(launching, owner_id, campaign_id, lock=True), now=datetime.now(UTC))

    _while_locked(sessions, launch, add_late_lead, "the import to wait for the launch")

    assert result["report"].stored == 1
    with session_scope(sessions) as session:
        mailed = session.scalars(select(Lead.email).join(EmailJob, EmailJob.lead_id == Lead.id)
                                 .where(Lead.campaign_id == campaign_id).order_by(Lead.email)).all()
    assert mailed == ["first@lead.example", "late@lead.example"]


@pytest.mark.postgres
def test_the_bounce_guard_leaves_a_campaign_its_owner_completed_meanwhile(sessions: sessionmaker[Session]) -> None:
    seeded = seed_campaign(sessions, 2)
    with session_scope(sessions) as session:
        mark_sent(session, accepted_jobs(sessions, seeded.campaign_id), datetime.now(UTC))
        session.execute(update(Lead).where(Lead.campaign_id == seeded.campaign_id).values(status=LeadStatus.BOUNCED))
    result: dict[str, Any] = {}

    def guard() -> None:
        with session_scope(sessions) as session:
            result["paused"] = pause_bouncing_campaigns(session, max_rate=0.05, min_sent=1)

    def complete(completing: Session) -> None:  # the owner completes it; the guard reads it ACTIVE meanwhile
        complete_campaign(completing, get_campaign(completing, seeded.owner_id, seeded.campaign_id, lock=True))

    _while_locked(sessions, complete, guard, "the guard to wait for the campaign")

    assert result["paused"] == []
    with session_scope(sessions) as session:
        assert session.get_one(Campaign, seeded.campaign_id).status == CampaignStatus.COMPLETED
