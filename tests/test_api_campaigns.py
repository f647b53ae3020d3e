"""Campaigns through the HTTP API: create, list, read with stats, edit drafts, launch, pause, resume, duplicate."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import func, select, update

from outreach_api.app import create_app
from outreach_pipeline.core.campaigns import complete_finished_campaigns
from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus, Suppression
from tests.fixtures import PROVIDER_FIXTURES, latest_outbox_token, make_settings, sign_in

FIXTURES = PROVIDER_FIXTURES

NO_JOBS = {"PENDING": 0, "SENDING": 0, "SENT": 0, "FAILED": 0, "SKIPPED": 0}
NO_LEADS = {"PENDING": 0, "CONTACTED": 0, "REPLIED": 0, "BOUNCED": 0, "UNSUBSCRIBED": 0, "FAILED": 0}


def _create(client: TestClient[Any], headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    answer = client.post("/api/campaigns", json={"name": "Freight audit", **fields}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _add_leads(client: TestClient[Any], headers: dict[str, str], campaign_id: int, *leads: dict[str, Any]) -> None:
    answer = client.post(f"/api/campaigns/{campaign_id}/leads", json={"leads": list(leads)}, headers=headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["stored"] == len(leads), answer.text


def _template(client: TestClient[Any], headers: dict[str, str], campaign_id: int, step: int, subject: str = "",
              body: str = "") -> dict[str, Any]:
    answer = client.post(f"/api/campaigns/{campaign_id}/templates", headers=headers, json={
        "step_number": step,
        "subject": subject or f"Step {step} for {{{{company|your team}}}}",
        "body": body or "Hi {{first_name|there}},\n\nA short note.\n\nBest",
    })
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _ready(client: TestClient[Any], headers: dict[str, str], leads: int = 2, steps: int = 1,
           **fields: Any) -> dict[str, Any]:
    """A DRAFT campaign that passes the pre-flight check: leads and a template for every step."""
    campaign = _create(client, headers, steps=[{"delay_days": 2}] * steps, **fields)
    _add_leads(client, headers, campaign["id"],
               *({"email": f"lead{n}@prospect{n}.example", "first_name": f"Lead{n}"} for n in range(leads)))
    for step in range(1, steps + 1):
        _template(client, headers, campaign["id"], step)
    return campaign


def _detail(client: TestClient[Any], headers: dict[str, str], campaign_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/campaigns/{campaign_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _jobs(client: TestClient[Any], campaign_id: int) -> int:
    with client.app.state.services.sessions() as session:
        return session.scalar(select(func.count()).where(EmailJob.campaign_id == campaign_id)) or 0


# --- create ----------------------------------------------------------------------------------------


def test_create_fills_defaults_and_keeps_settings_bad_input_is_400_unknown_is_404(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    answer = client.post("/api/campaigns", json={"name": "Freight audit"}, headers=auth_headers)

    assert answer.status_code == 201
    campaign = answer.json()
    assert campaign["name"] == "Freight audit"
    assert campaign["status"] == "DRAFT"
    assert campaign["pitch"] == ""
    assert campaign["tone"] == "friendly, concise"
    assert campaign["timezone"] == "UTC"
    assert (campaign["window_start_hour"], campaign["window_end_hour"]) == (0, 24)
    assert campaign["send_days"] == "0123456"
    assert campaign["daily_cap"] == 500
    assert campaign["steps"] == [{"number": 1, "delay_days": 0, "subject_hint": "", "thread": True}]
    assert campaign["launched_at"] is None and campaign["completed_at"] is None

    campaign = _create(
        client, auth_headers, pitch="We audit freight invoices.", tone="direct", sender_name="Ada",
        sender_email="ada@sender.example", timezone="Europe/Berlin", window_start_hour=9, window_end_hour=17,
        send_days="01234", daily_cap=50,
        steps=[{"delay_days": 7, "subject_hint": "intro"}, {"delay_days": 3}, {"delay_days": 5, "thread": False}],
    )

    assert campaign["steps"] == [
        {"number": 1, "delay_days": 0, "subject_hint": "intro", "thread": True},  # step 1 goes at launch
        {"number": 2, "delay_days": 3, "subject_hint": "", "thread": True},
        {"number": 3, "delay_days": 5, "subject_hint": "", "thread": False},
    ]
    stored = _detail(client, auth_headers, campaign["id"])
    for key, value in {"pitch": "We audit freight invoices.", "tone": "direct", "sender_name": "Ada",
                       "sender_email": "ada@sender.example", "timezone": "Europe/Berlin", "window_start_hour": 9,
                       "window_end_hour": 17, "send_days": "01234", "daily_cap": 50}.items():
        assert stored[key] == value, key
    assert stored["steps"] == campaign["steps"]

    # Bad input is a 400 naming the field, and nothing is created.
    def refused(body: dict[str, Any]) -> list[dict[str, Any]]:
        answer = client.post("/api/campaigns", json=body, headers=auth_headers)
        assert answer.status_code == 400, answer.text
        return answer.json()["extra"]  # type: ignore[no-any-return]

    empty = refused({"name": ""})
    assert [e["key"] for e in empty] == ["name"]
    zone = refused({"name": "x", "timezone": "Mars/Olympus_Mons"})
    assert [e["key"] for e in zone] == ["timezone"]
    assert "unknown timezone 'Mars/Olympus_Mons'" in zone[0]["message"]
    window = refused({"name": "x", "window_start_hour": 17, "window_end_hour": 9})
    assert "window_start_hour must be before window_end_hour" in window[0]["message"]
    equal = refused({"name": "x", "window_start_hour": 9, "window_end_hour": 9})
    assert "window_start_hour" in equal[0]["message"]
    cap = refused({"name": "x", "daily_cap": 0})
    assert [e["key"] for e in cap] == ["daily_cap"]
    assert client.get("/api/campaigns", headers=auth_headers).json()["total"] == 2

    # An unknown campaign is 404 on every route.
    calls = [
        client.get("/api/campaigns/999", headers=auth_headers),
        client.patch("/api/campaigns/999", json={"name": "x"}, headers=auth_headers),
        client.post("/api/campaigns/999/launch", headers=auth_headers),
        client.post("/api/campaigns/999/pause", headers=auth_headers),
        client.post("/api/campaigns/999/resume", headers=auth_headers),
        client.post("/api/campaigns/999/duplicate", headers=auth_headers),
    ]
    for answer in calls:
        assert answer.status_code == 404, (answer.request.method, answer.request.url)
        assert answer.json()["detail"] == "Campaign 999 not found."



def test_a_sender_email_leads_would_refuse_is_refused_on_create_and_patch(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    campaign = _create(client, auth_headers, sender_email="ada@sender.example")
    for bad in ("ada,ops@sender.example", "ada@sender..example", "ada@sender.example.", "Ada <ada@sender.example>"):
        created = client.post("/api/campaigns", json={"name": "x", "sender_email": bad}, headers=auth_headers)
        patched = client.patch(f"/api/campaigns/{campaign['id']}", json={"sender_email": bad}, headers=auth_headers)
        for answer in (created, patched):
            assert answer.status_code in (400, 422), (bad, answer.text)
            assert [e["key"] for e in answer.json()["extra"]] == ["sender_email"], answer.text
    assert _detail(client, auth_headers, campaign["id"])["sender_email"] == "ada@sender.example"
    assert client.get("/api/campaigns", headers=auth_headers).json()["total"] == 1
    # Empty means the configured default From.
    assert _create(client, auth_headers, sender_email="")["sender_email"] == ""


# --- list and read ---------------------------------------------------------------------------------


def test_list_filters_by_status_and_paginates(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    first = _create(client, auth_headers, name="First")
    second = _ready(client, auth_headers, name="Second")
    third = _create(client, auth_headers, name="Third")
    assert client.post(f"/api/campaigns/{second['id']}/launch", headers=auth_headers).status_code == 200

    def page(query: str) -> dict[str, Any]:
        answer = client.get(f"/api/campaigns{query}", headers=auth_headers)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    everything = page("")
    assert everything["total"] == 3
    assert [c["name"] for c in everything["items"]] == ["Third", "Second", "First"]  # newest first

    active = page("?status=ACTIVE")
    assert active["total"] == 1
    assert [c["id"] for c in active["items"]] == [second["id"]]
    drafts = page("?status=DRAFT")
    assert drafts["total"] == 2
    assert {c["id"] for c in drafts["items"]} == {first["id"], third["id"]}
    assert page("?status=PAUSED") == {"items": [], "total": 0, "limit": 50, "offset": 0}

    one = page("?limit=2&offset=0")
    assert (one["total"], one["limit"], one["offset"]) == (3, 2, 0)
    assert [c["id"] for c in one["items"]] == [third["id"], second["id"]]
    two = page("?limit=2&offset=2")
    assert [c["id"] for c in two["items"]] == [first["id"]]
    assert two["total"] == 3

    assert client.get("/api/campaigns?limit=0", headers=auth_headers).status_code == 400
    assert client.get("/api/campaigns?status=SLEEPING", headers=auth_headers).status_code == 400


def test_detail_includes_stats(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    campaign = _ready(client, auth_headers, leads=3, steps=2)
    draft = _detail(client, auth_headers, campaign["id"])
    assert draft["stats"]["leads_total"] == 3
    assert draft["stats"]["leads_by_status"] == {**NO_LEADS, "PENDING": 3}
    assert draft["stats"]["jobs_by_step"] == {"1": NO_JOBS, "2": NO_JOBS}

    assert client.post(f"/api/campaigns/{campaign['id']}/launch", headers=auth_headers).status_code == 200
    leads = client.get(f"/api/campaigns/{campaign['id']}/leads", headers=auth_headers).json()["items"]
    with client.app.state.services.sessions() as session:
        token = session.scalar(select(Lead.reply_token).where(Lead.id == leads[0]["id"]))
    assert client.post(f"/unsubscribe/{token}").status_code == 200

    stats = _detail(client, auth_headers, campaign["id"])["stats"]
    assert stats["leads_total"] == 3
    assert stats["leads_by_status"] == {**NO_LEADS, "PENDING": 2, "UNSUBSCRIBED": 1}
    assert stats["jobs_by_step"] == {"1": {**NO_JOBS, "PENDING": 2, "SKIPPED": 1}, "2": NO_JOBS}
    assert (stats["sent"], stats["delivered"], stats["unsubscribed"]) == (0, 0, 1)


# --- edit ------------------------------------------------------------------------------------------


def test_patch_edits_only_drafts_and_a_refused_patch_changes_nothing(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    campaign = _create(client, auth_headers, pitch="Old pitch", daily_cap=40, steps=[{}, {"delay_days": 2}])

    answer = client.patch(f"/api/campaigns/{campaign['id']}", headers=auth_headers, json={
        "name": "Renamed", "daily_cap": 80, "steps": [{}, {"delay_days": 4}, {"delay_days": 6, "subject_hint": "last"}],
    })

    assert answer.status_code == 200, answer.text
    stored = _detail(client, auth_headers, campaign["id"])
    assert (stored["name"], stored["daily_cap"], stored["pitch"]) == ("Renamed", 80, "Old pitch")
    assert [(s["number"], s["delay_days"], s["subject_hint"]) for s in stored["steps"]] == [
        (1, 0, ""), (2, 4, ""), (3, 6, "last"),
    ]

    # A refused edit changes nothing: valid alone, this ends the window before the stored start hour.
    assert client.patch(f"/api/campaigns/{campaign['id']}", headers=auth_headers,
                        json={"window_start_hour": 9, "window_end_hour": 17}).status_code == 200
    refused = client.patch(f"/api/campaigns/{campaign['id']}", headers=auth_headers,
                           json={"name": "Renamed again", "window_end_hour": 8, "steps": [{}]})
    assert refused.status_code in (400, 422)
    assert "window_start_hour" in refused.text
    stored = _detail(client, auth_headers, campaign["id"])
    assert (stored["name"], stored["window_start_hour"], stored["window_end_hour"]) == ("Renamed", 9, 17)
    assert len(stored["steps"]) == 3

    # Once launched, settings are frozen.
    launched = _ready(client, auth_headers, name="Launched")
    assert client.post(f"/api/campaigns/{launched['id']}/launch", headers=auth_headers).status_code == 200
    frozen = client.patch(f"/api/campaigns/{launched['id']}", json={"name": "Renamed"}, headers=auth_headers)
    assert frozen.status_code == 409
    assert "Only a DRAFT campaign can be edited" in frozen.json()["detail"]
    assert "ACTIVE" in frozen.json()["detail"]
    assert _detail(client, auth_headers, launched["id"])["name"] == "Launched"




# --- launch ----------------------------------------------------------------------------------------


def test_launch_preflight_lists_every_problem(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    campaign = _create(client, auth_headers, steps=[{}, {"delay_days": 2}])
    launch = f"/api/campaigns/{campaign['id']}/launch"

    empty = client.post(launch, headers=auth_headers)

    assert empty.status_code == 422
    assert empty.json()["detail"] == "The campaign cannot be launched yet."
    assert empty.json()["extra"] == [
        "The campaign has no leads waiting to be contacted.",
        "Step 1 has no template.",
        "Step 2 has no template.",
    ]

    # Leads now, one without a first name, and a template that needs one with no fallback.
    _add_leads(client, auth_headers, campaign["id"],
               {"email": "ada@one.example", "first_name": "Ada"}, {"email": "info@two.example"})
    _template(client, auth_headers, campaign["id"], 1, subject="Hello", body="Hi {{first_name}}, a short note.")

    lacking = client.post(launch, headers=auth_headers)

    assert lacking.status_code == 422
    problems = lacking.json()["extra"]
    assert len(problems) == 2, problems
    assert problems[0] == "Step 2 has no template."
    assert "{{first_name}}" in problems[1] and "1 lead(s) have no first_name" in problems[1]
    assert _detail(client, auth_headers, campaign["id"])["status"] == "DRAFT"
    assert _jobs(client, campaign["id"]) == 0


def test_launch_preflight_flags_a_custom_field_some_leads_lack(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """{{city}} is a real field (one lead has it), but the other lead has no city and there is no fallback:
    launching would queue an email that can only fail at send time."""
    campaign = _create(client, auth_headers)
    _add_leads(client, auth_headers, campaign["id"],
               {"email": "ada@one.example", "first_name": "Ada", "city": "Oslo"},
               {"email": "bo@two.example", "first_name": "Bo"})
    _template(client, auth_headers, campaign["id"], 1, subject="Hello", body="How is {{city}} these days?")

    answer = client.post(f"/api/campaigns/{campaign['id']}/launch", headers=auth_headers)

    assert answer.status_code == 422, answer.text
    problems = answer.json()["extra"]
    assert len(problems) == 1 and "{{city}}" in problems[0] and "1 lead(s)" in problems[0], problems


def test_launch_queues_one_email_per_eligible_lead(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    campaign = _create(client, auth_headers, steps=[{}, {"delay_days": 3}])
    csv = (FIXTURES / "leads" / "apollo_export.csv").read_bytes()
    imported = client.post(f"/api/campaigns/{campaign['id']}/leads/import", headers=auth_headers,
                           files={"data": ("apollo_export.csv", csv, "text/csv")})
    assert imported.json()["stored"] == 6
    for step in (1, 2):
        _template(client, auth_headers, campaign["id"], step)
    owner = client.get("/api/auth/me", headers=auth_headers).json()["id"]
    with client.app.state.services.sessions() as session:  # suppressed after import: stored, never mailed
        session.add(Suppression(owner_id=owner, email="priya@kestrellabs.ai", reason="manual"))
        session.commit()

    answer = client.post(f"/api/campaigns/{campaign['id']}/launch", headers=auth_headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["queued_emails"] == 5
    assert answer.json()["campaign"]["status"] == "ACTIVE"
    assert answer.json()["campaign"]["launched_at"] is not None
    stats = _detail(client, auth_headers, campaign["id"])["stats"]
    assert stats["jobs_by_step"] == {"1": {**NO_JOBS, "PENDING": 5}, "2": NO_JOBS}
    assert stats["leads_by_status"]["PENDING"] == 6


def test_pause_resume_and_invalid_transitions_are_409(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    campaign = _ready(client, auth_headers, leads=2)
    cid = campaign["id"]

    pause_draft = client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers)
    assert pause_draft.status_code == 409
    assert pause_draft.json()["detail"] == "Cannot pause a DRAFT campaign (only ACTIVE)."
    resume_draft = client.post(f"/api/campaigns/{cid}/resume", headers=auth_headers)
    assert resume_draft.status_code == 409
    assert resume_draft.json()["detail"] == "Cannot resume a DRAFT campaign (only PAUSED)."

    assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).json()["queued_emails"] == 2
    resume_active = client.post(f"/api/campaigns/{cid}/resume", headers=auth_headers)
    assert resume_active.status_code == 409
    assert resume_active.json()["detail"] == "Cannot resume a ACTIVE campaign (only PAUSED)."
    launch_again = client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers)
    assert launch_again.status_code == 409
    assert launch_again.json()["detail"] == "Cannot launch a ACTIVE campaign (only DRAFT)."

    assert _detail(client, auth_headers, cid)["status"] == "ACTIVE"
    assert _jobs(client, cid) == 2  # the second launch queued nothing

    paused = client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers)
    assert paused.status_code == 200
    assert paused.json()["status"] == "PAUSED"
    assert _detail(client, auth_headers, cid)["status"] == "PAUSED"
    pause_paused = client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers)
    assert pause_paused.status_code == 409
    assert pause_paused.json()["detail"] == "Cannot pause a PAUSED campaign (only ACTIVE)."
    launch_paused = client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers)
    assert launch_paused.status_code == 409

    resumed = client.post(f"/api/campaigns/{cid}/resume", headers=auth_headers)
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "ACTIVE"
    assert _detail(client, auth_headers, cid)["status"] == "ACTIVE"
    assert _jobs(client, cid) == 2


def test_leads_added_while_paused_are_queued_on_resume(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    """Leads added to an ACTIVE campaign get their first email; leads added while it is paused must too."""
    campaign = _ready(client, auth_headers, leads=1)
    cid = campaign["id"]
    assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).json()["queued_emails"] == 1
    assert client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers).status_code == 200
    _add_leads(client, auth_headers, cid, {"email": "late1@new.example"}, {"email": "late2@new.example"})

    assert client.post(f"/api/campaigns/{cid}/resume", headers=auth_headers).status_code == 200

    stats = _detail(client, auth_headers, cid)["stats"]
    assert stats["leads_by_status"]["PENDING"] == 3
    assert stats["jobs_by_step"]["1"]["PENDING"] == 3, stats["jobs_by_step"]


# --- duplicate -------------------------------------------------------------------------------------


def test_duplicate_copies_settings_steps_and_templates_but_not_leads(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    original = _ready(client, auth_headers, leads=2, steps=2, pitch="We audit freight invoices.", tone="direct",
                      sender_name="Ada", sender_email="ada@sender.example", timezone="America/Denver",
                      window_start_hour=8, window_end_hour=18, send_days="1234", daily_cap=75)
    assert client.post(f"/api/campaigns/{original['id']}/launch", headers=auth_headers).status_code == 200

    answer = client.post(f"/api/campaigns/{original['id']}/duplicate", headers=auth_headers)

    assert answer.status_code == 201, answer.text
    copy = answer.json()
    assert copy["id"] != original["id"]
    assert copy["name"] == "Freight audit (copy)"
    assert copy["status"] == "DRAFT" and copy["launched_at"] is None
    for key in ("pitch", "tone", "sender_name", "sender_email", "timezone", "window_start_hour", "window_end_hour",
                "send_days", "daily_cap", "steps"):
        assert copy[key] == original[key], key

    def templates(campaign_id: int) -> list[tuple[int, str, str, str]]:
        items = client.get(f"/api/campaigns/{campaign_id}/templates", headers=auth_headers).json()
        return [(t["step_number"], t["variant"], t["subject"], t["body"]) for t in items]

    assert len(templates(original["id"])) == 2
    assert templates(copy["id"]) == templates(original["id"])
    assert client.get(f"/api/campaigns/{copy['id']}/leads", headers=auth_headers).json()["total"] == 0
    assert _detail(client, auth_headers, copy["id"])["stats"]["leads_total"] == 0
    assert _jobs(client, copy["id"]) == 0
    assert _detail(client, auth_headers, original["id"])["status"] == "ACTIVE"
    assert client.get(f"/api/campaigns/{original['id']}/leads", headers=auth_headers).json()["total"] == 2


# --- sender, completion, rates, pacing settings, concurrent changes --------------------------------


def test_launch_needs_a_sender_address_when_no_real_from_is_configured(tmp_path: Path, database_url: str) -> None:
    # The shipped FROM_EMAIL is a placeholder with no mailbox: a campaign without its own address cannot send.
    settings = make_settings(tmp_path, database_url, from_email="outreach@localhost")
    assert settings.outbox_dir is not None
    outbox = settings.outbox_dir
    with TestClient(create_app(settings)) as client:
        headers = sign_in(client, "operator@company.example", lambda: latest_outbox_token(outbox))
        senderless = _ready(client, headers)
        answer = client.post(f"/api/campaigns/{senderless['id']}/launch", headers=headers)
        assert answer.status_code == 422, answer.text
        assert len(answer.json()["extra"]) == 1 and "no sender address" in answer.json()["extra"][0], answer.text
        assert _jobs(client, senderless["id"]) == 0
        signed = _ready(client, headers, name="Signed", sender_email="ada@sender.example")
        assert client.post(f"/api/campaigns/{signed['id']}/launch", headers=headers).status_code == 200


def _job_states(client: TestClient[Any], campaign_id: int) -> list[tuple[str, str | None]]:
    with client.app.state.services.sessions() as session:
        rows = session.execute(select(EmailJob.status, EmailJob.last_error).where(EmailJob.campaign_id == campaign_id))
        return sorted((status.value, error) for status, error in rows)


def test_complete_ends_an_active_or_paused_campaign_and_skips_what_is_pending(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _ready(client, auth_headers, leads=2)["id"]
    draft = client.post(f"/api/campaigns/{cid}/complete", headers=auth_headers)
    assert draft.status_code == 409
    assert draft.json()["detail"] == "Cannot complete a DRAFT campaign (only ACTIVE or PAUSED)."
    assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).json()["queued_emails"] == 2

    answer = client.post(f"/api/campaigns/{cid}/complete", headers=auth_headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["skipped_emails"] == 2
    assert answer.json()["campaign"]["status"] == "COMPLETED"
    assert answer.json()["campaign"]["completed_at"] is not None
    assert _job_states(client, cid) == [("SKIPPED", "campaign completed")] * 2
    again = client.post(f"/api/campaigns/{cid}/complete", headers=auth_headers)
    assert again.status_code == 409
    assert again.json()["detail"] == "Cannot complete a COMPLETED campaign (only ACTIVE or PAUSED)."
    assert client.post(f"/api/campaigns/{cid}/resume", headers=auth_headers).status_code == 409

    paused = _ready(client, auth_headers, leads=1, name="Paused")["id"]
    assert client.post(f"/api/campaigns/{paused}/launch", headers=auth_headers).status_code == 200
    assert client.post(f"/api/campaigns/{paused}/pause", headers=auth_headers).status_code == 200
    completed = client.post(f"/api/campaigns/{paused}/complete", headers=auth_headers)
    assert completed.status_code == 200, completed.text
    assert (completed.json()["campaign"]["status"], completed.json()["skipped_emails"]) == ("COMPLETED", 1)


def test_the_sweep_completes_a_paused_campaign_with_nothing_left_to_send(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    finished = _ready(client, auth_headers, leads=1, name="Finished")["id"]
    waiting = _ready(client, auth_headers, leads=1, name="Waiting")["id"]
    for cid in (finished, waiting):
        assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).status_code == 200
        assert client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers).status_code == 200
    _add_leads(client, auth_headers, waiting, {"email": "late@new.example", "first_name": "Late"})
    with client.app.state.services.sessions() as session:  # every queued email went out before the pause
        session.execute(update(EmailJob).values(status=JobStatus.SENT, sent_at=datetime.now(UTC)))
        session.commit()
        assert complete_finished_campaigns(session) == 1
        session.commit()

    assert _detail(client, auth_headers, finished)["status"] == "COMPLETED"
    assert _detail(client, auth_headers, waiting)["status"] == "PAUSED"  # resuming would queue the late lead


def test_stats_give_delivery_and_unsubscribe_rates_beside_the_counts(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _ready(client, auth_headers, leads=4)["id"]
    assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).json()["queued_emails"] == 4
    now = datetime.now(UTC)
    with client.app.state.services.sessions() as session:
        jobs = session.scalars(select(EmailJob).where(EmailJob.campaign_id == cid).order_by(EmailJob.id)).all()
        for n, job in enumerate(jobs):
            job.status, job.sent_at, job.delivered_at = JobStatus.SENT, now, now if n < 3 else None
        leads = session.scalars(select(Lead).where(Lead.campaign_id == cid).order_by(Lead.id)).all()
        for lead, status in zip(leads, ("CONTACTED", "CONTACTED", "REPLIED", "UNSUBSCRIBED"), strict=True):
            lead.status = LeadStatus(status)
        session.commit()

    stats = _detail(client, auth_headers, cid)["stats"]

    assert (stats["sent"], stats["delivered"], stats["replied"], stats["unsubscribed"]) == (4, 3, 1, 1)
    assert (stats["delivery_rate"], stats["reply_rate"], stats["unsubscribe_rate"], stats["bounce_rate"]) == \
        (0.75, 0.25, 0.25, 0.0)


def test_send_gap_and_postal_address_are_set_read_and_duplicated(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    defaults = _create(client, auth_headers, name="Defaults")
    assert (defaults["send_gap_seconds"], defaults["postal_address"]) == (0, None)
    campaign = _create(client, auth_headers, send_gap_seconds=90, postal_address="1 Dock Road, Leith")
    assert (campaign["send_gap_seconds"], campaign["postal_address"]) == (90, "1 Dock Road, Leith")

    patched = client.patch(f"/api/campaigns/{campaign['id']}", headers=auth_headers,
                           json={"send_gap_seconds": 30, "postal_address": "2 Quay Street, Leith"})
    assert patched.status_code == 200, patched.text
    detail = _detail(client, auth_headers, campaign["id"])
    assert (detail["send_gap_seconds"], detail["postal_address"]) == (30, "2 Quay Street, Leith")
    refused = client.post("/api/campaigns", headers=auth_headers, json={"name": "x", "send_gap_seconds": -1})
    assert refused.status_code == 400
    assert [e["key"] for e in refused.json()["extra"]] == ["send_gap_seconds"]

    copy = client.post(f"/api/campaigns/{campaign['id']}/duplicate", headers=auth_headers).json()
    assert (copy["send_gap_seconds"], copy["postal_address"]) == (30, "2 Quay Street, Leith")


def test_concurrent_launches_are_one_launch_and_conflicts(tmp_path: Path, postgres_url: str) -> None:
    # The campaign row is locked before its status is checked: the other launches wait, then see ACTIVE.
    settings = make_settings(tmp_path, postgres_url)
    assert settings.outbox_dir is not None
    outbox = settings.outbox_dir
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(4) as pool:
        headers = sign_in(client, "operator@company.example", lambda: latest_outbox_token(outbox))
        for attempt in range(3):
            cid = _ready(client, headers, leads=300, name=f"Race {attempt}")["id"]
            launches = [pool.submit(client.post, f"/api/campaigns/{cid}/launch", headers=headers) for _ in range(4)]
            answers = sorted((a.status_code, a.json().get("queued_emails")) for a in (f.result() for f in launches))
            assert answers == [(200, 300), (409, None), (409, None), (409, None)], (attempt, answers)
            assert _jobs(client, cid) == 300
