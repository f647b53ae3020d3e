"""The `email_sends` asset sending through the real `postmarker` client to the local Postmark fake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from dagster import DagsterInstance, ExecuteInProcessResult, instance_for_test, materialize
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.assets.sends import email_sends, send_partitions
from outreach_pipeline.core import delivery
from outreach_pipeline.core.auth import request_magic_link, verify_magic_link
from outreach_pipeline.core.campaigns import CampaignCreate, StepSpec, create_campaign, launch_campaign, pause_campaign
from outreach_pipeline.core.leads import import_leads_csv
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import Campaign, EmailJob, JobStatus, Lead, LeadStatus, Suppression
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.settings import Settings
from tests.fakes.postmark import FakePostmark
from tests.fixtures import PROVIDER_FIXTURES, latest_outbox_token

LEADS = PROVIDER_FIXTURES / "leads"
HUBSPOT_STORED = [  # the 4 valid rows of hubspot_export.csv, sorted
    "elena.petrova@vostok-soft.com",
    "fatima.zahra@atlasbuild.ma",
    "info@acme-widgets.com",
    "jwhitfield@meridianhealth.org",
]
INBOUND_DOMAIN = "inbound.sender.example"  # provider_settings' postmark_inbound_domain
UNSUBSCRIBE_BASE = "https://outreach.example/unsubscribe/"  # provider_settings' app_base_url
BOUNCED = "jwhitfield@meridianhealth.org"
ACCOUNT_REFUSED = ("The mail provider refused the account; 0 email(s) went out before that, every other job is still "
                   "pending: ")


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@dataclass(frozen=True)
class JobRow:
    email: str
    step: int
    status: JobStatus
    attempts: int
    last_error: str | None
    provider_message_id: str | None


@dataclass
class Launched:
    """A 2-step ACTIVE campaign with the 4 HubSpot leads, each with a step-1 job due an hour ago."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    owner_id: int
    campaign_id: int

    def send(self, instance: DagsterInstance, raise_on_error: bool = True) -> ExecuteInProcessResult:
        key = send_partitions.get_last_partition_key()
        assert key is not None
        return materialize([email_sends], partition_key=key, instance=instance,
                           resources=resources_from_settings(self.settings), raise_on_error=raise_on_error)

    def jobs(self) -> list[JobRow]:
        with session_scope(self.sessions) as session:
            rows = session.execute(
                select(Lead.email, EmailJob.step_number, EmailJob.status, EmailJob.attempts, EmailJob.last_error,
                       EmailJob.provider_message_id)
                .join(Lead, Lead.id == EmailJob.lead_id)
                .where(EmailJob.campaign_id == self.campaign_id)
                .order_by(EmailJob.step_number, Lead.email)
            ).all()
            return [JobRow(*row) for row in rows]

    def leads(self) -> dict[str, tuple[LeadStatus, str, int]]:
        """email -> (status, reply token, id)"""
        with session_scope(self.sessions) as session:
            return {lead.email: (lead.status, lead.reply_token, lead.id) for lead in
                    session.scalars(select(Lead).where(Lead.campaign_id == self.campaign_id))}


def _metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    assert result.success
    (materialization,) = result.asset_materializations_for_node("email_sends")
    return {key: value.value for key, value in materialization.metadata.items()}


def _counts(metadata: dict[str, Any]) -> dict[str, int]:
    return {k: metadata[k] for k in ("claimed", "sent", "failed", "skipped", "requeued", "retried", "batches")}


def _headers(message: dict[str, Any]) -> dict[str, str]:
    return {header["Name"]: header["Value"] for header in message.get("Headers", [])}


