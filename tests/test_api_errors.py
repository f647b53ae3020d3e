"""Every error answers in one shape (RFC 9457 problem details), and bad input is a 4xx, never a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import func, select

from outreach_api.app import create_app
from outreach_pipeline.db.models import Campaign, WebhookEvent
from tests.fixtures import WEBHOOK_AUTH, make_settings

PROBLEM = "application/problem+json"


def _problem(answer: Any, status: int, detail: str | None = None) -> dict[str, Any]:
    """The answer is a problem document with this status (and detail, when given)."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM), answer.headers["content-type"]
    body: dict[str, Any] = answer.json()
    assert {key: body[key] for key in ("type", "status")} == {"type": "about:blank", "status": status}
    assert body["title"] and body["detail"], body
    if detail is not None:
        assert body["detail"] == detail, body
    return body


def _campaigns(client: TestClient[Any]) -> int:
    with client.app.state.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(Campaign)) or 0


def test_domain_and_http_errors_share_one_shape(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    _problem(client.get("/api/campaigns/404", headers=auth_headers), 404, "Campaign 404 not found.")
    _problem(client.get("/api/campaigns"), 401)
    _problem(client.get("/api/no-such-route", headers=auth_headers), 404)
    _problem(client.delete("/api/campaigns", headers=auth_headers), 405)
    launch = _problem(client.post(f"/api/campaigns/{_draft(client, auth_headers)}/launch", headers=auth_headers),
                      422, "The campaign cannot be launched yet.")
    assert "The campaign has no leads waiting to be contacted." in launch["extra"]  # every problem, listed
    unauthorised = client.post("/api/webhooks/postmark", json={})
    _problem(unauthorised, 401)
    assert unauthorised.headers["www-authenticate"] == 'Basic realm="webhooks"'  # headers survive the reshaping


def _draft(client: TestClient[Any], headers: dict[str, str]) -> int:
    answer = client.post("/api/campaigns", json={"name": "Draft"}, headers=headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_validation_errors_name_the_field(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "wrong type": ({"json": {"name": "x", "daily_cap": "many"}}, "daily_cap"),
        "huge string": ({"json": {"name": "x" * 100_000}}, "name"),
        "unknown enum in a query": ({"params": {"status": "SHIPPED"}}, "status"),
        "not a number in a query": ({"params": {"limit": "ten"}}, "limit"),
        "out of bounds in a query": ({"params": {"offset": str(10**30)}}, "offset"),
        "window hours in the wrong order": ({"json": {"name": "x", "window_start_hour": 20, "window_end_hour": 10}},
                                            "window_end_hour"),
    }
    for case, (kwargs, field) in cases.items():
        method = "POST" if "json" in kwargs else "GET"
        body = _problem(client.request(method, "/api/campaigns", headers=auth_headers, **kwargs), 400)
        assert [error["key"] for error in body["extra"]] == [field], case
        assert all(error["message"] for error in body["extra"]), case
    assert _campaigns(client) == 0


def test_unreadable_bodies_are_400_and_oversized_ones_413(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    as_json = {**auth_headers, "Content-Type": "application/json"}
    for name, body in {
        "malformed JSON": b'{"name": ',
        "not UTF-8": b'{"name": "caf\xe9"}',
        "a JSON array": b'[{"name": "x"}]',
        "JSON null": b"null",
    }.items():
        _problem(client.post("/api/campaigns", content=body, headers=as_json), 400)
        _problem(client.post("/api/auth/magic-link", content=body, headers={"Content-Type": "application/json"}), 400)
        assert _campaigns(client) == 0, name
    assert "UTF-8" in client.post("/api/campaigns", content=b'{"name": "\xff"}', headers=as_json).json()["detail"]

    oversized = b'{"name": "' + b"x" * 2_100_000 + b'"}'  # over MAX_REQUEST_BODY_BYTES (2 MB by default)
    _problem(client.post("/api/campaigns", content=oversized, headers=as_json), 413)
    _problem(client.post("/api/auth/magic-link", content=b'{"email": "' + oversized, headers=as_json), 413)
    assert _campaigns(client) == 0


def test_ids_beyond_what_the_database_holds_are_4xx(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    for campaign_id in (2**63, 10**30):
        for path in ("", "/leads", "/templates", "/leads/export"):
            answer = client.get(f"/api/campaigns/{campaign_id}{path}", headers=auth_headers)
            assert 400 <= answer.status_code < 500, (campaign_id, path, answer.text)
            _problem(answer, answer.status_code)


def test_the_body_limit_is_a_setting_and_webhooks_take_large_inbound_mail(tmp_path: Path, database_url: str) -> None:
    small = make_settings(tmp_path, database_url, max_request_body_bytes=4096)
    with TestClient(create_app(small)) as client:
        _problem(client.post("/api/auth/magic-link", json={"email": "a@b.example", "pad": "x" * 5000}), 413)
        # An inbound email with a 3 MB attachment is far over the API's limit and still accepted.
        inbound = {"RecordType": "Inbound", "MessageID": "big-1", "From": "x@y.example", "Subject": "Files",
                   "Attachments": [{"Name": "a.pdf", "Content": "QUJD" * 750_000, "ContentType": "application/pdf"}]}
        answer = client.post("/api/webhooks/postmark", json=inbound, auth=WEBHOOK_AUTH)
        assert answer.status_code == 200, answer.text
        # Without credentials, nothing is read or stored, whatever the size.
        _problem(client.post("/api/webhooks/postmark", json=inbound), 401)
        with client.app.state.services.sessions() as session:
            assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1


def test_webhook_payloads_the_store_cannot_hold_are_422(client: TestClient[Any]) -> None:
    for payload, message in (
        ({"RecordType": "D" * 33, "MessageID": "m-1"}, "RecordType is longer than 32 characters."),
        ({"RecordType": "Delivery", "MessageID": "m" * 151}, "MessageID is longer than 150 characters."),
        ({"RecordType": "Bounce", "ID": 10**200, "MessageID": "m-2"}, "ID is longer than 150 characters."),
    ):
        _problem(client.post("/api/webhooks/postmark", json=payload, auth=WEBHOOK_AUTH), 422, message)
    # Fields of the wrong type where a reply is read are taken as absent, not as a crash.
    odd = {"RecordType": "Inbound", "MessageID": "odd-1", "MailboxHash": 5, "Headers": "x", "From": ["a"],
           "Subject": {"x": 1}, "FromFull": "nobody"}
    answer = client.post("/api/webhooks/postmark", json=odd, auth=WEBHOOK_AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "reply matched no lead; kept for review"
    _problem(client.post("/api/webhooks/postmark", content=b'{"RecordType": "\xff"}', auth=WEBHOOK_AUTH,
                         headers={"Content-Type": "application/json"}), 400)


def test_a_window_order_a_patch_breaks_names_the_hour_it_set(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    campaign = client.post("/api/campaigns", json={"name": "x", "window_end_hour": 18}, headers=auth_headers).json()
    body = _problem(client.patch(f"/api/campaigns/{campaign['id']}", json={"window_start_hour": 20},
                                 headers=auth_headers), 422)
    assert [error["key"] for error in body["extra"]] == ["window_start_hour"]


def test_a_deeply_nested_body_is_a_400_not_a_crash(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    as_json = {"Content-Type": "application/json"}
    for path, headers, body in (
        ("/api/campaigns", {**auth_headers, **as_json}, b'{"name": "x", "pitch": ' + deep + b"}"),
        ("/api/auth/magic-link", as_json, deep),
    ):
        _problem(client.post(path, content=body, headers=headers), 400, "The JSON body is nested too deeply to read.")
    assert _campaigns(client) == 0


def test_a_missing_or_null_body_is_named_as_such(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    as_json = {**auth_headers, "Content-Type": "application/json"}
    for body, detail in ((b"", "The request body is missing: send a JSON object."),
                         (b"null", "The request body is not a JSON object (null, an array or a bare value was sent).")):
        for path in ("/api/campaigns", "/api/auth/magic-link"):
            problem = _problem(client.post(path, content=body, headers=as_json), 400, detail)
            assert problem["extra"] == [{"key": "body", "message": detail, "source": "body"}]


def test_ids_past_an_integer_key_are_404(client: TestClient[Any], auth_headers: dict[str, str]) -> None:
    draft = _draft(client, auth_headers)
    for campaign_id in (2**31, 2**63, 10**30):
        for path in ("", "/leads", "/templates", "/leads/export"):
            _problem(client.get(f"/api/campaigns/{campaign_id}{path}", headers=auth_headers), 404)
        _problem(client.post(f"/api/campaigns/{campaign_id}/launch", headers=auth_headers), 404)
        _problem(client.post(f"/api/campaigns/{draft}/leads/copy", json={"source_campaign_id": campaign_id},
                             headers=auth_headers), 404)
        _problem(client.patch(f"/api/campaigns/{draft}/templates/{campaign_id}", json={"subject": "x"},
                              headers=auth_headers), 404)
