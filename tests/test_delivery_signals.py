"""Stop signals: each Postmark bounce type, complaints, subscription changes, opens and clicks, and the
hard-bounce guard that pauses a campaign (an asset check on `email_sends`, run by real Dagster)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from email.utils import parseaddr
from typing import Any

import pytest
from dagster import instance_for_test, materialize
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.assets.sends import email_sends, send_partitions
from outreach_pipeline.core.bounce_guard import pause_bouncing_campaigns
from outreach_pipeline.core.campaigns import (
    UNRENDERED,
    CampaignCreate,
    StepSpec,
    campaign_counts,
    campaign_stats,
    create_campaign,
    fold_campaign_counts,
    pause_campaign,
    resume_campaign,
)
from outreach_pipeline.core.events import (
    EventResult,
    handle_postmark_event,
    handle_postmark_events,
    unsubscribe_by_token,
)
from outreach_pipeline.core.leads import add_leads, import_leads_csv
from outreach_pipeline.core.suppression import is_suppressed, suppress, suppress_many
from outreach_pipeline.db.models import (
    Campaign,
    CampaignCount,
    CampaignStatus,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    Suppression,
    Template,
    User,
    WebhookEvent,
)
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.send_checks import hard_bounce_rate
from outreach_pipeline.settings import Settings
from tests.fakes.postmark import FakePostmark
from tests.test_delivery_processes import seed_campaign
from tests.test_delivery_rules import send
from tests.fixtures import PROVIDER_FIXTURES

FIXTURES = PROVIDER_FIXTURES / "postmark"


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _payload(name: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads((FIXTURES / f"{name}.json").read_text()), **changes}


def _sent(sessions: sessionmaker[Session], fake: FakePostmark, leads: int) -> list[tuple[int, int, str]]:
    """A two-step campaign whose first emails went out: (lead id, first job id, provider message id)."""
    seeded = seed_campaign(sessions, leads, steps=[StepSpec(), StepSpec(delay_days=3)])
    send(sessions, fake)
    with session_scope(sessions) as session:
        return [tuple(r) for r in session.execute(  # type: ignore[misc]
            select(EmailJob.lead_id, EmailJob.id, EmailJob.provider_message_id)
            .where(EmailJob.campaign_id == seeded.campaign_id, EmailJob.step_number == 1).order_by(EmailJob.id))]


def _event(sessions: sessionmaker[Session], record: str, message_id: str, n: int, **changes: Any) -> str:
    with session_scope(sessions) as session:
        return handle_postmark_event(session, _payload(record, MessageID=message_id, ID=n, **changes), "Bounce").outcome


def _lead(sessions: sessionmaker[Session], lead_id: int) -> tuple[LeadStatus, bool, list[JobStatus]]:
    with session_scope(sessions) as session:
        return _lead_in(session, lead_id)


def _lead_in(session: Session, lead_id: int) -> tuple[LeadStatus, bool, list[JobStatus]]:
    """(status, address suppressed for the owner, statuses of the follow-up)."""
    lead = session.get_one(Lead, lead_id)
    follow_up = session.scalars(select(EmailJob.status).where(EmailJob.lead_id == lead_id,
                                                              EmailJob.step_number == 2)).all()
    return lead.status, is_suppressed(session, lead.campaign.owner_id, lead.email_key), list(follow_up)


@pytest.mark.parametrize("bounce_type", ["HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"])
def test_a_hard_bounce_marks_the_lead_bounced_and_suppresses_it(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark, bounce_type: str
) -> None:
    (lead_id, _, message_id), (other, _, _) = _sent(sessions, fake_postmark, 2)
    _event(sessions, "bounce", message_id, 1, Type=bounce_type)
    assert _lead(sessions, lead_id) == (LeadStatus.BOUNCED, True, [JobStatus.SKIPPED])
    assert _lead(sessions, other) == (LeadStatus.CONTACTED, False, [JobStatus.PENDING])


@pytest.mark.parametrize("bounce_type", ["SoftBounce", "Transient", "DnsError"])
def test_soft_bounces_delay_the_sequence_and_the_third_suppresses(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark, bounce_type: str
) -> None:
    ((lead_id, _, message_id),) = _sent(sessions, fake_postmark, 1)
    with session_scope(sessions) as session:
        due = session.scalars(select(EmailJob.due_at).where(EmailJob.lead_id == lead_id, EmailJob.step_number == 2)).one()

    assert _event(sessions, "bounce", message_id, 1, Type=bounce_type) == f"{bounce_type} bounce recorded"
    assert _lead(sessions, lead_id) == (LeadStatus.CONTACTED, False, [JobStatus.PENDING])
    with session_scope(sessions) as session:
        later = session.scalars(select(EmailJob.due_at).where(EmailJob.lead_id == lead_id, EmailJob.step_number == 2)).one()
    assert (later - due).days == 1  # retried later

    _event(sessions, "bounce", message_id, 2, Type=bounce_type)
    assert _lead(sessions, lead_id)[:2] == (LeadStatus.CONTACTED, False)
    _event(sessions, "bounce", message_id, 3, Type=bounce_type)
    assert _lead(sessions, lead_id) == (LeadStatus.BOUNCED, True, [JobStatus.SKIPPED])


def test_complaints_and_subscription_changes_suppress_and_lift(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    (complainer, _, complained), (changed, _, change_id) = _sent(sessions, fake_postmark, 2)
    _event(sessions, "spam_complaint", complained, 7)
    assert _lead(sessions, complainer) == (LeadStatus.UNSUBSCRIBED, True, [JobStatus.SKIPPED])

    _event(sessions, "subscription_change", change_id, 0, SuppressSending=True, ChangedAt="2026-11-24T10:00:00Z")
    assert _lead(sessions, changed)[1:] == (True, [JobStatus.SKIPPED])
    # Reactivated at Postmark: the suppression that mirrored Postmark's is lifted (a new send needs a new job).
    _event(sessions, "subscription_change", change_id, 0, SuppressSending=False, ChangedAt="2026-11-24T11:00:00Z")
    assert _lead(sessions, changed)[1] is False


def test_an_address_too_long_for_the_suppression_list_is_refused_never_stored_cut_short(
    sessions: sessionmaker[Session]
) -> None:
    too_long = "a" * 330 + "@example.com"  # the column holds 320 characters
    with session_scope(sessions) as session:
        owner = User(email="owner@company.example")
        session.add(owner)
        session.flush()
        owner_id = owner.id
    try:
        with session_scope(sessions) as session:
            suppress_many(session, [(owner_id, too_long, "manual")])
    except DBAPIError:
        pass  # PostgreSQL refuses it: the value is too long
    with session_scope(sessions) as session:
        stored = session.scalars(select(Suppression.email)).all()
    assert stored in ([], [too_long])  # SQLite keeps any length


def test_a_reactivation_at_the_provider_lifts_only_what_the_provider_suppressed(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    """SuppressSending false undoes the provider's own suppression, never ours: a spam complaint, an unsubscribe
    through our link, a manual entry, nor a complaint that came after the provider's suppression."""
    sent = _sent(sessions, fake_postmark, 5)
    (_, _, complained), (unsubscribed, _, _), (manual, _, _), (_, _, provider), (_, _, both) = sent
    _event(sessions, "spam_complaint", complained, 1)
    for message_id in (provider, both):
        _event(sessions, "subscription_change", message_id, 0, SuppressSending=True, SuppressionReason="HardBounce",
               ChangedAt="2026-11-24T10:00:00Z")
    _event(sessions, "spam_complaint", both, 2)
    with session_scope(sessions) as session:
        unsubscribe_by_token(session, session.get_one(Lead, unsubscribed).reply_token)
        lead = session.get_one(Lead, manual)
        suppress(session, lead.campaign.owner_id, lead.email_key, "manual")
        leads = [session.get_one(Lead, lead_id) for lead_id, _, _ in sent]
        addresses = [(lead.campaign.owner_id, lead.email_key) for lead in leads]
    reactivated = [(_payload("subscription_change", MessageID=message_id, SuppressSending=False,
                             SuppressionReason="HardBounce", ChangedAt="2026-11-24T11:00:00Z"), "SubscriptionChange")
                   for _, _, message_id in sent]

    together, singly = _together_and_singly(sessions, reactivated, lambda session: [
        is_suppressed(session, owner, address) for owner, address in addresses])

    assert together == singly
    assert together[1] == [True, True, True, False, True]
    assert together[0][3] == f"suppression of lead {sent[3][0]} lifted"
    assert together[0][0] == f"lead {sent[0][0]} had no provider suppression to lift"