def _launch(settings: Settings, **campaign_settings: Any) -> Launched:
    """Sign in by magic link, create the campaign, import the HubSpot file, save both templates, launch."""
    # Two quick retries of a failing batch (a real run waits seconds between them).
    settings = settings.model_copy(update={"send_max_retries": 2, "send_backoff_base_s": 0.01})
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    outbox = settings.data_dir / "sign-in-outbox"
    with session_scope(sessions) as session:
        request_magic_link(session, FileOutbox(outbox), "operator@company.example",
                           frontend_url=settings.frontend_url, from_email=settings.from_email)
    with session_scope(sessions) as session:
        owner_id = verify_magic_link(session, latest_outbox_token(outbox)).id
        campaign = create_campaign(session, owner_id, CampaignCreate(
            name="Freight analytics", pitch="We cut freight costs by 12%.", sender_name="Ada",
            sender_email="ada@sender.example", steps=[StepSpec(), StepSpec(delay_days=2)], **campaign_settings,
        ))
        campaign_id = campaign.id
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        with (LEADS / "hubspot_export.csv").open("rb") as stream:
            assert import_leads_csv(session, campaign, stream, source="test").stored == 4
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        save_template(session, campaign, TemplateInput(
            step_number=1, subject="Freight costs at {{company}}",
            body="Hi {{first_name|there}},\n\nWe cut freight costs by 12%.\n\nAda"))
        save_template(session, campaign, TemplateInput(
            step_number=2, subject="Following up", body="Hi {{first_name|there}}, any thoughts?\n\nAda"))
        # Launched an hour ago, so the step-1 jobs are due before the last closed send window ends.
        assert launch_campaign(session, campaign, now=datetime.now(UTC) - timedelta(hours=1)) == 4
    return Launched(settings, engine, sessions, owner_id, campaign_id)


@pytest.fixture
def launched(provider_settings: Settings) -> Iterator[Launched]:
    """A 2-step campaign with default settings (sends all day, every day, up to 500 a day), launched."""
    app = _launch(provider_settings)
    try:
        yield app
    finally:
        app.engine.dispose()


def test_sends_one_email_per_lead_with_reply_and_unsubscribe_headers_once(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    metadata = _metadata(launched.send(instance))

    assert _counts(metadata) == {"claimed": 4, "sent": 4, "failed": 0, "skipped": 0, "requeued": 0, "retried": 0, "batches": 1}
    assert metadata["mailer"] == "postmark"
    assert fake_postmark.batches == [4]
    messages = fake_postmark.messages
    assert sorted(m["To"] for m in messages) == HUBSPOT_STORED
    leads = launched.leads()
    jobs = {job.email: job for job in launched.jobs() if job.step == 1}
    with session_scope(launched.sessions) as session:
        job_ids = {email: session.scalar(select(EmailJob.id).where(EmailJob.lead_id == lead_id,
                                                                    EmailJob.step_number == 1))
                   for email, (_, _, lead_id) in leads.items()}
    for message in messages:
        lead_status, token, _ = leads[message["To"]]
        assert message["From"] == "Ada <ada@sender.example>"
        assert message["ReplyTo"] == f"reply+{token}@{INBOUND_DOMAIN}"
        headers = _headers(message)
        assert headers["List-Unsubscribe"] == f"<{UNSUBSCRIBE_BASE}{token}>"
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Metadata"] == {"job_id": str(job_ids[message["To"]]),
                                       "campaign_id": str(launched.campaign_id), "step": "1"}
        assert message["Tag"] == f"campaign-{launched.campaign_id}"
        assert message["MessageStream"] == "outbound"
        assert lead_status == LeadStatus.CONTACTED
        assert jobs[message["To"]].status == JobStatus.SENT
        assert jobs[message["To"]].provider_message_id == message["MessageID"]
    elena = fake_postmark.messages_to("elena.petrova@vostok-soft.com")[0]
    assert elena["Subject"] == "Freight costs at Vostok Soft"
    assert elena["TextBody"].startswith("Hi Elena,\n\nWe cut freight costs by 12%.")
    assert fake_postmark.messages_to("info@acme-widgets.com")[0]["TextBody"].startswith("Hi there,")
    # Each send queued step 2, two days on.
    assert [(job.email, job.status) for job in launched.jobs() if job.step == 2] == [
        (email, JobStatus.PENDING) for email in HUBSPOT_STORED]

    # Re-materialising the same window sends nothing more.
    again = _metadata(launched.send(instance))

    assert _counts(again) == {"claimed": 0, "sent": 0, "failed": 0, "skipped": 0, "requeued": 0, "retried": 0, "batches": 0}
    assert len(fake_postmark.messages) == 4


