"""Reply detection through the real app: which lead an inbound email belongs to, and whether a person wrote it.

Campaigns are launched through the API and really sent (file outbox), so Message-IDs and reply tokens are
the ones the engine made.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, update

from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus, WebhookEvent
from outreach_pipeline.settings import Settings
from tests.fixtures import latest_outbox_token, sign_in
from tests.test_api_webhooks import _fixture, _jobs, _launch, _lead, _post, _send_due, _sent_campaign

UNMATCHED = "reply matched no lead; kept for review"


def _reply(sender: str, *, mailbox_hash: str = "", subject: str = "Re: Note 1", headers: dict[str, str] | None = None,
           ) -> dict[str, Any]:
    """An inbound email as Postmark posts it, from `sender`, with only the threading we give it."""
    payload = _fixture("inbound")
    payload.update(MessageID=str(uuid.uuid4()), MailboxHash=mailbox_hash, From=sender, Subject=subject,
                   FromFull={"Email": sender, "Name": "", "MailboxHash": ""},
                   To=f"reply+{mailbox_hash}@inbound.sender.example" if mailbox_hash else "team@sender.example")
    payload["Headers"] = [{"Name": name, "Value": value} for name, value in (headers or {}).items()]
    return payload


def _event(client: TestClient[Any], provider_id: str) -> WebhookEvent:
    with client.app.state.services.sessions() as session:
        event = session.scalar(select(WebhookEvent).where(WebhookEvent.provider_id == provider_id))
        assert event is not None
        return event


def _stopped(client: TestClient[Any], email: str) -> bool:
    lead = _lead(client, email)
    step2 = _jobs(client, lead.id)[2].status
    assert (lead.status == LeadStatus.REPLIED) == (step2 == JobStatus.SKIPPED), (lead.status, step2)
    return lead.status == LeadStatus.REPLIED


def test_a_reply_is_matched_by_its_thread_when_the_mailbox_hash_is_lost(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    sent_id = _jobs(client, ada.id)[1].message_id_header
    assert sent_id and sent_id.startswith("<")

    # Sent from another mailbox of Ada's (no hash, unknown sender): only References ties it to our email.
    reply = _reply("a.lovelace@home.example", headers={
        "In-Reply-To": "<unrelated@elsewhere.example>", "References": f"<first@elsewhere.example> {sent_id}"})
    result = _post(client, "/inbound", reply)

    assert result["outcome"] == (f"lead {ada.id} replied (from another address, a.lovelace@home.example); "
                                 "1 pending job(s) skipped")
    assert _stopped(client, "ada@one.example")
    assert not _stopped(client, "bo@two.example")
    assert _event(client, reply["MessageID"]).lead_id == ada.id


def test_inbound_mail_posted_to_the_single_webhook_url_is_a_reply(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """Postmark's inbound webhook carries no RecordType; the single URL must still see a reply in it."""
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    # From a stranger, so only the hash can match; upper-cased, as some mail systems pass it on.
    reply = _reply("stranger@nowhere.example", mailbox_hash=ada.reply_token.upper())
    assert "RecordType" not in reply

    result = _post(client, "", reply)

    assert result["outcome"] == (f"lead {ada.id} replied (from another address, stranger@nowhere.example); "
                                 "1 pending job(s) skipped")
    assert _stopped(client, "ada@one.example")
    assert _event(client, reply["MessageID"]).record_type == "Inbound"


