"""When and how much: windows per lead timezone, daily caps per campaign and sender, the gap, pause and
resume; and how each Postmark answer is handled. Real databases, real postmarker over HTTP to the fake."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.campaigns import StepSpec, pause_campaign, resume_campaign
from outreach_pipeline.core.claim import claim_due_jobs, remaining_today
from outreach_pipeline.core.delivery import Claim, DispatchReport, SendPolicy, dispatch_due, release
from outreach_pipeline.core.jobs import mark_sent, schedule_first_jobs
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    SendCount,
    SenderLimit,
    SenderPacing,
    Suppression,
)
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.mail.message import MailerAccountError, OutgoingEmail, SendOutcome
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.mail.postmark import PostmarkMailer
from tests.fakes.postmark import FakePostmark
from tests.test_delivery_processes import CONFIG, accepted_jobs, seed_campaign

QUICK = SendPolicy(batch_size=50, max_retries=2, backoff_base_s=0.01)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def send(sessions: sessionmaker[Session], fake: FakePostmark, now: datetime | None = None,
         policy: SendPolicy = QUICK, **mailer: Any) -> DispatchReport:
    now = now or datetime.now(UTC)
    postmark = PostmarkMailer(fake.server_token, mailer.pop("url", fake.url), "outbound", **mailer)
    return dispatch_due(sessions, postmark, CONFIG, now, policy=policy, now=now)


def jobs(sessions: sessionmaker[Session], campaign_id: int) -> list[tuple[str, int, JobStatus, datetime]]:
    with session_scope(sessions) as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Lead.email, EmailJob.step_number, EmailJob.status, EmailJob.due_at)
            .join(Lead, Lead.id == EmailJob.lead_id).where(EmailJob.campaign_id == campaign_id)
            .order_by(EmailJob.step_number, Lead.id))]


def set_lead_timezones(sessions: sessionmaker[Session], campaign_id: int, zones: list[str | None]) -> None:
    with session_scope(sessions) as session:
        leads = session.scalars(select(Lead).where(Lead.campaign_id == campaign_id).order_by(Lead.id)).all()
        for lead, zone in zip(leads, zones, strict=True):
            lead.timezone = zone


# --- the window ----------------------------------------------------------------------------------


def test_each_lead_gets_mail_inside_the_window_of_its_own_timezone(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 3, timezone="Europe/Berlin", window_start_hour=9, window_end_hour=17,
                           send_days="01234")
    set_lead_timezones(sessions, seeded.campaign_id, [None, "Asia/Tokyo", "America/New_York"])
    tuesday_noon_berlin = datetime(2026, 12, 1, 11, tzinfo=UTC)  # 20:00 in Tokyo, 06:00 in New York

    report = send(sessions, fake_postmark, tuesday_noon_berlin)

    assert (report.sent, report.deferred) == (1, 2)
    assert [m["To"] for m in fake_postmark.messages] == [f"lead0@c{seeded.campaign_id}.example"]
    rows = jobs(sessions, seeded.campaign_id)
    assert [(status, due) for _, _, status, due in rows[1:]] == [
        (JobStatus.PENDING, datetime(2026, 12, 2, 0, tzinfo=UTC)),  # Wednesday 09:00 Tokyo
        (JobStatus.PENDING, datetime(2026, 12, 1, 14, tzinfo=UTC)),  # today 09:00 New York
    ]
    # At 09:00 in New York the third lead's mail goes; Tokyo's waits for its morning.
    later = send(sessions, fake_postmark, datetime(2026, 12, 1, 14, 5, tzinfo=UTC))
    assert later.sent == 1 and fake_postmark.messages[-1]["To"] == f"lead2@c{seeded.campaign_id}.example"


def test_a_weekend_waits_for_monday_morning(sessions: sessionmaker[Session], fake_postmark: FakePostmark) -> None:
    seeded = seed_campaign(sessions, 2, timezone="America/New_York", window_start_hour=8, window_end_hour=18,
                           send_days="01234")
    saturday = datetime(2026, 11, 28, 15, tzinfo=UTC)

    assert send(sessions, fake_postmark, saturday).sent == 0
    assert fake_postmark.requests == 0
    assert {due for *_, due in jobs(sessions, seeded.campaign_id)} == {datetime(2026, 11, 30, 13, tzinfo=UTC)}


# --- caps and gap --------------------------------------------------------------------------------


def test_a_sender_address_cap_spans_its_campaigns(sessions: sessionmaker[Session], fake_postmark: FakePostmark) -> None:
    first = seed_campaign(sessions, 3)
    second = seed_campaign(sessions, 3)
    with session_scope(sessions) as session:
        session.add(SenderLimit(email="ada@sender.example", daily_cap=4))

    assert send(sessions, fake_postmark).sent == 4
    assert send(sessions, fake_postmark).sent == 0
    statuses = [status for c in (first, second) for _, _, status, _ in jobs(sessions, c.campaign_id)]
    assert statuses.count(JobStatus.SENT) == 4 and statuses.count(JobStatus.PENDING) == 2


def test_the_cap_counts_a_job_settled_twice_once(sessions: sessionmaker[Session]) -> None:
    """The send path and the reconciler may both settle one job: the first wins and the day counts it once."""
    seeded = seed_campaign(sessions, 3, daily_cap=10, timezone="UTC")
    accepted = accepted_jobs(sessions, seeded.campaign_id)
    now = datetime.now(UTC)
    with session_scope(sessions) as session:
        mark_sent(session, accepted[:2], now)
    with session_scope(sessions) as session:
        mark_sent(session, accepted, now)  # the first two again, with the third
        campaign = session.get_one(Campaign, seeded.campaign_id)
        assert remaining_today(session, campaign, now) == 7
        assert session.scalar(select(func.sum(SendCount.sent))) == 3


def test_a_days_cap_starts_at_local_midnight_in_a_quarter_hour_timezone(sessions: sessionmaker[Session]) -> None:
    """Kathmandu is UTC+5:45: its midnight is 18:15 UTC. A send at 23:55 there belongs to the day before."""
    seeded = seed_campaign(sessions, 4, daily_cap=10, timezone="Asia/Kathmandu")
    accepted = accepted_jobs(sessions, seeded.campaign_id)
    midnight = datetime(2026, 11, 24, 18, 15, tzinfo=UTC)
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, seeded.campaign_id)
        mark_sent(session, accepted[:1], midnight - timedelta(minutes=5))
        assert remaining_today(session, campaign, midnight - timedelta(minutes=1)) == 9
        mark_sent(session, accepted[1:3], midnight + timedelta(minutes=1))
        mark_sent(session, accepted[3:], midnight + timedelta(minutes=14, seconds=59))
        assert remaining_today(session, campaign, midnight + timedelta(hours=3)) == 7


def test_follow_ups_go_before_first_emails_when_the_cap_is_tight(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 3, steps=[StepSpec(), StepSpec(delay_days=2)])
    assert send(sessions, fake_postmark).sent == 3
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, seeded.campaign_id)
        # Three new leads arrive and the follow-ups fall due; only two more emails fit today.
        for n in range(3):
            session.add(Lead(campaign_id=campaign.id, email=f"new{n}@x.example", email_key=f"new{n}@x.example",
                             first_name="N", company="Acme", custom_fields={}, reply_token=secrets.token_hex(16)))
        session.flush()
        schedule_first_jobs(session, campaign, datetime.now(UTC) - timedelta(minutes=5))
        session.execute(update(EmailJob).where(EmailJob.step_number == 2)
                        .values(due_at=datetime.now(UTC) - timedelta(minutes=1)))
        campaign.daily_cap = 5

    report = send(sessions, fake_postmark)

    assert report.sent == 2
    assert [m["Subject"] for m in fake_postmark.messages[3:]] == ["Re: Hello Acme", "Re: Hello Acme"]
    assert sum(1 for _, step, status, _ in jobs(sessions, seeded.campaign_id)
               if step == 1 and status == JobStatus.PENDING) == 3


def test_a_random_gap_spaces_one_sender_address_across_its_campaigns(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    # Two campaigns send from ada@sender.example, a third from another address.
    seeded = [seed_campaign(sessions, 3), seed_campaign(sessions, 3),
              seed_campaign(sessions, 3, sender_email="bo@other.example")]
    with session_scope(sessions) as session:
        for campaign in seeded:
            session.get_one(Campaign, campaign.campaign_id).send_gap_seconds = 600
    now = datetime.now(UTC)

    assert send(sessions, fake_postmark, now).sent == 2  # one per address, not one per campaign
    assert send(sessions, fake_postmark, now + timedelta(minutes=9)).sent == 0  # the gap is 10 to 20 minutes
    with session_scope(sessions) as session:
        next_send = session.get_one(SenderPacing, "ada@sender.example").next_send_at
    assert next_send is not None and now + timedelta(minutes=10) <= next_send <= now + timedelta(minutes=20)
    assert send(sessions, fake_postmark, now + timedelta(minutes=21)).sent == 2
    senders = Counter(m["From"].rpartition("<")[2].rstrip(">") for m in fake_postmark.messages)
    assert senders == {"ada@sender.example": 2, "bo@other.example": 2}


# --- pause and resume ----------------------------------------------------------------------------


def test_pause_sends_nothing_and_resume_spreads_the_backlog_over_the_coming_windows(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 5, daily_cap=2, timezone="UTC", window_start_hour=9, window_end_hour=17)
    with session_scope(sessions) as session:
        pause_campaign(session, session.get_one(Campaign, seeded.campaign_id))
    assert send(sessions, fake_postmark).claimed == 0
    assert {(status, attempts) for status, attempts in _status_attempts(sessions)} == {(JobStatus.PENDING, 0)}

    a_week_later = datetime(2026, 12, 1, 10, tzinfo=UTC)  # Tuesday, inside the window
    with session_scope(sessions) as session:
        moved = resume_campaign(session, session.get_one(Campaign, seeded.campaign_id), now=a_week_later)

    assert moved == 5
    due = sorted(d for *_, d in jobs(sessions, seeded.campaign_id))
    # Two a day (the cap), evenly spaced within 09:00-17:00: today from now, then tomorrow, then the day after.
    assert due == [datetime(2026, 12, 1, 10, tzinfo=UTC), datetime(2026, 12, 1, 13, 30, tzinfo=UTC),
                   datetime(2026, 12, 2, 9, tzinfo=UTC), datetime(2026, 12, 2, 13, tzinfo=UTC),
                   datetime(2026, 12, 3, 9, tzinfo=UTC)]
    assert send(sessions, fake_postmark, a_week_later).sent == 1  # no burst: only what is due now


def _status_attempts(sessions: sessionmaker[Session]) -> list[tuple[JobStatus, int]]:
    with session_scope(sessions) as session:
        return [tuple(r) for r in session.execute(select(EmailJob.status, EmailJob.attempts))]  # type: ignore[misc]


# --- Postmark's answers --------------------------------------------------------------------------


def test_error_300_fails_the_lead_without_suppressing_and_a_429_is_retried(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 2)
    with session_scope(sessions) as session:
        broken = session.scalars(select(Lead).where(Lead.campaign_id == seeded.campaign_id).order_by(Lead.id)).first()
        assert broken is not None
        broken.email = "broken@nodot"  # Postmark refuses it with ErrorCode 300
    fake_postmark.fail_next(429)

    report = send(sessions, fake_postmark)

    assert (report.sent, report.failed, report.retried) == (1, 1, 1)
    assert list(report.reasons) == ["INVALID_RECIPIENT: Invalid 'To' address: 'broken@nodot'."]
    with session_scope(sessions) as session:
        assert session.get_one(Lead, broken.id).status == LeadStatus.FAILED
        assert session.scalars(select(Suppression)).all() == []


def test_an_account_error_stops_the_run_with_every_job_pending(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seed_campaign(sessions, 3)
    fake_postmark.fail_next(422, {"ErrorCode": 412, "Message": "Your account is pending approval."})

    with pytest.raises(MailerAccountError, match=r"\[412\] Your account is pending approval"):
        send(sessions, fake_postmark)

    assert fake_postmark.requests == 1 and fake_postmark.messages == []
    assert set(_status_attempts(sessions)) == {(JobStatus.PENDING, 1)}


def test_a_refused_connection_is_retried_then_every_job_goes_back_to_pending(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seed_campaign(sessions, 2)
    report = send(sessions, fake_postmark, url="http://127.0.0.1:9")  # nothing listens on port 9

    assert (report.sent, report.retried, report.requeued, report.uncertain) == (0, 2, 2, 0)
    assert set(_status_attempts(sessions)) == {(JobStatus.PENDING, 1)}


def test_a_timeout_after_the_request_went_out_is_never_resent_blind(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 2)
    fake_postmark.latency_s = 0.5  # the fake accepts the batch after our client has given up

    report = send(sessions, fake_postmark, timeout=0.2)

    assert (report.sent, report.retried, report.uncertain) == (0, 0, 2)
    assert {status for _, _, status, _ in jobs(sessions, seeded.campaign_id)} == {JobStatus.SENDING}
    fake_postmark.latency_s = 0
    deadline = time.monotonic() + 5
    while len(fake_postmark.messages) < 2 and time.monotonic() < deadline:  # the late batch lands
        time.sleep(0.05)
    # Once the lease has passed, the reconciler finds both at Postmark: recorded, not sent again.
    settled = send(sessions, fake_postmark, datetime.now(UTC) + timedelta(minutes=16))
    assert (settled.reconciled_sent, settled.sent) == (2, 0)
    assert len(fake_postmark.messages) == 2
    assert {status for _, _, status, _ in jobs(sessions, seeded.campaign_id)} == {JobStatus.SENT}


def test_a_200_answer_without_error_code_is_a_success() -> None:
    result = PostmarkMailer._result({"To": "a@b.example", "MessageID": "abc", "Message": "OK"})
    assert (result.sent, result.provider_message_id, result.message_id_header) == (True, "abc", "<abc@mtasv.net>")


@pytest.mark.parametrize("status", [429, 502, 503])
def test_a_proxy_error_without_postmarks_error_code_is_retried_by_its_http_status(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark, status: int
) -> None:
    seed_campaign(sessions, 2)
    fake_postmark.fail_next_from_proxy(status)  # {"message": ...}: postmarker finds no ErrorCode in it
    fake_postmark.fail_next(502, ["bad gateway"])  # a JSON body that is not even an object

    report = send(sessions, fake_postmark)

    assert (report.sent, report.retried) == (2, 2)
    assert set(_status_attempts(sessions)) == {(JobStatus.SENT, 1)}


def test_a_gateway_timeout_is_never_resent_blind(sessions: sessionmaker[Session], fake_postmark: FakePostmark) -> None:
    """A 504 from a gateway in front of Postmark: it stopped waiting, Postmark may have taken the batch."""
    seeded = seed_campaign(sessions, 2)
    fake_postmark.fail_next_from_proxy(504)

    report = send(sessions, fake_postmark)

    assert (report.sent, report.retried, report.uncertain) == (0, 0, 2)
    assert {status for _, _, status, _ in jobs(sessions, seeded.campaign_id)} == {JobStatus.SENDING}
    settled = send(sessions, fake_postmark, datetime.now(UTC) + timedelta(minutes=16))  # asked first, then sent
    assert (settled.reconciled_requeued, settled.sent) == (2, 2)
    assert len(fake_postmark.messages) == 2


def test_a_proxy_4xx_without_postmarks_error_code_stops_the_run_with_every_job_pending(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seed_campaign(sessions, 2)
    fake_postmark.fail_next_from_proxy(403)

    with pytest.raises(MailerAccountError, match="403"):
        send(sessions, fake_postmark)

    assert fake_postmark.requests == 1 and fake_postmark.messages == []
    assert set(_status_attempts(sessions)) == {(JobStatus.PENDING, 1)}


# --- the sender ----------------------------------------------------------------------------------


def _lead_statuses(sessions: sessionmaker[Session]) -> set[LeadStatus]:
    with session_scope(sessions) as session:
        return set(session.scalars(select(Lead.status)))


def _campaign(sessions: sessionmaker[Session], campaign_id: int) -> tuple[CampaignStatus, str | None]:
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        return campaign.status, campaign.paused_reason


def test_a_from_address_postmark_refuses_pauses_its_campaign_and_fails_no_lead(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 3)
    with session_scope(sessions) as session:  # stored before campaigns validated it; Postmark answers 300
        session.get_one(Campaign, seeded.campaign_id).sender_email = "ada,ops@sender.example"

    report = send(sessions, fake_postmark)

    assert (report.sent, report.failed, fake_postmark.messages) == (0, 0, [])
    assert set(_status_attempts(sessions)) == {(JobStatus.PENDING, 1)}
    assert _lead_statuses(sessions) == {LeadStatus.PENDING}
    status, reason = _campaign(sessions, seeded.campaign_id)
    assert status == CampaignStatus.PAUSED
    assert reason is not None and "refused this campaign's sender" in reason and "Invalid 'From' address" in reason


def test_a_refused_sender_pauses_its_campaign_only_and_the_others_still_send(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    # The unsigned campaign comes first and holds more than a batch: it must not keep the other waiting.
    unsigned = seed_campaign(sessions, 60, sender_email="bo@unsigned.example")
    good = seed_campaign(sessions, 2, owner_email="other@tenant.example")
    fake_postmark.sender_signatures = {"ada@sender.example"}  # bo@ answers ErrorCode 400, message by message

    report = send(sessions, fake_postmark)

    assert report.sent == 2 and len(fake_postmark.messages) == 2
    (reason, count), = report.reasons.items()  # in the send asset's metadata
    assert reason == f"sender refused (400); campaign {unsigned.campaign_id} paused" and count == report.requeued > 0
    assert {status for *_, status, _ in jobs(sessions, good.campaign_id)} == {JobStatus.SENT}
    assert {status for *_, status, _ in jobs(sessions, unsigned.campaign_id)} == {JobStatus.PENDING}
    assert _campaign(sessions, unsigned.campaign_id)[0] == CampaignStatus.PAUSED
    assert _campaign(sessions, good.campaign_id)[0] == CampaignStatus.COMPLETED  # all of it went out

    fake_postmark.sender_signatures.add("bo@unsigned.example")  # the operator confirms the signature, resumes
    with session_scope(sessions) as session:
        resume_campaign(session, session.get_one(Campaign, unsigned.campaign_id), now=datetime.now(UTC))
    assert send(sessions, fake_postmark, datetime.now(UTC) + timedelta(days=2), policy=SendPolicy(
        batch_size=100, max_retries=2, backoff_base_s=0.01)).sent == 60


def test_a_refused_account_stops_the_run_with_every_job_pending(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 3)
    out_of_credits = {"ErrorCode": 405, "Message": "Not allowed to send: you have run out of credits."}
    fake_postmark.fail_next(200, [{**out_of_credits, "To": f"lead{n}@c{seeded.campaign_id}.example"}
                                  for n in range(3)])

    with pytest.raises(MailerAccountError, match="405.*run out of credits") as refused:
        send(sessions, fake_postmark)

    assert refused.value.sent == 0
    assert set(_status_attempts(sessions)) == {(JobStatus.PENDING, 1)}
    assert _lead_statuses(sessions) == {LeadStatus.PENDING}
    assert _campaign(sessions, seeded.campaign_id)[0] == CampaignStatus.ACTIVE  # the account, not the campaign


@pytest.mark.parametrize(("code", "message", "outcome"), [
    (300, "Invalid 'To' address: 'broken@nodot'.", SendOutcome.INVALID_RECIPIENT),
    (300, "Invalid 'To' address: ''From'@example.com'.", SendOutcome.INVALID_RECIPIENT),  # a valid lead address
    (300, "Invalid 'From' address: 'Ada <ada,ops@sender.example>'.", SendOutcome.SENDER_REFUSED),
    (300, "Invalid 'Sender' address.", SendOutcome.SENDER_REFUSED),
    (406, "You tried to send to recipient(s) that have been marked as inactive.", SendOutcome.INACTIVE_RECIPIENT),
    (400, "The 'From' address you supplied is not a Sender Signature on your account.", SendOutcome.SENDER_REFUSED),
    (401, "Sender signature not confirmed.", SendOutcome.SENDER_REFUSED),
    (405, "Not allowed to send: you have run out of credits.", SendOutcome.ACCOUNT_REFUSED),
    (412, "Your account is pending approval.", SendOutcome.ACCOUNT_REFUSED),
    (413, "Account may not send.", SendOutcome.ACCOUNT_REFUSED),
    (411, "Forbidden attachment type.", SendOutcome.REJECTED),
])
def test_a_per_message_error_is_the_recipients_only_when_postmark_says_so(
    code: int, message: str, outcome: SendOutcome
) -> None:
    assert PostmarkMailer._result({"ErrorCode": code, "Message": message}).outcome == outcome


def test_campaigns_without_their_own_sender_share_the_default_addresss_cap_and_gap(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    # Two campaigns send from the configured default (CONFIG: team@sender.example), one names it itself.
    seeded = [seed_campaign(sessions, 3, sender_email=""), seed_campaign(sessions, 3, sender_email=""),
              seed_campaign(sessions, 3, sender_email="Team@Sender.example")]
    with session_scope(sessions) as session:
        session.add(SenderLimit(email="team@sender.example", daily_cap=4))

    assert send(sessions, fake_postmark).sent == 4
    assert send(sessions, fake_postmark).sent == 0

    with session_scope(sessions) as session:
        session.execute(update(SenderLimit).values(daily_cap=100))
        for campaign in seeded:
            session.get_one(Campaign, campaign.campaign_id).send_gap_seconds = 600
    now = datetime.now(UTC)
    assert send(sessions, fake_postmark, now).sent == 1  # one for the address, not one per campaign
    assert send(sessions, fake_postmark, now + timedelta(minutes=9)).sent == 0
    with session_scope(sessions) as session:
        assert session.get(SenderPacing, "team@sender.example") is not None


def test_the_file_outbox_finds_a_sent_job_with_the_subject_it_went_out_with(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path / "outbox")
    (sent,) = outbox.send_batch([OutgoingEmail(to="ada@one.example", from_email="Ada <ada@sender.example>",
                                               subject="Zoë's café, Q3", text_body="Hi", metadata={"job_id": "41"})])

    found = outbox.find_sent("41")

    assert found is not None
    assert (found.provider_message_id, found.message_id_header, found.subject) == (
        sent.provider_message_id, sent.message_id_header, "Zoë's café, Q3")
    assert outbox.find_sent("4") is None


def test_releasing_a_claim_leaves_the_jobs_another_run_has_claimed_since(sessions: sessionmaker[Session]) -> None:
    """A run that stops gives its claimed jobs back, but only those still held under its claim: a job the
    reconciler took back and another run claimed again is that run's to send, not PENDING for a third."""
    seeded = seed_campaign(sessions, 2)
    claimed_at = datetime.now(UTC)
    with session_scope(sessions) as session:
        job_ids = claim_due_jobs(session, claimed_at, 2, claimed_at, claimed_at)
    with session_scope(sessions) as session:  # run B claimed the first job again, later
        session.execute(update(EmailJob).where(EmailJob.id == job_ids[0])
                        .values(claimed_at=claimed_at + timedelta(minutes=20)))

    release(sessions, Claim(job_ids, claimed_at), "the run stopped before this batch was sent")

    assert [status for _, _, status, _ in jobs(sessions, seeded.campaign_id)] == [JobStatus.SENDING, JobStatus.PENDING]