def test_a_send_run_spread_over_processes_sends_each_email_once_and_says_what_each_sent(
    provider_settings: Settings, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    app = _launch(provider_settings.model_copy(update={"send_processes": 2, "send_batch_size": 1}))
    try:
        metadata = _metadata(app.send(instance))
    finally:
        app.engine.dispose()

    assert _counts(metadata) == {"claimed": 4, "sent": 4, "failed": 0, "skipped": 0, "requeued": 0, "retried": 0,
                                 "batches": 4}
    assert sorted(m["To"] for m in fake_postmark.messages) == HUBSPOT_STORED
    if app.engine.dialect.name == "postgresql":
        assert len(metadata["sent_per_process"]) == 2 and sum(metadata["sent_per_process"]) == 4
    else:  # SQLite has one writer at a time: the run stays in its own process
        assert "sent_per_process" not in metadata


def test_a_refused_server_token_fails_the_run_and_leaves_every_job_pending(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    fake_postmark.server_token = "rotated-server-token"  # the configured token is no longer valid

    result = launched.send(instance, raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node("email_sends")
    assert failure is not None and failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    assert description.startswith(ACCOUNT_REFUSED)
    assert "[10]" in description and "Server Token you provided" in description
    assert result.asset_materializations_for_node("email_sends") == []
    assert fake_postmark.messages == []
    jobs = launched.jobs()
    assert [(job.email, job.status) for job in jobs] == [(email, JobStatus.PENDING) for email in HUBSPOT_STORED]
    assert all(job.last_error and job.last_error.startswith("provider refused the account: ") for job in jobs)
    assert {status for status, _, _ in launched.leads().values()} == {LeadStatus.PENDING}


def test_a_provider_outage_requeues_the_batch_and_a_later_run_sends_each_email_once(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    fake_postmark.fail_next(500, times=3)  # the first try and both retries

    outage = _metadata(launched.send(instance))

    assert _counts(outage) == {"claimed": 4, "sent": 0, "failed": 0, "skipped": 0, "requeued": 4, "retried": 2,
                               "batches": 1}
    assert fake_postmark.requests == 3
    assert fake_postmark.messages == []
    jobs = launched.jobs()
    assert [(job.email, job.status, job.attempts) for job in jobs] == [
        (email, JobStatus.PENDING, 1) for email in HUBSPOT_STORED]
    assert all(job.last_error and job.last_error.startswith("provider unavailable: ") for job in jobs)

    # A gateway answering plain text instead of Postmark's JSON is an outage too.
    fake_postmark.fail_next(503, "Service Unavailable", times=3)
    gateway = _metadata(launched.send(instance))

    assert _counts(gateway) == {"claimed": 4, "sent": 0, "failed": 0, "skipped": 0, "requeued": 4, "retried": 2,
                                "batches": 1}
    assert [(job.status, job.attempts) for job in launched.jobs()] == [(JobStatus.PENDING, 2)] * 4

    later = _metadata(launched.send(instance))

    assert _counts(later) == {"claimed": 4, "sent": 4, "failed": 0, "skipped": 0, "requeued": 0, "retried": 0, "batches": 1}
    assert [len(fake_postmark.messages_to(email)) for email in HUBSPOT_STORED] == [1, 1, 1, 1]
    assert [(job.email, job.status, job.attempts, job.last_error) for job in launched.jobs() if job.step == 1] == [
        (email, JobStatus.SENT, 3, None) for email in HUBSPOT_STORED]
    assert _counts(_metadata(launched.send(instance)))["sent"] == 0
    assert len(fake_postmark.messages) == 4


def test_an_inactive_recipient_fails_its_job_and_lead_and_is_suppressed(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    fake_postmark.inactive_recipients.add(BOUNCED)

    metadata = _metadata(launched.send(instance))

    assert _counts(metadata) == {"claimed": 4, "sent": 3, "failed": 1, "skipped": 0, "requeued": 0, "retried": 0, "batches": 1}
    assert sorted(m["To"] for m in fake_postmark.messages) == [e for e in HUBSPOT_STORED if e != BOUNCED]
    (reason,) = metadata["reasons"]
    assert reason.startswith("INACTIVE_RECIPIENT: You tried to send to recipient(s) that have been marked as inactive.")
    assert metadata["reasons"] == {reason: 1}
    step1 = {job.email: job for job in launched.jobs() if job.step == 1}
    assert (step1[BOUNCED].status, step1[BOUNCED].last_error, step1[BOUNCED].provider_message_id) == (
        JobStatus.FAILED, reason, None)
    assert {e: j.status for e, j in step1.items() if e != BOUNCED} == {
        e: JobStatus.SENT for e in HUBSPOT_STORED if e != BOUNCED}
    leads = launched.leads()
    assert leads[BOUNCED][0] == LeadStatus.FAILED
    with session_scope(launched.sessions) as session:
        suppressed = session.execute(select(Suppression.owner_id, Suppression.email, Suppression.reason)).all()
    assert [tuple(row) for row in suppressed] == [(launched.owner_id, BOUNCED, "inactive")]
    # No follow-up is queued for the dead address.
    assert [job.email for job in launched.jobs() if job.step == 2] == [e for e in HUBSPOT_STORED if e != BOUNCED]


def test_a_paused_campaign_sends_nothing(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    with session_scope(launched.sessions) as session:
        pause_campaign(session, session.get_one(Campaign, launched.campaign_id))

    metadata = _metadata(launched.send(instance))

    assert _counts(metadata) == {"claimed": 0, "sent": 0, "failed": 0, "skipped": 0, "requeued": 0, "retried": 0, "batches": 0}
    assert fake_postmark.requests == 0
    assert [(job.email, job.status, job.attempts) for job in launched.jobs()] == [
        (email, JobStatus.PENDING, 0) for email in HUBSPOT_STORED]


@pytest.mark.parametrize("crash_point", ["before-the-provider-call", "after-the-provider-accepted"])
def test_jobs_left_sending_by_a_crashed_run_are_reconciled_never_sent_twice_nor_lost(
    launched: Launched, fake_postmark: FakePostmark, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch,
    crash_point: str,
) -> None:
    """DESIGN.md, Send: "A job left in SENDING by a crashed run is reconciled, never sent twice and never lost"."""

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the run worker was killed")

    target = "prepare_batch" if crash_point == "before-the-provider-call" else "record_results"
    with monkeypatch.context() as patch:
        patch.setattr(delivery, target, crash)
        crashed = launched.send(instance, raise_on_error=False)
    assert not crashed.success
    assert {job.status for job in launched.jobs()} == {JobStatus.SENDING}
    accepted_before = 0 if crash_point == "before-the-provider-call" else 4
    assert len(fake_postmark.messages) == accepted_before

    # An hour later (long past any claim a live sender could still hold), the schedule runs again.
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=1), tick=True):
        later = launched.send(instance, raise_on_error=False)

    assert later.success, later.failure_data_for_node("email_sends")
    assert [len(fake_postmark.messages_to(email)) for email in HUBSPOT_STORED] == [1, 1, 1, 1]
    message_ids = {m["To"]: m["MessageID"] for m in fake_postmark.messages}
    assert [(job.email, job.status, job.provider_message_id) for job in launched.jobs() if job.step == 1] == [
        (email, JobStatus.SENT, message_ids[email]) for email in HUBSPOT_STORED]


def test_the_daily_cap_limits_how_many_emails_a_campaign_sends_in_a_day(
    provider_settings: Settings, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    """DESIGN.md: a campaign has a daily cap; the send asset must not send more than that in a day."""
    capped = _launch(provider_settings, daily_cap=2)
    try:
        first = _metadata(capped.send(instance))
        second = _metadata(capped.send(instance))
        statuses = [job.status for job in capped.jobs() if job.step == 1]
    finally:
        capped.engine.dispose()

    assert (first["sent"], second["sent"]) == (2, 0)
    assert len(fake_postmark.messages) == 2
    assert sorted(statuses) == [JobStatus.PENDING, JobStatus.PENDING, JobStatus.SENT, JobStatus.SENT]


def test_nothing_is_sent_outside_the_campaign_sending_window(
    provider_settings: Settings, fake_postmark: FakePostmark, instance: DagsterInstance
) -> None:
    """DESIGN.md: a campaign has a sending window in its timezone; outside it, due jobs wait."""
    now = datetime.now(UTC)
    start = (now.hour + 6) % 24  # a one-hour window six hours away from now
    closed = _launch(provider_settings, timezone="UTC", window_start_hour=start, window_end_hour=start + 1)
    try:
        metadata = _metadata(closed.send(instance))
        jobs = closed.jobs()
    finally:
        closed.engine.dispose()

    assert metadata["sent"] == 0
    assert fake_postmark.messages == []
    assert [(job.email, job.status) for job in jobs] == [(email, JobStatus.PENDING) for email in HUBSPOT_STORED]