def test_a_reply_is_matched_by_sender_among_the_owners_running_leads(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    bo = _lead(client, "bo@two.example")

    result = _post(client, "", {**_reply("Bo <BO@two.example>"), "RecordType": "Inbound"})

    assert result["outcome"] == f"lead {bo.id} replied; 1 pending job(s) skipped"
    assert _stopped(client, "bo@two.example")
    assert not _stopped(client, "ada@one.example")


def test_a_colleague_at_the_leads_company_is_recorded_against_the_lead(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")

    reply = _reply("charles@one.example", mailbox_hash=ada.reply_token)
    result = _post(client, "/inbound", reply)

    assert result["outcome"] == (f"lead {ada.id} replied (from a colleague at the lead company, charles@one.example); "
                                 "1 pending job(s) skipped")
    assert _event(client, reply["MessageID"]).lead_id == ada.id
    assert _stopped(client, "ada@one.example")


def test_mail_from_a_colleague_writing_afresh_is_recorded_against_the_lead_without_stopping_it(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """No mailbox hash, no thread, an address we never wrote to: the company domain ties it to the lead we
    wrote to there, for a person to read. The domain alone is too weak to stop anything."""
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")

    mail = _reply("Charles <Charles@One.example>", subject="About your note to Ada")
    result = _post(client, "/inbound", mail)

    assert result["outcome"] == (f"mail from charles@one.example, at the company of lead {ada.id}, recorded for "
                                 "review; sequence continues")
    assert _event(client, mail["MessageID"]).lead_id == ada.id
    assert not _stopped(client, "ada@one.example")


def test_a_company_domain_names_the_lead_last_written_to_and_never_a_free_mail_domain(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _launch(client, auth_headers, [{"email": "ada@one.example"}, {"email": "cy@one.example"},
                                         {"email": "dee@gmail.com"}])
    assert _send_due(client) == 3
    ada = _lead(client, "ada@one.example")
    with client.app.state.services.sessions.begin() as session:  # Ada's email went out last
        session.execute(update(EmailJob).where(EmailJob.lead_id == ada.id)
                        .values(sent_at=datetime.now(UTC) + timedelta(minutes=1)))
    # A lead at two.example we have not written to yet.
    assert client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers,
                       json={"leads": [{"email": "fay@two.example"}]}).json()["stored"] == 1

    def matched(sender: str) -> int | None:
        return _event(client, _post_reply(client, sender)).lead_id

    assert matched("boss@one.example") == ada.id
    assert matched("eve@xone.example") is None  # a lookalike domain
    assert matched("hr@two.example") is None  # nobody there was written to
    assert matched("stranger@gmail.com") is None  # nobody's colleague
    assert not _stopped(client, "ada@one.example") and not _stopped(client, "dee@gmail.com")


def _post_reply(client: TestClient[Any], sender: str) -> str:
    mail = _reply(sender)
    _post(client, "/inbound", mail)
    return str(mail["MessageID"])


AUTO_REPLIES = [
    ("Re: Note 1", {"Auto-Submitted": "auto-replied"}),
    ("Re: Note 1", {"auto-submitted": "auto-generated"}),
    ("Re: Note 1", {"X-Autoreply": "yes"}),
    ("Re: Note 1", {"Precedence": "auto_reply"}),
    ("Automatic reply: Note 1", {}),
    ("Out of Office: Note 1", {}),
    ("Abwesenheitsnotiz: Note 1", {}),
    ("Réponse automatique : Note 1", {}),
    ("Respuesta automática: Note 1", {}),
    ("Risposta automatica: Note 1", {}),
    ("Automatisch antwoord: Note 1", {}),
    ("自動応答: Note 1", {}),
    ("[Auto-Reply] Note 1", {}),
    ("RE: Out-of-office: Note 1", {}),
    ("AW: Abwesenheitsnotiz", {}),
    ("Automatiskt svar: Note 1", {}),  # Swedish Outlook
    ("Automatisk svar: Note 1", {}),  # Danish, Norwegian
    ("Automatická odpověď: Note 1", {}),  # Czech
    ("Otomatik yanıt: Note 1", {}),  # Turkish
    ("Automatikus válasz: Note 1", {}),  # Hungarian
    ("Răspuns automat: Note 1", {}),  # Romanian
    ("Automatski odgovor: Note 1", {}),  # Croatian
    ("Αυτόματη απάντηση: Note 1", {}),  # Greek
]


def test_auto_replies_are_recorded_but_do_not_stop_the_sequence(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")

    for subject, headers in AUTO_REPLIES:  # none changes anything, so one lead hears them all
        reply = _reply("ada@one.example", mailbox_hash=ada.reply_token, subject=subject, headers=headers)
        result = _post(client, "/inbound", reply)

        assert result["outcome"] == f"auto-reply for lead {ada.id} recorded; sequence continues", subject
        assert _event(client, reply["MessageID"]).lead_id == ada.id
        assert not _stopped(client, "ada@one.example"), (subject, headers)


def test_a_person_whose_subject_merely_mentions_the_office_does_stop_the_sequence(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    _sent_campaign(client, auth_headers)
    ada = _lead(client, "ada@one.example")
    reply = _reply("ada@one.example", mailbox_hash=ada.reply_token, subject="Re: our office move",
                   headers={"Auto-Submitted": "no", "Precedence": "first-class"})
    assert _post(client, "/inbound", reply)["outcome"].startswith(f"lead {ada.id} replied")
    assert _stopped(client, "ada@one.example")


def test_an_unmatched_reply_is_kept_for_review(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    _sent_campaign(client, auth_headers)
    cases = [
        _reply("stranger@nowhere.example"),
        _reply("stranger@nowhere.example", mailbox_hash="not-a-token",
               headers={"In-Reply-To": "<never-sent@elsewhere.example>"}),
        _reply("stranger@nowhere.example", mailbox_hash="g" * 32),  # token-sized, but no uuid
        _reply("ada@one.example", mailbox_hash="x" * 500),  # a hash no token can have; sender still matches
    ]
    outcomes = [_post(client, "/inbound", payload)["outcome"] for payload in cases]

    assert outcomes[:3] == [UNMATCHED, UNMATCHED, UNMATCHED]
    for payload in cases[:3]:
        event = _event(client, payload["MessageID"])
        assert (event.lead_id, event.outcome, event.payload["From"]) == (None, UNMATCHED, "stranger@nowhere.example")
    assert outcomes[3].startswith("lead ")
    assert not _stopped(client, "bo@two.example")


@pytest.mark.parametrize(("theirs", "sender"), [
    ("ada@one.example", "ada@one.example"),  # the same address in both tenants' campaigns
    ("zed@one.example", "boss@one.example"),  # a colleague at a company both tenants write to
])
def test_a_sender_known_to_two_owners_is_not_guessed(
    client: TestClient[Any], settings: Settings, auth_headers: dict[str, str], theirs: str, sender: str
) -> None:
    _launch(client, auth_headers, [{"email": "ada@one.example"}], name="Mine")
    assert settings.outbox_dir is not None
    rival = sign_in(client, "rival@else.example", lambda: latest_outbox_token(settings.outbox_dir))  # type: ignore[arg-type]
    _launch(client, rival, [{"email": theirs}], name="Theirs")
    assert _send_due(client) == 2

    # No hash, no thread: either tenant could be meant, so neither gets it.
    assert _post(client, "/inbound", _reply(sender))["outcome"] == UNMATCHED
    with client.app.state.services.sessions() as session:
        statuses = session.scalars(select(Lead.status)).all()
    assert statuses == [LeadStatus.CONTACTED, LeadStatus.CONTACTED]


def test_a_sender_who_is_a_lead_of_two_owners_is_not_taken_for_a_colleague(
    client: TestClient[Any], settings: Settings, auth_headers: dict[str, str]
) -> None:
    """Pat is a lead of both tenants, so who Pat answers is for a person to decide; Pat's domain must not
    hand the mail to the one tenant that already wrote to someone else there."""
    mine = _launch(client, auth_headers, [{"email": "yan@acme.example"}], name="Mine")
    assert _send_due(client) == 1
    assert client.post(f"/api/campaigns/{mine}/leads", headers=auth_headers,
                       json={"leads": [{"email": "pat@acme.example"}]}).json()["stored"] == 1
    assert settings.outbox_dir is not None
    rival = sign_in(client, "rival@else.example", lambda: latest_outbox_token(settings.outbox_dir))  # type: ignore[arg-type]
    _launch(client, rival, [{"email": "pat@acme.example"}], name="Theirs")

    assert _event(client, _post_reply(client, "pat@acme.example")).lead_id is None