def test_a_run_tries_a_campaign_whose_cap_is_spent_once(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    """A run claims batch after batch; a capped campaign is not locked and weighed again for each of them
    (with many small-cap campaigns, that was most of every claim)."""
    capped = seed_campaign(sessions, 3, daily_cap=1)
    seed_campaign(sessions, 5)
    report, budget_reads = _send_counting_budget_reads(sessions, fake_postmark)

    assert report.sent == 6
    assert [status for _, _, status, _ in jobs(sessions, capped.campaign_id)].count(JobStatus.PENDING) == 2
    # The capped campaign twice (its one email, then found spent), the other once for each of its five.
    assert budget_reads == 7


def test_a_run_tries_a_campaign_waiting_on_its_send_gap_once(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    """With a gap, a campaign sends one email a run (the run's clock stands still); the run's later claims
    do not lock and weigh it again."""
    gapped = seed_campaign(sessions, 3, send_gap_seconds=60, sender_email="gap@sender.example")
    seed_campaign(sessions, 5)
    report, budget_reads = _send_counting_budget_reads(sessions, fake_postmark)

    assert report.sent == 6
    assert [status for _, _, status, _ in jobs(sessions, gapped.campaign_id)].count(JobStatus.PENDING) == 2
    # The gapped campaign twice (its one email, then found waiting), the other once for each of its five.
    assert budget_reads == 7


def _send_counting_budget_reads(sessions: sessionmaker[Session], fake: FakePostmark) -> tuple[DispatchReport, int]:
    """A run of one-email batches, and how many times it read a campaign's daily budget (once a try)."""
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "send_counts" in statement and statement.lstrip().upper().startswith("SELECT"):
            reads.append(statement)

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        return send(sessions, fake, policy=SendPolicy(batch_size=1, concurrency=1)), len(reads)
    finally:
        event.remove(engine, "before_cursor_execute", count)