def _echoed(fake: FakePostmark, message_id: str) -> dict[str, Any]:
    """What Postmark echoes in a stop signal of a message it accepted: the Metadata we sent it with, and its
    recipient."""
    (message,) = [m for m in fake.messages if m["MessageID"] == message_id]
    return {"Metadata": message["Metadata"], "Email": parseaddr(message["To"])[1],
            "Recipient": parseaddr(message["To"])[1]}


def _unrecorded(sessions: sessionmaker[Session], sent: list[tuple[int, int, str]]) -> None:
    """The provider accepted these first emails but we have not recorded it: SENDING, no message id (a run
    killed after the send, awaiting reconciliation; or the moment before our commit)."""
    with session_scope(sessions) as session:
        session.execute(update(EmailJob).where(EmailJob.id.in_([job for _, job, _ in sent]))
                        .values(status=JobStatus.SENDING, provider_message_id=None))


def _recorded(sessions: sessionmaker[Session], sent: list[tuple[int, int, str]]) -> None:
    with session_scope(sessions) as session:
        for _, job, message_id in sent:
            session.execute(update(EmailJob).where(EmailJob.id == job)
                            .values(status=JobStatus.SENT, provider_message_id=message_id))


def test_a_stop_signal_for_an_email_not_recorded_yet_finds_its_job_by_the_metadata_job_id(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    sent = _sent(sessions, fake_postmark, 4)
    _unrecorded(sessions, sent)
    (bounced, _, bounce_id), (complained, _, complaint_id), (changed, _, change_id), (_, _, other_id) = sent
    batch = [
        ({**_payload("bounce", MessageID=bounce_id, ID=1), **_echoed(fake_postmark, bounce_id)}, "Bounce"),
        ({**_payload("spam_complaint", MessageID=complaint_id, ID=2), **_echoed(fake_postmark, complaint_id)},
         "SpamComplaint"),
        ({**_payload("subscription_change", MessageID=change_id), **_echoed(fake_postmark, change_id)},
         "SubscriptionChange"),
        # Our job id for another address (a payload not of that message): nobody is stopped.
        ({**_payload("bounce", MessageID=other_id, ID=4), "Metadata": _echoed(fake_postmark, other_id)["Metadata"]},
         "Bounce"),
    ]

    together, singly = _together_and_singly(sessions, batch, lambda session: [
        _lead_in(session, lead) for lead, _, _ in sent])

    assert together == singly
    assert together[1] == [(LeadStatus.BOUNCED, True, [JobStatus.SKIPPED]),
                           (LeadStatus.UNSUBSCRIBED, True, [JobStatus.SKIPPED]),
                           (LeadStatus.CONTACTED, True, [JobStatus.SKIPPED]),
                           (LeadStatus.CONTACTED, False, [JobStatus.PENDING])]
    assert together[0][0].startswith(f"lead {bounced} bounced (HardBounce)")
    assert together[0][1:] == [f"lead {complained} complained; address suppressed",
                               f"lead {changed} suppressed by the provider (HardBounce); 1 pending job(s) skipped",
                               "bounce for a message we did not send"]


def test_a_stop_signal_kept_unmatched_acts_when_replayed_after_its_email_is_recorded(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    """With no job id to go by (the fixtures' Metadata has none), an event for an email not recorded yet is
    kept for review; its replay once the email is recorded acts, once, alone or in a batch."""
    sent = _sent(sessions, fake_postmark, 2)
    (first, _, first_id), (second, _, second_id) = sent
    _unrecorded(sessions, sent)
    bounce = _payload("bounce", MessageID=first_id, ID=1, Type="HardBounce")
    complaint = _payload("spam_complaint", MessageID=second_id, ID=2)
    with session_scope(sessions) as session:
        kept = handle_postmark_events(session, [(bounce, "Bounce"), (complaint, "SpamComplaint")])
    assert [(r.duplicate, r.outcome) for r in kept if isinstance(r, EventResult)] == [
        (False, "bounce for a message we did not send"), (False, "complaint for a message we did not send")]
    assert _lead(sessions, first) == (LeadStatus.CONTACTED, False, [JobStatus.PENDING])

    _recorded(sessions, sent)  # the commit, or the reconciler, records the emails
    with session_scope(sessions) as session:
        alone = handle_postmark_event(session, bounce, "Bounce")
        batch = handle_postmark_events(session, [(complaint, "SpamComplaint"), (bounce, "Bounce")])
    assert not alone.duplicate and alone.outcome.startswith(f"lead {first} bounced (HardBounce)")
    assert [(r.duplicate, r.outcome) for r in batch if isinstance(r, EventResult)] == [
        (False, f"lead {second} complained; address suppressed"), (True, "already processed")]
    assert _lead(sessions, first) == (LeadStatus.BOUNCED, True, [JobStatus.SKIPPED])
    assert _lead(sessions, second) == (LeadStatus.UNSUBSCRIBED, True, [JobStatus.SKIPPED])

    with session_scope(sessions) as session:  # acted on once: now a plain replay, and each stored once
        assert handle_postmark_event(session, complaint, "SpamComplaint").duplicate
        rows = session.execute(select(WebhookEvent.id, WebhookEvent.lead_id).order_by(WebhookEvent.id)).all()
    assert [lead for _, lead in rows] == [first, second]


def test_delivery_open_and_click_are_recorded_against_the_job(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    ((_, job_id, message_id),) = _sent(sessions, fake_postmark, 1)
    for record in ("delivery", "open", "click"):
        assert _event(sessions, record, message_id, 0).startswith(f"job {job_id} ")
    with session_scope(sessions) as session:
        job = session.get_one(EmailJob, job_id)
        assert None not in (job.delivered_at, job.opened_at, job.clicked_at)


def _state(session: Session) -> dict[str, Any]:
    """What events change, without the ids and clock readings that differ between two runs."""
    return {
        "events": sorted(session.execute(select(
            WebhookEvent.record_type, WebhookEvent.provider_id, WebhookEvent.job_id, WebhookEvent.lead_id,
            WebhookEvent.outcome)).tuples().all()),
        "jobs": session.execute(select(
            EmailJob.id, EmailJob.status, EmailJob.due_at, EmailJob.delivered_at.is_not(None),
            EmailJob.opened_at.is_not(None), EmailJob.clicked_at.is_not(None)).order_by(EmailJob.id)).tuples().all(),
        "leads": session.execute(select(Lead.id, Lead.status).order_by(Lead.id)).tuples().all(),
        "suppressed": sorted(session.execute(select(Suppression.owner_id, Suppression.email, Suppression.reason))
                             .tuples().all()),
    }


def test_a_batch_of_events_ends_exactly_as_the_same_events_one_by_one(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    """The webhook writer hands whole batches to `handle_postmark_events`: deliveries, opens and clicks share
    their statements, the rest go one by one. Same results and same database as handling them singly."""
    (a, job_a, msg_a), (b, _, msg_b), (c, job_c, msg_c), (d, _, msg_d) = _sent(sessions, fake_postmark, 4)
    earlier = _payload("delivery", MessageID=msg_d)
    with session_scope(sessions) as session:
        token_b = session.get_one(Lead, b).reply_token
    _event(sessions, "delivery", msg_d, 0)  # stored before the batch: a replay in it
    opened = {**_payload("open"), "MessageID": msg_a}
    batch = [
        (_payload("delivery", MessageID=msg_a), "Delivery"),
        (_payload("delivery", MessageID=msg_a), "Delivery"),  # the same event twice in one batch
        ({**opened, "ReceivedAt": "2026-11-24T10:00:00Z"}, "Open"),
        ({**opened, "ReceivedAt": "2026-11-24T11:00:00Z"}, "Open"),  # a second open is a distinct event
        ({**opened, "ReceivedAt": "2026-11-24T10:00:00Z"}, "Open"),
        (_payload("click", MessageID=msg_b), "Click"),
        (_payload("delivery", MessageID="not-ours"), "Delivery"),
        (_payload("bounce", MessageID=msg_c, ID=91, Type="HardBounce"), "Bounce"),
        (_payload("delivery", MessageID=msg_c), "Delivery"),  # the bounced lead's delivery still counts
        (_payload("bounce", MessageID=msg_d, ID=92, Type="Transient"), "Bounce"),
        (_payload("bounce", MessageID=msg_d, ID=93, Type="Transient"), "Bounce"),  # the same lead: after the rest
        (_payload("bounce", MessageID=msg_d, ID=94, Type="Transient"), "Bounce"),  # the third stops the lead
        (earlier, "Delivery"),
        ({**_payload("delivery"), "MessageID": None}, "Delivery"),  # not an event: refused at its place
        (_payload("inbound", MessageID="reply-b", MailboxHash=token_b), "Inbound"),
    ]

    def run(handle: Any) -> tuple[list[Any], dict[str, Any]]:
        with sessions() as session:
            results = handle(session)
            seen = [(r.duplicate, r.outcome) if isinstance(r, EventResult) else type(r) for r in results]
            state = _state(session)
            session.rollback()  # the other way starts from the same database
            return seen, state

    def singly(session: Session) -> list[Any]:
        results: list[Any] = []
        for payload, record_type in batch:
            try:
                results.append(handle_postmark_event(session, payload, record_type))
            except ValueError as error:
                results.append(error)
        return results

    together, together_state = run(lambda session: handle_postmark_events(session, batch))
    one_by_one, one_by_one_state = run(singly)

    assert together == one_by_one
    assert together_state == one_by_one_state
    assert together[:2] == [(False, f"job {job_a} delivered"), (True, "already processed")]
    assert [t[0] for t in together[2:5]] == [False, False, True]
    assert together[7][1].startswith(f"lead {c} bounced (HardBounce)")
    assert together[8] == (False, f"job {job_c} delivered")
    assert together[10] == (False, "Transient bounce recorded")
    assert together[11][1].startswith(f"lead {d} soft-bounced 3 times")
    assert together[12] == (True, "already processed") and together[13] is ValueError
    assert together[14][1].startswith(f"lead {b} replied")
    jobs = {row[0]: row[3:] for row in together_state["jobs"]}
    assert jobs[job_a] == (True, True, False) and jobs[job_c] == (True, False, False)
    assert dict(together_state["leads"])[c] == LeadStatus.BOUNCED
    statuses = dict(together_state["leads"])
    assert (statuses[a], statuses[b], statuses[d]) == (LeadStatus.CONTACTED, LeadStatus.REPLIED, LeadStatus.BOUNCED)


def _together_and_singly(sessions: sessionmaker[Session], batch: list[tuple[dict[str, Any], str]],
                         probe: Any) -> tuple[Any, Any]:
    """(outcomes, probe) for the batch in one call, and for its events one by one with the session cleared
    between them, as separate webhook requests would find it; both rolled back after."""
    runs = []
    for together in (True, False):
        with sessions() as session:
            if together:
                results = handle_postmark_events(session, batch)
            else:
                results = []
                for payload, record_type in batch:
                    results.append(handle_postmark_event(session, payload, record_type))
                    session.flush()
                    session.expunge_all()
            runs.append(([r.outcome for r in results if isinstance(r, EventResult)], probe(session)))
            session.rollback()
    return runs[0], runs[1]


def test_in_a_batch_a_lift_and_a_bounce_of_one_address_and_a_reply_before_a_complaint_keep_their_order(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    ((a, _, msg_a),) = _sent(sessions, fake_postmark, 1)
    ((b, _, msg_b),) = _sent(sessions, fake_postmark, 1)  # another campaign of the owner, the same address
    with session_scope(sessions) as session:
        first, second = session.get_one(Lead, a), session.get_one(Lead, b)
        session.execute(update(Lead).where(Lead.id == b).values(email=first.email, email_key=first.email_key))
        owner, address, token = first.campaign.owner_id, first.email_key, second.reply_token
    lift_then_bounce = [
        (_payload("subscription_change", MessageID=msg_a, SuppressSending=False), "SubscriptionChange"),
        (_payload("bounce", MessageID=msg_b, ID=77, Type="HardBounce"), "Bounce"),
    ]
    together, singly = _together_and_singly(sessions, lift_then_bounce,
                                            lambda session: is_suppressed(session, owner, address))
    assert together == singly and together[1] is True  # the bounce's suppression stands

    reply_then_complaint = [
        ({"RecordType": "Inbound", "MessageID": "reply-1", "MailboxHash": token, "From": address,
          "Subject": "Re: hello", "Headers": []}, "Inbound"),
        (_payload("spam_complaint", MessageID=msg_b, ID=78), "SpamComplaint"),
    ]
    together, singly = _together_and_singly(sessions, reply_then_complaint, lambda session: session.execute(
        select(Lead.status, Lead.replied_at.is_not(None)).where(Lead.id == b)).one()._tuple())
    assert together == singly and together[1] == (LeadStatus.UNSUBSCRIBED, True)  # it replied first


def test_an_outcome_too_long_for_its_column_is_cut_not_refused(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    ((_, _, message_id),) = _sent(sessions, fake_postmark, 1)
    with session_scope(sessions) as session:
        outcome = handle_postmark_event(session, _payload("bounce", MessageID=message_id, ID=5, Type="X" * 300),
                                        "Bounce").outcome
    assert len(outcome) == 200 and outcome.startswith("XXX") and outcome.endswith("…")


def test_a_campaign_bouncing_too_much_pauses_itself_through_the_send_assets_check(
    provider_settings: Settings, fake_postmark: FakePostmark
) -> None:
    engine = create_db_engine(provider_settings.database_url)
    sessions = make_session_factory(engine)
    try:
        seeded = seed_campaign(sessions, 60, daily_cap=1000, steps=[StepSpec(), StepSpec(delay_days=3)])
        with session_scope(sessions) as session:  # four of sixty addresses will turn out dead: 6.7% > 5%
            dead = session.scalars(select(Lead.id).where(Lead.campaign_id == seeded.campaign_id).limit(4)).all()
        key = send_partitions.get_last_partition_key()
        with instance_for_test() as instance:
            result = materialize([email_sends, hard_bounce_rate], partition_key=key, instance=instance,
                                 resources=resources_from_settings(provider_settings))
            assert result.success
            (first_check,) = result.get_asset_check_evaluations()
            assert first_check.passed  # nothing has bounced yet
            with session_scope(sessions) as session:
                session.execute(update(Lead).where(Lead.id.in_(dead)).values(status=LeadStatus.BOUNCED))
            again = materialize([email_sends, hard_bounce_rate], partition_key=key, instance=instance,
                                resources=resources_from_settings(provider_settings))
        (check,) = again.get_asset_check_evaluations()
        assert not check.passed
        with session_scope(sessions) as session:
            campaign = session.get_one(Campaign, seeded.campaign_id)
            assert campaign.status == CampaignStatus.PAUSED
            assert campaign_stats(session, campaign).paused_reason == (
                "Paused automatically: 4 of 60 emails hard-bounced (6.7%, above 5%). Clean the lead list, then resume.")
    finally:
        engine.dispose()


def test_leads_stopped_by_soft_bounces_are_not_hard_bounces_to_the_guard(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    sent = _sent(sessions, fake_postmark, 20)
    for n, (_, _, message_id) in enumerate(sent[:3]):  # three leads stopped by soft bounces: 15% BOUNCED
        for attempt in range(3):
            _event(sessions, "bounce", message_id, 10 * n + attempt, Type="SoftBounce")
    assert [_lead(sessions, lead)[0] for lead, _, _ in sent[:3]] == [LeadStatus.BOUNCED] * 3
    with session_scope(sessions) as session:
        assert pause_bouncing_campaigns(session, 0.05, 20) == []

    for n, (_, _, message_id) in enumerate(sent[3:5]):  # two hard bounces: 10%
        _event(sessions, "bounce", message_id, 100 + n, Type="HardBounce")
    with session_scope(sessions) as session:
        (paused,) = pause_bouncing_campaigns(session, 0.05, 20)
        assert (paused.sent, paused.bounced) == (20, 2)
        assert session.get_one(Campaign, paused.campaign_id).status == CampaignStatus.PAUSED


# --- the counted stats -------------------------------------------------------------------------------


def _recount(session: Session, campaign_id: int) -> dict[str, Any]:
    """The stats the slow way: GROUP BY over every lead and job of the campaign."""
    leads = dict(session.execute(select(Lead.status, func.count()).where(Lead.campaign_id == campaign_id)
                                 .group_by(Lead.status)).tuples().all())
    by_step: dict[int, dict[str, int]] = {}
    by_variant: dict[int, dict[str, dict[str, int]]] = {}
    for step, variant, status, count in session.execute(
        select(EmailJob.step_number, Template.variant, EmailJob.status, func.count())
        .outerjoin(Template, Template.id == EmailJob.template_id).where(EmailJob.campaign_id == campaign_id)
        .group_by(EmailJob.step_number, Template.variant, EmailJob.status)
    ):
        by_step.setdefault(step, {})[status.value] = by_step.get(step, {}).get(status.value, 0) + count
        by_variant.setdefault(step, {}).setdefault(variant or UNRENDERED, {})[status.value] = count
    delivered = session.scalar(select(func.count()).where(EmailJob.campaign_id == campaign_id,
                                                          EmailJob.delivered_at.is_not(None)))
    return {"leads": {s.value: n for s, n in leads.items()}, "by_step": by_step, "by_variant": by_variant,
            "delivered": delivered}


def _counted(session: Session, campaign_id: int) -> dict[str, Any]:
    stats = campaign_stats(session, session.get_one(Campaign, campaign_id))
    def nonzero(counts: dict[str, int]) -> dict[str, int]:
        return {status: n for status, n in counts.items() if n}
    return {"leads": nonzero(stats.leads_by_status),
            "by_step": {step: nonzero(c) for step, c in stats.jobs_by_step.items() if nonzero(c)},
            "by_variant": {step: {v: nonzero(c) for v, c in variants.items() if nonzero(c)}
                           for step, variants in stats.jobs_by_variant.items()
                           if any(nonzero(c) for c in variants.values())},
            "delivered": stats.delivered}


def test_the_counted_stats_equal_a_plain_recount_through_sends_signals_pauses_and_deletes(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    sent = _sent(sessions, fake_postmark, 8)  # a two-step campaign: 8 first emails sent, 8 follow-ups pending
    (replier, _, _), (_, _, delivered), (_, _, hard), (_, _, soft), (_, _, complaint), (gone, _, _), *_ = sent
    with session_scope(sessions) as session:
        campaign_id = session.get_one(Lead, replier).campaign_id
        assert _counted(session, campaign_id) == _recount(session, campaign_id)
        token = session.get_one(Lead, replier).reply_token

    _event(sessions, "delivery", delivered, 0)
    _event(sessions, "delivery", delivered, 0)  # a replay counts nothing twice
    _event(sessions, "bounce", hard, 1, Type="HardBounce")
    for n in (2, 3, 4):  # the third soft bounce stops the lead
        _event(sessions, "bounce", soft, n, Type="SoftBounce")
    _event(sessions, "spam_complaint", complaint, 5)
    with session_scope(sessions) as session:
        handle_postmark_event(session, {"RecordType": "Inbound", "MessageID": "reply-1", "MailboxHash": token,
                                        "From": "someone@example.com", "Subject": "Re: hello"}, "Inbound")
        campaign = session.get_one(Campaign, campaign_id)
        pause_campaign(session, campaign)
        resume_campaign(session, campaign)
        session.delete(session.get_one(Lead, gone))  # its jobs go with it
    with session_scope(sessions) as session:
        counted = _counted(session, campaign_id)
        assert counted == _recount(session, campaign_id)
        assert counted["leads"] == {"CONTACTED": 3, "REPLIED": 1, "BOUNCED": 2, "UNSUBSCRIBED": 1}
        assert counted["delivered"] == 1
        fold_campaign_counts(session, campaign_id)  # folding the deltas changes no count
    with session_scope(sessions) as session:
        assert _counted(session, campaign_id) == _recount(session, campaign_id)
        rows = session.scalar(select(func.count()).select_from(CampaignCount)
                              .where(CampaignCount.campaign_id == campaign_id))
        assert rows == len(campaign_counts(session, campaign_id))  # one row per key after a fold


def test_imported_leads_and_leads_added_otherwise_are_each_counted_once(sessions: sessionmaker[Session]) -> None:
    """On PostgreSQL an import counts its COPYed rows itself, with the insert trigger switched off around the
    COPY (migration 0013); a lead inserted any other way is still counted by the trigger, with its status."""
    with session_scope(sessions) as session:
        user = User(email="counts@example.com")
        session.add(user)
        session.flush()
        campaign_id = create_campaign(session, user.id, CampaignCreate(name="Counted")).id
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        report = import_leads_csv(session, campaign, io.BytesIO(
            b"email,first_name,city\na@x.example,Ann,Oslo\nnot-an-address,Bob,Rome\nc@x.example,Cy,\n"), source="test")
        assert (report.stored, report.rejected) == (2, 1)
        assert add_leads(session, campaign, [{"email": "d@x.example"}]).stored == 1
    with session_scope(sessions) as session:
        session.add(Lead(campaign_id=campaign_id, email="e@x.example", email_key="e@x.example",
                         status=LeadStatus.UNSUBSCRIBED, reply_token="e" * 32))
    with session_scope(sessions) as session:
        counted = _counted(session, campaign_id)
        assert counted["leads"] == {"PENDING": 3, "UNSUBSCRIBED": 1}
        assert counted == _recount(session, campaign_id)
        custom = session.scalars(select(Lead.custom_fields).where(Lead.campaign_id == campaign_id)
                                 .order_by(Lead.email_key)).all()
        assert custom == [{"city": "Oslo"}, {}, {}, {}]
        # The import's rows got the columns' defaults: PENDING, and a time.
        assert all(created is not None for created in session.scalars(
            select(Lead.created_at).where(Lead.campaign_id == campaign_id)))
