"""One user's campaigns are invisible to every other user: 404 (never 403, never a hint it exists)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from outreach_pipeline.settings import Settings
from tests.fixtures import latest_outbox_token, sign_in

CSV = b"email,first_name\nintruder@else.example,Eve\n"
CAMPAIGN = "/api/campaigns/{campaign_id:int}"
TEMPLATE = "{template_id:int}"
NOT_FOUND = {"type": "about:blank", "title": "Not Found", "status": 404}  # RFC 9457 problem details


def _campaign_routes(client: TestClient[Any]) -> set[tuple[str, str]]:
    """Every (method, path) of the app under one campaign, as the app declares them."""
    return {(method, route.path) for route in client.app.routes if isinstance(route, HTTPRoute)
            and route.path.startswith(CAMPAIGN) for method in route.methods - {"HEAD", "OPTIONS"}}


@pytest.fixture
def other_headers(client: TestClient[Any], settings: Settings, auth_headers: dict[str, str]) -> dict[str, str]:
    """A second signed-in user (signed in after the first)."""
    assert settings.outbox_dir is not None
    return sign_in(client, "other@rival.example", lambda: latest_outbox_token(settings.outbox_dir))


def _campaign(client: TestClient[Any], headers: dict[str, str], name: str) -> int:
    answer = client.post("/api/campaigns", json={"name": name, "steps": [{}, {"delay_days": 2}]}, headers=headers)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _owned_campaign(client: TestClient[Any], headers: dict[str, str]) -> tuple[int, int]:
    """The first user's DRAFT campaign with one lead and one template; returns (campaign id, template id)."""
    cid = _campaign(client, headers, "Mine")
    assert client.post(f"/api/campaigns/{cid}/leads", headers=headers,
                       json={"leads": [{"email": "ada@one.example", "first_name": "Ada"}]}).json()["stored"] == 1
    template = client.post(f"/api/campaigns/{cid}/templates", headers=headers,
                           json={"step_number": 1, "subject": "Mine", "body": "Hi {{first_name|there}}."})
    assert template.status_code == 201
    return cid, int(template.json()["id"])


def _snapshot(client: TestClient[Any], headers: dict[str, str], cid: int) -> tuple[Any, ...]:
    campaign = client.get(f"/api/campaigns/{cid}", headers=headers).json()
    leads = client.get(f"/api/campaigns/{cid}/leads", headers=headers).json()
    templates = client.get(f"/api/campaigns/{cid}/templates", headers=headers).json()
    return (campaign["name"], campaign["status"], campaign["steps"], campaign["stats"],
            [(lead["email"], lead["status"]) for lead in leads["items"]],
            [(t["id"], t["subject"], t["body"], t["source"]) for t in templates])


