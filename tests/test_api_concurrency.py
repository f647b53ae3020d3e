"""A burst of requests larger than the connection pool queues and completes; it never stalls on the pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import func, select

from outreach_api.app import create_app
from outreach_pipeline.db.models import WebhookEvent
from tests.fixtures import WEBHOOK_AUTH, make_settings


def test_a_burst_wider_than_the_pool_is_answered(tmp_path: Path, database_url: str) -> None:
    # Two connections (PostgreSQL) and two handler threads, 48 requests at once: each request's commit
    # must not wait behind handler threads that are themselves waiting for a connection.
    settings = make_settings(tmp_path, database_url, api_db_pool_size=2)
    with TestClient(create_app(settings)) as client:

        def deliver(n: int) -> int:
            payload = {"RecordType": "Delivery", "MessageID": f"burst-{n}", "Recipient": f"r{n}@x.example",
                       "DeliveredAt": "2026-11-24T10:00:00Z"}
            return client.post("/api/webhooks/postmark", json=payload, auth=WEBHOOK_AUTH).status_code

        pool = ThreadPoolExecutor(max_workers=48)
        try:
            # A stalled pool answers nothing for minutes: fail after 20 s instead of hanging.
            statuses = list(pool.map(deliver, range(48), timeout=20))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

        assert statuses == [200] * 48
        with client.app.state.services.sessions() as session:
            assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 48


def test_the_pool_and_thread_limits_follow_the_setting(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, api_db_pool_size=3)
    with TestClient(create_app(settings)) as client:
        finishers: Any = client.app.state.db_finishers
        assert finishers.total_tokens == 3
        if database_url.startswith("postgresql"):
            assert client.app.state.services.engine.pool.size() == 3
