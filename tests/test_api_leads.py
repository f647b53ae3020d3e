"""Leads through the HTTP API: CSV uploads, JSON rows, copies between campaigns, listing."""

from __future__ import annotations

import csv
import io
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import func, select

from outreach_pipeline.db.models import Lead, Suppression
from outreach_pipeline.settings import Settings
from tests.fixtures import PROVIDER_FIXTURES

FIXTURES = PROVIDER_FIXTURES
APOLLO = (FIXTURES / "leads" / "apollo_export.csv").read_bytes()
HUBSPOT = (FIXTURES / "leads" / "hubspot_export.csv").read_bytes()

APOLLO_STORED = {
    "maya.okafor@brightloop.io",
    "dreyes@northwindfreight.com",
    "priya@kestrellabs.ai",
    "t.becker@alpenhof-logistik.de",
    "SARAH@harborandpine.com",  # the domain is lower-cased; the local part keeps its case
    "lucas@tropa.digital",
}


def _campaign(client: TestClient[Any], headers: dict[str, str], name: str = "Freight audit") -> int:
    answer = client.post("/api/campaigns", json={"name": name}, headers=headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _upload(client: TestClient[Any], headers: dict[str, str], campaign_id: int, name: str, data: bytes) -> Any:
    return client.post(f"/api/campaigns/{campaign_id}/leads/import", headers=headers,
                       files={"data": (name, data, "text/csv")})


def _leads(client: TestClient[Any], headers: dict[str, str], campaign_id: int, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/api/campaigns/{campaign_id}/leads{query}", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _by_email(page: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lead["email"]: lead for lead in page["items"]}


def _stored_count(client: TestClient[Any]) -> int:
    with client.app.state.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(Lead)) or 0


def _suppress(client: TestClient[Any], headers: dict[str, str], *addresses: str) -> None:
    owner = client.get("/api/auth/me", headers=headers).json()["id"]
    with client.app.state.services.sessions() as session:
        session.add_all(Suppression(owner_id=owner, email=a, reason="manual") for a in addresses)
        session.commit()


# --- CSV uploads -----------------------------------------------------------------------------------


def test_import_the_apollo_export(client: TestClient[Any], auth_headers: dict[str, str], settings: Settings) -> None:
    cid = _campaign(client, auth_headers)

    answer = _upload(client, auth_headers, cid, "apollo_export.csv", APOLLO)

    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (8, 6, 2)
    assert report["rejected_by_reason"] == {"invalid email": 1, "duplicate in file": 1}
    assert report["first_rejects"] == [
        {"line": 8, "email": "aiko.tanaka@mizuhocraft", "reason": "invalid email"},
        {"line": 9, "email": "DReyes@northwindfreight.com", "reason": "duplicate in file"},
    ]

    page = _leads(client, auth_headers, cid)
    assert page["total"] == 6
    leads = _by_email(page)
    assert set(leads) == APOLLO_STORED
    maya = leads["maya.okafor@brightloop.io"]
    assert (maya["first_name"], maya["last_name"], maya["company"], maya["title"]) == (
        "Maya", "Okafor", "Brightloop Analytics", "Head of Growth")
    assert maya["status"] == "PENDING"
    assert maya["custom_fields"]["city"] == "Austin"
    assert maya["custom_fields"]["seniority"] == "Head"
    assert leads["priya@kestrellabs.ai"]["company"] == "Kestrel Labs, Inc."  # a quoted comma
    assert "person_linkedin_url" not in leads["t.becker@alpenhof-logistik.de"]["custom_fields"]  # empty cell

    # The rejects report lands next to the data, one row per reject.
    reports = list((settings.data_dir / "imports" / str(cid)).glob("*.rejects.csv"))
    assert len(reports) == 1
    rows = list(csv.reader(io.StringIO(reports[0].read_text())))
    assert rows == [["line", "email", "reason"], ["8", "aiko.tanaka@mizuhocraft", "invalid email"],
                    ["9", "DReyes@northwindfreight.com", "duplicate in file"]]


def test_import_the_hubspot_export_then_reimport_it(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)

    answer = _upload(client, auth_headers, cid, "hubspot_export.csv", HUBSPOT)

    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (5, 4, 1)
    assert report["rejected_by_reason"] == {"invalid email": 1}
    assert report["first_rejects"] == [{"line": 5, "email": "chen.wei@@lotusfin.cn", "reason": "invalid email"}]
    leads = _by_email(_leads(client, auth_headers, cid))
    assert set(leads) == {"elena.petrova@vostok-soft.com", "jwhitfield@meridianhealth.org",
                          "info@acme-widgets.com", "fatima.zahra@atlasbuild.ma"}
    role = leads["info@acme-widgets.com"]  # no names: still a lead
    assert (role["first_name"], role["last_name"], role["company"]) == (None, None, "Acme Widgets")
    elena = leads["elena.petrova@vostok-soft.com"]
    assert elena["title"] == "Head of Partnerships"
    assert elena["custom_fields"]["record_id"] == "501"
    assert elena["custom_fields"]["phone_number"] == "+44 20 7946 0018"
    assert leads["fatima.zahra@atlasbuild.ma"]["title"] == "Director, Strategy"

    # The same file again: every row already in the campaign is rejected as such, nothing is stored twice.
    again = _upload(client, auth_headers, cid, "hubspot_export.csv", HUBSPOT)
    assert again.status_code == 201
    report = again.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (5, 0, 5)
    assert report["rejected_by_reason"] == {"already in campaign": 4, "invalid email": 1}
    assert {r["line"] for r in report["first_rejects"] if r["reason"] == "already in campaign"} == {2, 3, 4, 6}
    assert _leads(client, auth_headers, cid)["total"] == 4


def test_a_file_that_is_not_a_lead_list_is_refused_and_stores_nothing(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    cid = _campaign(client, auth_headers)
    refused = {
        "no email column": (b"First Name,Company\nAda,Acme\n", "No email column found"),
        "empty": (b"", "The file is empty."),
        "header only": (b"Email,First Name\n", "The file has a header but no rows."),
    }
    for case, (data, message) in refused.items():
        answer = _upload(client, auth_headers, cid, "leads.csv", data)
        assert answer.status_code == 422, (case, answer.text)
        assert message in answer.json()["detail"], case

    row = b"someone@big-list.example,Someone\n"
    huge = b"email,first_name\n" + row * (20 * 1024 * 1024 // len(row) + 10)
    assert len(huge) > 20 * 1024 * 1024
    too_large = _upload(client, auth_headers, cid, "huge.csv", huge)
    assert too_large.status_code == 413

    assert _leads(client, auth_headers, cid)["total"] == 0
    assert _stored_count(client) == 0


def test_a_multipart_upload_without_a_file_part_is_a_400(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)

    answer = client.post(f"/api/campaigns/{cid}/leads/import", headers=auth_headers,
                         files={"note": (None, "no file here")})

    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "no file part" in answer.json()["detail"]
    assert _stored_count(client) == 0


def test_semicolon_and_windows_1252_files_import(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)
    semicolons = "E-mail;First Name;Company\nana@uno.example;Ana;Uno, S.L.\nben@dos.example;Ben;Dos\n"
    excel = "Email Address,First Name,Last Name,Company\nrene@tres.example,René,Müller,Café Crème GmbH\n" \
            "zoe@cuatro.example,Zoe,Brown,Cuatro\n"

    first = _upload(client, auth_headers, cid, "semicolons.csv", semicolons.encode())
    second = _upload(client, auth_headers, cid, "excel.csv", excel.encode("cp1252"))

    assert first.status_code == 201, first.text
    assert (first.json()["stored"], first.json()["rejected"]) == (2, 0)
    assert second.status_code == 201, second.text
    assert (second.json()["stored"], second.json()["rejected"]) == (2, 0)
    leads = _by_email(_leads(client, auth_headers, cid))
    assert (leads["ana@uno.example"]["first_name"], leads["ana@uno.example"]["company"]) == ("Ana", "Uno, S.L.")
    rene = leads["rene@tres.example"]
    assert (rene["first_name"], rene["last_name"], rene["company"]) == ("René", "Müller", "Café Crème GmbH")


def test_a_short_windows_1252_file_ending_in_an_accent_imports(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """Excel's 'CSV' on Windows writes cp1252; a file whose only accented letter is at its very end is common."""
    cid = _campaign(client, auth_headers)
    data = "email,first_name\nzoe@cuatro.example,Zoë\n".encode("cp1252")

    answer = _upload(client, auth_headers, cid, "excel.csv", data)

    assert answer.status_code == 201, answer.text
    assert answer.json()["stored"] == 1
    assert _leads(client, auth_headers, cid)["items"][0]["first_name"] == "Zoë"


# --- JSON, suppression, copies, listing ------------------------------------------------------------


def test_add_leads_as_json_with_custom_fields(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)

    answer = client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers, json={"leads": [
        {"email": "ada@one.example", "first_name": "Ada", "company": "One", "plan": "pro", "seats": 12},
        {"email": "not-an-address"},
        {"email": "ADA@ONE.EXAMPLE"},
        {"email": "bo@two.example", "timezone": "Europe/Oslo"},
    ]})

    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (4, 2, 2)
    assert report["first_rejects"] == [
        {"line": 2, "email": "not-an-address", "reason": "invalid email"},
        {"line": 3, "email": "ADA@one.example", "reason": "duplicate in file"},
    ]
    leads = _by_email(_leads(client, auth_headers, cid))
    assert set(leads) == {"ada@one.example", "bo@two.example"}
    ada = leads["ada@one.example"]
    assert (ada["first_name"], ada["company"]) == ("Ada", "One")
    assert ada["custom_fields"] == {"plan": "pro", "seats": "12"}
    assert leads["bo@two.example"]["timezone"] == "Europe/Oslo"
    assert leads["bo@two.example"]["custom_fields"] == {}

    empty = client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers, json={"leads": []})
    assert empty.status_code == 400


def test_leads_joining_a_running_campaign_need_the_fields_its_templates_use(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    """Launch checked the first leads; later ones lacking a field a template uses without fallback would fail
    at send, so each is rejected in the report with the fields it lacks."""
    cid = _campaign(client, auth_headers)
    first = {"email": "ada@one.example", "first_name": "Ada", "city": "Oslo"}
    assert client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers, json={"leads": [first]}).status_code == 201
    template = {"step_number": 1, "subject": "Hello {{company|there}}", "body": "Hi {{first_name}}, how is {{city}}?"}
    assert client.post(f"/api/campaigns/{cid}/templates", headers=auth_headers, json=template).status_code == 201
    assert client.post(f"/api/campaigns/{cid}/launch", headers=auth_headers).status_code == 200

    answer = client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers, json={"leads": [
        {"email": "bo@two.example", "first_name": "Bo"},
        {"email": "cy@three.example", "first_name": "  ", "city": "Bergen"},
        {"email": "dee@four.example"},
        {"email": "eve@five.example", "first_name": "Eve", "city": "Leith"},
    ]})

    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (4, 1, 3)
    assert report["first_rejects"] == [
        {"line": 1, "email": "bo@two.example", "reason": "missing field: city"},
        {"line": 2, "email": "cy@three.example", "reason": "missing field: first_name"},
        {"line": 3, "email": "dee@four.example", "reason": "missing field: city, first_name"},
    ]
    assert client.post(f"/api/campaigns/{cid}/pause", headers=auth_headers).status_code == 200
    upload = _upload(client, auth_headers, cid, "late.csv",
                     b"email,First Name,City\nfay@six.example,Fay,Leith\ngus@seven.example,,Leith\n")
    assert upload.status_code == 201, upload.text
    assert (upload.json()["stored"], upload.json()["rejected_by_reason"]) == (1, {"missing field: first_name": 1})
    assert set(_by_email(_leads(client, auth_headers, cid))) == {
        "ada@one.example", "eve@five.example", "fay@six.example"}

    draft = _campaign(client, auth_headers, name="Draft")  # a DRAFT's leads are checked at launch instead
    by_name = {"step_number": 1, "subject": "Hello", "body": "Hi {{first_name}}"}
    assert client.post(f"/api/campaigns/{draft}/templates", headers=auth_headers, json=by_name).status_code == 201
    added = client.post(f"/api/campaigns/{draft}/leads", headers=auth_headers,
                        json={"leads": [{"email": "h@x.example"}]})
    assert added.json()["stored"] == 1, added.text


def test_a_suppressed_address_is_rejected(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)
    _suppress(client, auth_headers, "sarah@harborandpine.com", "lucas@tropa.digital")

    answer = _upload(client, auth_headers, cid, "apollo_export.csv", APOLLO)

    report = answer.json()
    assert (report["stored"], report["rejected"]) == (4, 4)
    assert report["rejected_by_reason"] == {"invalid email": 1, "duplicate in file": 1, "suppressed": 2}
    suppressed = [r for r in report["first_rejects"] if r["reason"] == "suppressed"]
    assert suppressed == [  # matched whatever the case of the address in the file
        {"line": 6, "email": "SARAH@harborandpine.com", "reason": "suppressed"},
        {"line": 7, "email": "lucas@tropa.digital", "reason": "suppressed"},
    ]
    assert set(_by_email(_leads(client, auth_headers, cid))) == APOLLO_STORED - {
        "SARAH@harborandpine.com", "lucas@tropa.digital"}

    json_add = client.post(f"/api/campaigns/{cid}/leads", headers=auth_headers,
                           json={"leads": [{"email": "Lucas@Tropa.Digital"}]})
    assert json_add.json()["rejected_by_reason"] == {"suppressed": 1}


def test_copy_leads_from_another_campaign_applies_dedupe_and_suppression(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    source = _campaign(client, auth_headers, "Source")
    target = _campaign(client, auth_headers, "Target")
    assert _upload(client, auth_headers, source, "hubspot_export.csv", HUBSPOT).json()["stored"] == 4
    client.post(f"/api/campaigns/{target}/leads", headers=auth_headers,
                json={"leads": [{"email": "jwhitfield@meridianhealth.org", "first_name": "Jim"}]})
    _suppress(client, auth_headers, "info@acme-widgets.com")

    answer = client.post(f"/api/campaigns/{target}/leads/copy", headers=auth_headers,
                         json={"source_campaign_id": source})

    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert (report["rows_read"], report["stored"], report["rejected"]) == (4, 2, 2)
    assert report["rejected_by_reason"] == {"already in campaign": 1, "suppressed": 1}
    leads = _by_email(_leads(client, auth_headers, target))
    assert set(leads) == {"jwhitfield@meridianhealth.org", "elena.petrova@vostok-soft.com",
                          "fatima.zahra@atlasbuild.ma"}
    assert leads["jwhitfield@meridianhealth.org"]["first_name"] == "Jim"  # the existing lead is kept as it was
    elena = leads["elena.petrova@vostok-soft.com"]
    assert (elena["first_name"], elena["company"], elena["status"]) == ("Elena", "Vostok Soft", "PENDING")
    assert elena["custom_fields"]["record_id"] == "501"
    assert _leads(client, auth_headers, source)["total"] == 4  # the source keeps its leads


def test_list_leads_filters_by_status_and_paginates(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cid = _campaign(client, auth_headers)
    assert _upload(client, auth_headers, cid, "apollo_export.csv", APOLLO).json()["stored"] == 6
    with client.app.state.services.sessions() as session:
        token = session.scalar(select(Lead.reply_token).where(Lead.email == "priya@kestrellabs.ai"))
    assert client.post(f"/unsubscribe/{token}").status_code == 200

    unsubscribed = _leads(client, auth_headers, cid, "?status=UNSUBSCRIBED")
    assert unsubscribed["total"] == 1
    assert [lead["email"] for lead in unsubscribed["items"]] == ["priya@kestrellabs.ai"]
    pending = _leads(client, auth_headers, cid, "?status=PENDING")
    assert pending["total"] == 5
    assert "priya@kestrellabs.ai" not in _by_email(pending)
    assert _leads(client, auth_headers, cid, "?status=REPLIED")["total"] == 0

    first = _leads(client, auth_headers, cid, "?limit=4")
    rest = _leads(client, auth_headers, cid, "?limit=4&offset=4")
    assert (first["total"], len(first["items"]), len(rest["items"])) == (6, 4, 2)
    assert set(_by_email(first)) | set(_by_email(rest)) == APOLLO_STORED
    assert client.get(f"/api/campaigns/{cid}/leads?status=LOST", headers=auth_headers).status_code == 400
