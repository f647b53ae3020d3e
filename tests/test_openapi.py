"""The API documents every route it serves."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

EXPECTED_ROUTES = {
    ("post", "/api/auth/magic-link"), ("post", "/api/auth/verify"), ("get", "/api/auth/me"),
    ("post", "/api/campaigns"), ("get", "/api/campaigns"),
    ("get", "/api/campaigns/{campaign_id}"), ("patch", "/api/campaigns/{campaign_id}"),
    ("post", "/api/campaigns/{campaign_id}/launch"), ("post", "/api/campaigns/{campaign_id}/pause"),
    ("post", "/api/campaigns/{campaign_id}/resume"), ("post", "/api/campaigns/{campaign_id}/duplicate"),
    ("post", "/api/campaigns/{campaign_id}/leads"), ("get", "/api/campaigns/{campaign_id}/leads"),
    ("get", "/api/campaigns/{campaign_id}/leads/export"),
    ("post", "/api/campaigns/{campaign_id}/leads/import"), ("post", "/api/campaigns/{campaign_id}/leads/copy"),
    ("post", "/api/campaigns/{campaign_id}/templates"), ("get", "/api/campaigns/{campaign_id}/templates"),
    ("patch", "/api/campaigns/{campaign_id}/templates/{template_id}"),
    ("post", "/api/campaigns/{campaign_id}/templates/generate"),
    ("post", "/api/campaigns/{campaign_id}/templates/generate-all"),
    ("post", "/api/campaigns/{campaign_id}/templates/{template_id}/rewrite"),
    ("post", "/api/webhooks/postmark/inbound"), ("post", "/api/webhooks/postmark/bounce"),
    ("post", "/api/webhooks/postmark/delivery"), ("post", "/api/webhooks/postmark"),
    ("get", "/unsubscribe/{token}"), ("post", "/unsubscribe/{token}"), ("get", "/health"),
}


def test_openapi_lists_every_route(client: TestClient[Any]) -> None:
    answer = client.get("/schema/openapi.json")
    assert answer.status_code == 200
    documented = {(method, path) for path, item in answer.json()["paths"].items() for method in item}
    assert EXPECTED_ROUTES <= documented, EXPECTED_ROUTES - documented