def test_another_user_gets_404_on_every_route_of_my_campaign_and_never_lists_it(
    client: TestClient[Any], auth_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    cid, tid = _owned_campaign(client, auth_headers)
    before = _snapshot(client, auth_headers, cid)
    own = _campaign(client, other_headers, "Theirs")
    valid: dict[tuple[str, str], dict[str, Any]] = {  # a valid request for each route, as its owner would send
        ("GET", CAMPAIGN): {},
        ("PATCH", CAMPAIGN): {"json": {"name": "Taken over"}},
        ("POST", f"{CAMPAIGN}/launch"): {},
        ("POST", f"{CAMPAIGN}/pause"): {},
        ("POST", f"{CAMPAIGN}/resume"): {},
        ("POST", f"{CAMPAIGN}/duplicate"): {},
        ("GET", f"{CAMPAIGN}/leads"): {},
        ("GET", f"{CAMPAIGN}/leads/export"): {},
        ("POST", f"{CAMPAIGN}/leads"): {"json": {"leads": [{"email": "intruder@else.example"}]}},
        ("POST", f"{CAMPAIGN}/leads/import"): {"files": {"data": ("leads.csv", CSV, "text/csv")}},
        ("POST", f"{CAMPAIGN}/leads/copy"): {"json": {"source_campaign_id": own}},
        ("GET", f"{CAMPAIGN}/templates"): {},
        ("POST", f"{CAMPAIGN}/templates"): {"json": {"step_number": 2, "subject": "Theirs", "body": "Hijacked."}},
        ("PATCH", f"{CAMPAIGN}/templates/{TEMPLATE}"): {"json": {"subject": "Hijacked"}},
        ("POST", f"{CAMPAIGN}/templates/generate"): {"json": {"step_number": 2}},
        ("POST", f"{CAMPAIGN}/templates/generate-all"): {"json": {"overwrite": True}},
        ("POST", f"{CAMPAIGN}/templates/{TEMPLATE}/rewrite"): {"json": {"instruction": "shorter"}},
    }
    routes = _campaign_routes(client)
    assert set(valid) <= routes, f"routes gone from the app: {sorted(set(valid) - routes)}"

    wrong: list[str] = []
    for method, template in sorted(routes):
        path = template.replace("{campaign_id:int}", str(cid)).replace(TEMPLATE, str(tid))
        path = re.sub(r"\{[a-z_]+:int\}", "1", path)
        kwargs = valid.get((method, template), {"json": {}} if method in ("POST", "PATCH", "PUT") else {})
        answer = client.request(method, path, headers=other_headers, **kwargs)
        if (method, template) not in valid and answer.status_code == 400 and "Validation failed" in answer.text:
            continue  # a route added since: its body was refused before any lookup, which reveals nothing
        is_problem = answer.headers.get("content-type", "").startswith("application/problem+json")
        if answer.status_code != 404 or not is_problem or answer.json() != NOT_FOUND | {"detail": f"Campaign {cid} not found."}:
            wrong.append(f"{method} {path}: {answer.status_code} {answer.text[:120]}")
    assert not wrong, "\n".join(wrong)

    # The same answer as for a campaign that does not exist at all.
    missing = client.get("/api/campaigns/987654", headers=other_headers)
    assert (missing.status_code, missing.json()["detail"]) == (404, "Campaign 987654 not found.")
    # Nothing of mine changed, and nothing reached the other user's campaign.
    assert _snapshot(client, auth_headers, cid) == before
    assert client.get(f"/api/campaigns/{own}/leads", headers=other_headers).json()["total"] == 0

    # Copying leads FROM my campaign into their own one is refused the same way.
    copy = client.post(f"/api/campaigns/{own}/leads/copy", headers=other_headers, json={"source_campaign_id": cid})
    assert (copy.status_code, copy.json()["detail"]) == (404, f"Campaign {cid} not found.")
    assert client.get(f"/api/campaigns/{own}/leads", headers=other_headers).json()["total"] == 0

    # Each list holds its owner's campaigns only, whatever the filter.
    for headers, expected in ((other_headers, own), (auth_headers, cid)):
        for query in ("", "?status=DRAFT"):
            page = client.get(f"/api/campaigns{query}", headers=headers).json()
            assert page["total"] == 1, query
            assert [c["id"] for c in page["items"]] == [expected], query

    # A template is reachable only through its own campaign, even for its owner.
    my_other = _campaign(client, auth_headers, "Mine too")
    for headers, other_cid in ((auth_headers, my_other), (other_headers, own)):
        patch = client.patch(f"/api/campaigns/{other_cid}/templates/{tid}", headers=headers, json={"subject": "Moved"})
        rewrite = client.post(f"/api/campaigns/{other_cid}/templates/{tid}/rewrite", headers=headers,
                              json={"instruction": "shorter"})
        for answer in (patch, rewrite):
            assert answer.status_code == 404, (other_cid, answer.text)
            assert answer.json()["detail"] == f"Template {tid} not found."
    assert _snapshot(client, auth_headers, cid) == before
