"""Postmark webhooks and the unsubscribe link, through the real app.

Campaigns are set up through the API and sent by the real send path (``dispatch_due`` with the app's own
mailer, the file outbox), so bounces and deliveries refer to messages that were really sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.exc import DataError

from outreach_api.app import create_app
from outreach_api.webhooks import batcher as batcher_module
from outreach_api.webhooks.batcher import EventBatcher
from outreach_pipeline.core.delivery import dispatch_due
from outreach_pipeline.core.events import EventResult
from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus, Suppression, WebhookEvent
from tests.fixtures import PROVIDER_FIXTURES, WEBHOOK_AUTH, make_settings

FIXTURES = PROVIDER_FIXTURES
PATHS = ["/api/webhooks/postmark/inbound", "/api/webhooks/postmark/bounce", "/api/webhooks/postmark/delivery",
         "/api/webhooks/postmark"]
LEADS = [{"email": "ada@one.example", "first_name": "Ada"}, {"email": "bo@two.example", "first_name": "Bo"}]


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "postmark" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _post(client: TestClient[Any], path: str, payload: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(f"/api/webhooks/postmark{path}", json=payload, auth=WEBHOOK_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _launch(client: TestClient[Any], headers: dict[str, str], leads: list[dict[str, Any]] = LEADS,
            name: str = "Freight audit") -> int:
    """A launched two-step campaign (step 2 three days after step 1) with these leads."""
    answer = client.post("/api/campaigns", headers=headers,
                         json={"name": name, "steps": [{}, {"delay_days": 3}]})
    cid = int(answer.json()["id"])
    assert client.post(f"/api/campaigns/{cid}/leads", headers=headers,
                       json={"leads": leads}).json()["stored"] == len(leads)
    for step in (1, 2):
        assert client.post(f"/api/campaigns/{cid}/templates", headers=headers, json={
            "step_number": step, "subject": f"Note {step}", "body": "Hi {{first_name|there}}, a short note."
        }).status_code == 201
    launched = client.post(f"/api/campaigns/{cid}/launch", headers=headers)
    assert launched.json()["queued_emails"] == len(leads), launched.text
    return cid


def _send_due(client: TestClient[Any]) -> int:
    services = client.app.state.services
    report = dispatch_due(services.sessions, services.mailer, services.sender,
                          due_before=datetime.now(UTC) + timedelta(minutes=1))
    return report.sent


def _sent_campaign(client: TestClient[Any], headers: dict[str, str]) -> int:
    cid = _launch(client, headers)
    assert _send_due(client) == len(LEADS)
    return cid


def _lead(client: TestClient[Any], email: str, campaign_id: int | None = None) -> Lead:
    with client.app.state.services.sessions() as session:
        query = select(Lead).where(Lead.email == email)
        if campaign_id is not None:
            query = query.where(Lead.campaign_id == campaign_id)
        lead = session.scalar(query)
        assert lead is not None
        return lead


def _jobs(client: TestClient[Any], lead_id: int) -> dict[int, EmailJob]:
    with client.app.state.services.sessions() as session:
        return {job.step_number: job for job in session.scalars(select(EmailJob).where(EmailJob.lead_id == lead_id))}


def _suppressions(client: TestClient[Any]) -> list[tuple[int, str, str]]:
    with client.app.state.services.sessions() as session:
        return [(s.owner_id, s.email, s.reason) for s in session.scalars(select(Suppression).order_by(Suppression.id))]


def _events(client: TestClient[Any]) -> int:
    with client.app.state.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(WebhookEvent)) or 0


def _owner(client: TestClient[Any], headers: dict[str, str]) -> int:
    return int(client.get("/api/auth/me", headers=headers).json()["id"])


def _bounce(job: EmailJob, email: str, kind: str = "HardBounce", code: int = 1) -> dict[str, Any]:
    payload = _fixture("bounce")
    payload.update(ID=uuid.uuid4().int % 10**15, MessageID=job.provider_message_id, Email=email, Type=kind,
                   TypeCode=code)
    return payload


# --- authentication and payloads -------------------------------------------------------------------


def test_webhooks_without_the_right_basic_credentials_are_401(
    client: TestClient[Any], tmp_path: Path, database_url: str
) -> None:
    payload = _fixture("delivery")
    wrong = {
        "missing": {},
        "wrong password": {"auth": ("postmark", "guess")},
        "wrong user": {"auth": ("admin", WEBHOOK_AUTH[1])},
        "bearer scheme": {"headers": {"Authorization": "Bearer hook-secret"}},
        "not base64": {"headers": {"Authorization": "Basic %%%"}},
        "no colon": {"headers": {"Authorization": "Basic " + base64.b64encode(b"postmarkhook-secret").decode()}},
    }
    for path in PATHS:
        for case, kwargs in wrong.items():
            answer = client.post(path, json=payload, **kwargs)
            assert answer.status_code == 401, (path, case, answer.status_code)
            assert answer.headers["www-authenticate"] == 'Basic realm="webhooks"', (path, case)
    assert _events(client) == 0

    # The credentials are checked before the body is read: a stranger's body is never parsed (a 400 here
    # would say it was), and a stranger cannot make us read up to the webhook's large body limit.
    for path in PATHS:
        answer = client.post(path, content=b'{"RecordType": "Delivery", ', auth=("postmark", "guess"),
                             headers={"Content-Type": "application/json"})
        assert answer.status_code == 401, (path, answer.status_code)

    # With no password configured every webhook is refused, even one sending an empty password.
    unset = make_settings(tmp_path / "unset", database_url, webhook_password="")
    with TestClient(create_app(unset)) as locked:
        answer = locked.post(PATHS[2], json=payload, auth=(WEBHOOK_AUTH[0], ""))
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
    assert _events(client) == 0


def test_documented_payloads_are_accepted_once_and_bad_ones_are_4xx(client: TestClient[Any]) -> None:
    expected = [
        ("/inbound", "inbound", "reply matched no lead; kept for review"),
        ("/bounce", "bounce", "bounce for a message we did not send"),
        ("/delivery", "delivery", "delivery for a message we did not send"),
        ("", "spam_complaint", "complaint for a message we did not send"),
        ("", "open", "Open recorded"),
        ("", "click", "Click recorded"),
        ("", "subscription_change", "SubscriptionChange recorded"),
    ]
    for path, name, outcome in expected:
        assert _post(client, path, _fixture(name)) == {"stored": True, "duplicate": False, "outcome": outcome}, name
    assert _events(client) == 7

    for path, name, _outcome in expected:
        replay = _post(client, path, _fixture(name))
        assert replay == {"stored": False, "duplicate": True, "outcome": "already processed"}, name
    assert _events(client) == 7

    # A payload with no ID to key it by is refused with a 4xx (never a 5xx), malformed JSON with a 400.
    no_ids = _fixture("delivery")
    del no_ids["MessageID"]
    for path in PATHS:
        answer = client.post(path, json={**no_ids, "RecordType": "Delivery"}, auth=WEBHOOK_AUTH)
        assert answer.status_code == 422, (path, answer.text)
        assert "neither ID nor MessageID" in answer.json()["detail"]

        broken = client.post(path, content=b'{"RecordType": "Delivery", "MessageID": ', auth=WEBHOOK_AUTH,
                             headers={"Content-Type": "application/json"})
        assert broken.status_code == 400, (path, broken.text)
        array = client.post(path, json=[_fixture("delivery")], auth=WEBHOOK_AUTH)
        assert array.status_code == 400, (path, array.text)
    assert _events(client) == 7


# --- what the events do ----------------------------------------------------------------------------


def test_a_reply_marks_the_lead_replied_and_skips_its_pending_jobs(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _sent_campaign(client, auth_headers)
    ada, bo = _lead(client, "ada@one.example"), _lead(client, "bo@two.example")
    assert ada.status == LeadStatus.CONTACTED
    assert _jobs(client, ada.id)[2].status == JobStatus.PENDING
    reply = _fixture("inbound")
    reply.update(MessageID=str(uuid.uuid4()), MailboxHash=ada.reply_token, From="ada@one.example",
                 To=f"reply+{ada.reply_token}@inbound.sender.example")

    result = _post(client, "/inbound", reply)

    assert result == {"stored": True, "duplicate": False, "outcome": f"lead {ada.id} replied; 1 pending job(s) skipped"}
    ada_now = _lead(client, "ada@one.example")
    assert ada_now.status == LeadStatus.REPLIED
    assert ada_now.replied_at is not None
    jobs = _jobs(client, ada.id)
    assert (jobs[1].status, jobs[2].status, jobs[2].last_error) == (JobStatus.SENT, JobStatus.SKIPPED, "lead replied")
    assert _lead(client, "bo@two.example").status == LeadStatus.CONTACTED
    assert _jobs(client, bo.id)[2].status == JobStatus.PENDING
    stats = client.get(f"/api/campaigns/{cid}", headers=auth_headers).json()["stats"]
    assert (stats["replied"], stats["reply_rate"]) == (1, 0.5)


def test_an_out_of_office_reply_does_not_stop_the_sequence(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    auto = _fixture("inbound")
    auto.update(MessageID=str(uuid.uuid4()), MailboxHash=ada.reply_token, From="ada@one.example",
                Subject="Automatic reply: Out of office until Monday",
                TextBody="I am out of the office until Monday with limited access to email.",
                StrippedTextReply="I am out of the office until Monday with limited access to email.")
    auto["Headers"] = [*auto["Headers"], {"Name": "Auto-Submitted", "Value": "auto-replied"},
                       {"Name": "X-Autoreply", "Value": "yes"}]

    answer = client.post("/api/webhooks/postmark/inbound", json=auto, auth=WEBHOOK_AUTH)

    assert answer.status_code == 200
    assert _lead(client, "ada@one.example").status == LeadStatus.CONTACTED
    assert _jobs(client, ada.id)[2].status == JobStatus.PENDING


def test_a_hard_bounce_or_complaint_stops_the_lead_and_suppresses_and_a_replay_changes_nothing(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    first = _jobs(client, ada.id)[1]
    assert first.provider_message_id

    bounce = _bounce(first, "ada@one.example")
    result = _post(client, "/bounce", bounce)

    assert result["outcome"] == (f"lead {ada.id} bounced (HardBounce); address suppressed; "
                                 "1 pending job(s) skipped")
    assert _lead(client, "ada@one.example").status == LeadStatus.BOUNCED
    assert _jobs(client, ada.id)[2].status == JobStatus.SKIPPED
    assert _suppressions(client) == [(_owner(client, auth_headers), "ada@one.example", "bounce")]
    bo = _lead(client, "bo@two.example")
    assert bo.status == LeadStatus.CONTACTED

    # A spam complaint (through the generic endpoint) does the same for Bo, as an unsubscribe.
    complaint = _fixture("spam_complaint")
    complaint.update(ID=77, MessageID=_jobs(client, bo.id)[1].provider_message_id, Email="bo@two.example")
    assert _post(client, "", complaint)["outcome"] == f"lead {bo.id} complained; address suppressed"
    assert _lead(client, "bo@two.example").status == LeadStatus.UNSUBSCRIBED
    assert _jobs(client, bo.id)[2].status == JobStatus.SKIPPED
    assert _suppressions(client)[1:] == [(_owner(client, auth_headers), "bo@two.example", "complaint")]

    # A replay of either event, after an operator reversed its effects by hand, does not redo them.
    with client.app.state.services.sessions() as session:
        session.execute(delete(Suppression))
        session.execute(update(Lead).where(Lead.id.in_([ada.id, bo.id])).values(status=LeadStatus.CONTACTED))
        session.execute(update(EmailJob).where(EmailJob.step_number == 2).values(status=JobStatus.PENDING))
        session.commit()
    for path, payload in (("/bounce", bounce), ("", bounce), ("", complaint)):  # typed and generic endpoints
        assert _post(client, path, payload) == {"stored": False, "duplicate": True, "outcome": "already processed"}
    for lead in (ada, bo):
        assert _lead(client, lead.email).status == LeadStatus.CONTACTED
        assert _jobs(client, lead.id)[2].status == JobStatus.PENDING
    assert _suppressions(client) == []
    assert _events(client) == 2

    # A new bounce event for the message acts again, and the suppression spans the owner's campaigns.
    assert _post(client, "/bounce", {**bounce, "ID": 99})["duplicate"] is False
    other = client.post("/api/campaigns", headers=auth_headers, json={"name": "Other"}).json()["id"]
    added = client.post(f"/api/campaigns/{other}/leads", headers=auth_headers,
                        json={"leads": [{"email": "Ada@One.example"}]})
    assert added.json()["rejected_by_reason"] == {"suppressed": 1}


def test_a_stop_signal_for_an_email_not_recorded_yet_is_not_lost(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """The provider accepted the first emails, but the run died before recording them (SENDING, no message id,
    awaiting reconciliation). A bounce echoing our job id in its Metadata stops the lead at once; a complaint
    with nothing to go by is kept, and acts when replayed after the email is recorded."""
    _sent_campaign(client, auth_headers)
    ada, bo = _lead(client, "ada@one.example"), _lead(client, "bo@two.example")
    ada_first, bo_first = _jobs(client, ada.id)[1], _jobs(client, bo.id)[1]
    with client.app.state.services.sessions() as session:
        session.execute(update(EmailJob).where(EmailJob.id.in_([ada_first.id, bo_first.id]))
                        .values(status=JobStatus.SENDING, provider_message_id=None))
        session.commit()

    bounce = {**_bounce(ada_first, "ada@one.example"), "Metadata": {"job_id": str(ada_first.id), "step": "1"}}
    assert _post(client, "/bounce", bounce)["outcome"] == (
        f"lead {ada.id} bounced (HardBounce); address suppressed; 1 pending job(s) skipped")
    assert _lead(client, "ada@one.example").status == LeadStatus.BOUNCED
    assert _jobs(client, ada.id)[2].status == JobStatus.SKIPPED

    complaint = {**_fixture("spam_complaint"), "ID": 78, "MessageID": bo_first.provider_message_id,
                 "Email": "bo@two.example"}
    assert _post(client, "", complaint) == {"stored": True, "duplicate": False,
                                            "outcome": "complaint for a message we did not send"}
    with client.app.state.services.sessions() as session:  # recorded, by the reconciler say
        session.execute(update(EmailJob).where(EmailJob.id == bo_first.id)
                        .values(status=JobStatus.SENT, provider_message_id=bo_first.provider_message_id))
        session.commit()
    assert _post(client, "", complaint) == {"stored": True, "duplicate": False,
                                            "outcome": f"lead {bo.id} complained; address suppressed"}
    assert _lead(client, "bo@two.example").status == LeadStatus.UNSUBSCRIBED
    assert _post(client, "", complaint)["duplicate"] is True
    assert _events(client) == 2


def test_a_reactivation_at_postmark_does_not_lift_our_unsubscribe(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    answer = client.post(f"/unsubscribe/{ada.reply_token}", content=b"List-Unsubscribe=One-Click",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200
    reactivated = {**_fixture("subscription_change"), "MessageID": _jobs(client, ada.id)[1].provider_message_id,
                   "Recipient": "ada@one.example", "SuppressSending": False}

    assert _post(client, "", reactivated)["outcome"] == f"lead {ada.id} had no provider suppression to lift"
    assert _suppressions(client) == [(_owner(client, auth_headers), "ada@one.example", "unsubscribe")]


def test_a_soft_bounce_is_recorded_without_suppressing_and_a_delivery_sets_delivered_at(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _sent_campaign(client, auth_headers)
    ada, bo = _lead(client, "ada@one.example"), _lead(client, "bo@two.example")
    ada_first, bo_first = _jobs(client, ada.id)[1], _jobs(client, bo.id)[1]

    soft = _post(client, "/bounce", _bounce(ada_first, "ada@one.example", "SoftBounce", 4096))

    assert soft["outcome"] == "SoftBounce bounce recorded"
    assert _lead(client, "ada@one.example").status == LeadStatus.CONTACTED
    assert _jobs(client, ada.id)[2].status == JobStatus.PENDING
    assert _suppressions(client) == []

    delivery = _fixture("delivery")
    delivery.update(MessageID=bo_first.provider_message_id, Recipient="bo@two.example")
    result = _post(client, "/delivery", delivery)

    assert result["outcome"] == f"job {bo_first.id} delivered"
    assert _jobs(client, bo.id)[1].delivered_at is not None
    assert _jobs(client, ada.id)[1].delivered_at is None
    assert client.get(f"/api/campaigns/{cid}", headers=auth_headers).json()["stats"]["delivered"] == 1


# --- unsubscribe -----------------------------------------------------------------------------------


def test_the_unsubscribe_page_asks_first_and_changes_nothing(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _launch(client, auth_headers)
    ada = _lead(client, "ada@one.example")

    page = client.get(f"/unsubscribe/{ada.reply_token}")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'<form method="post" action="/unsubscribe/{ada.reply_token}">' in page.text
    assert "Unsubscribe</button>" in page.text
    assert _lead(client, "ada@one.example").status == LeadStatus.PENDING
    assert _jobs(client, ada.id)[1].status == JobStatus.PENDING
    assert _suppressions(client) == []

    for token in ("not-a-token", "0" * 31, "0" * 33, "g" * 32, ada.reply_token[:-1] + "-"):
        for answer in (client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}")):
            assert answer.status_code == 404
            assert "This unsubscribe link is not valid." in answer.text
    assert _suppressions(client) == []
    # A mail client that upper-cases the link still finds the lead.
    assert client.get(f"/unsubscribe/{ada.reply_token.upper()}").status_code == 200


def test_post_unsubscribes_and_suppresses_the_address_for_the_owner(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    first = _launch(client, auth_headers)
    second = _launch(client, auth_headers, [{"email": "ada@one.example"}], name="Second")
    ada = _lead(client, "ada@one.example", first)

    # RFC 8058 one-click, as a mail client sends it.
    answer = client.post(f"/unsubscribe/{ada.reply_token}", content=b"List-Unsubscribe=One-Click",
                         follow_redirects=False, headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert answer.status_code == 200
    assert "location" not in answer.headers
    assert "You are unsubscribed" in answer.text
    assert _lead(client, "ada@one.example", first).status == LeadStatus.UNSUBSCRIBED
    jobs = _jobs(client, ada.id)
    assert (jobs[1].status, jobs[1].last_error) == (JobStatus.SKIPPED, "lead unsubscribed")
    assert _suppressions(client) == [(_owner(client, auth_headers), "ada@one.example", "unsubscribe")]
    assert _lead(client, "bo@two.example", first).status == LeadStatus.PENDING

    # The owner's other campaign never mails the address either.
    assert _send_due(client) == 1  # only Bo
    other = _lead(client, "ada@one.example", second)
    assert _jobs(client, other.id)[1].status == JobStatus.SKIPPED
    assert client.get(f"/api/campaigns/{second}", headers=auth_headers).json()["stats"]["sent"] == 0

    # The page's button posts an empty form; that unsubscribes too.
    bo = _lead(client, "bo@two.example", first)
    button = client.post(f"/unsubscribe/{bo.reply_token}", content=b"", follow_redirects=False,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert button.status_code == 200
    assert _lead(client, "bo@two.example", first).status == LeadStatus.UNSUBSCRIBED
    assert _suppressions(client)[1:] == [(_owner(client, auth_headers), "bo@two.example", "unsubscribe")]


def test_concurrent_events_land_even_when_the_database_refuses_one_of_them(client: TestClient[Any]) -> None:
    """Concurrent events through the API, one that the database refuses (PostgreSQL's JSONB cannot hold a NUL
    character): it gets its 400, the others still land. Whether they share a batch is up to timing; the
    test below forms one on purpose."""
    good = [{**_fixture("delivery"), "MessageID": str(uuid.uuid4())} for _ in range(40)]
    bad = {**_fixture("delivery"), "MessageID": str(uuid.uuid4()), "Details": "smtp;250 \u0000 ok"}
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(
            lambda payload: client.post("/api/webhooks/postmark", json=payload, auth=WEBHOOK_AUTH), [*good, bad]))

    assert [a.status_code for a in answers[:-1]] == [200] * len(good)
    assert all(a.json()["stored"] for a in answers[:-1])
    refused = answers[-1].status_code == 400  # PostgreSQL refuses the NUL; SQLite stores it
    assert refused or answers[-1].status_code == 200, answers[-1].text
    assert _events(client) == len(good) + (0 if refused else 1)


def test_events_arriving_while_the_loop_is_busy_join_the_batch_under_way(client: TestClient[Any]) -> None:
    """The writer takes the first event at once, then lets the event loop turn before closing the batch: the
    events of requests the loop was still handling join it, and all are committed together."""
    engine = client.app.state.services.engine
    commits: list[object] = []

    def count(connection: object) -> None:
        commits.append(connection)

    # A generous bound: on a loaded machine the writer may wait long for its turn; in production it is 2 ms.
    batcher = EventBatcher(client.app.state.services.sessions, loop_wait_bound=5.0)
    payloads = [{**_fixture("delivery"), "MessageID": str(uuid.uuid4())} for _ in range(10)]

    async def submit_while_busy() -> list[EventResult]:
        first = asyncio.ensure_future(batcher.submit(payloads[0], "Delivery"))
        await asyncio.sleep(0)  # the first event is queued; the writer wakes up and takes it
        time.sleep(0.01)  # the loop busy with other requests meanwhile
        rest = [asyncio.ensure_future(batcher.submit(p, "Delivery")) for p in payloads[1:]]
        return await asyncio.gather(first, *rest)

    event.listen(engine, "commit", count)
    try:
        results = asyncio.run(submit_while_busy())
    finally:
        batcher.stop()
        event.remove(engine, "commit", count)
    assert [r.duplicate for r in results] == [False] * len(payloads)
    assert len(commits) == 1
    assert _events(client) == len(payloads)


def test_a_batch_the_database_refuses_is_applied_again_event_by_event(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    batcher = EventBatcher(client.app.state.services.sessions)
    good = [{**_fixture("delivery"), "MessageID": str(uuid.uuid4())} for _ in range(30)]
    bad = {**_fixture("delivery"), "MessageID": str(uuid.uuid4()), "Details": "smtp;250 \u0000 ok"}
    payloads = [*good[:15], bad, *good[15:]]

    async def submit_all() -> list[Any]:
        # Queued in one go, so all but the first wait together and form one batch.
        return await asyncio.gather(*(batcher.submit(p, "Delivery") for p in payloads), return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="outreach_api.webhooks.batcher"):
        results = asyncio.run(submit_all())
    batcher.stop()

    postgres = client.app.state.services.engine.dialect.name == "postgresql"
    assert all(isinstance(r, EventResult) and not r.duplicate for r in results[:15] + results[16:])
    assert isinstance(results[15], DataError) if postgres else isinstance(results[15], EventResult)
    assert ("applying its" in caplog.text) == postgres  # the batch failed and was applied event by event
    assert _events(client) == len(good) + (0 if postgres else 1)


class _LockWithHook:
    """A lock that runs `hook` once, just after it is first let go of: for the batcher, the instant stop()
    has detached its writer."""

    def __init__(self, lock: Any, hook: Callable[[], None]) -> None:
        self._lock, self._hook = lock, hook

    def __enter__(self) -> bool:
        return self._lock.__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()


def test_a_submit_racing_stop_cannot_take_the_stop_meant_for_the_writer_being_stopped(
    client: TestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() detaches the writer; before it queues the writer's stop, a submit starts a second writer. The
    interleaving is held in place through the writers' loop turns: the second writer's batch goes on once
    stop() joins the first writer, the first writer's once the second has answered. The stop must reach the
    first writer only; if the second takes it, stop() waits forever (here: fails after a timeout)."""
    timeout = 10.0
    payloads = [{**_fixture("delivery"), "MessageID": str(uuid.uuid4())} for _ in range(3)]
    batcher = EventBatcher(client.app.state.services.sessions)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    writers: list[threading.Thread] = []
    second: list[Future[EventResult]] = []
    first_held, second_held, stop_joins = threading.Event(), threading.Event(), threading.Event()

    def submit(payload: dict[str, Any]) -> Future[EventResult]:
        return asyncio.run_coroutine_threadsafe(batcher.submit(payload, "Delivery"), loop)

    def join_noticed(join_timeout: float | None = None) -> None:  # stop() has queued its stop by now
        stop_joins.set()
        threading.Thread.join(writers[0], join_timeout)

    def hold_first() -> None:
        writers.append(threading.current_thread())
        writers[0].join = join_noticed  # type: ignore[method-assign]
        first_held.set()
        stop_joins.wait(timeout)
        wait_futures(second, timeout)

    def hold_second() -> None:
        writers.append(threading.current_thread())
        second_held.set()
        stop_joins.wait(timeout)

    holds = [hold_first, hold_second]
    real_turn = batcher_module._let_loop_turn

    def held_turn(turn_loop: asyncio.AbstractEventLoop, turns: int, bound: float) -> None:
        if holds:
            holds.pop(0)()
        real_turn(turn_loop, turns, bound)

    def submit_while_stopping() -> None:
        second.append(submit(payloads[1]))
        assert second_held.wait(timeout)

    monkeypatch.setattr(batcher_module, "_let_loop_turn", held_turn)
    try:
        first = submit(payloads[0])
        assert first_held.wait(timeout)
        batcher._lock = _LockWithHook(batcher._lock, submit_while_stopping)  # type: ignore[assignment]
        stopper = threading.Thread(target=batcher.stop, daemon=True)
        stopper.start()
        stopper.join(timeout)
        assert not stopper.is_alive(), "stop() waits for a writer that will never see its stop"
        assert not first.result(timeout).duplicate and not second[0].result(timeout).duplicate
        # A submit after the stop still lands, and a last stop ends every writer.
        assert not submit(payloads[2]).result(timeout).duplicate
        batcher.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(timeout)
    loop.close()
    assert not any(writer.is_alive() for writer in writers)
    assert _events(client) == len(payloads)
