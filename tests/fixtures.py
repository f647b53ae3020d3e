"""Fixtures for the product as a user meets it: settings, the real app, fake providers over HTTP."""

from __future__ import annotations

import email
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from outreach_api.app import create_app
from outreach_pipeline.settings import Settings
from tests.fakes.openai import FakeOpenAI
from tests.fakes.postmark import FakePostmark

WEBHOOK_AUTH = ("postmark", "hook-secret")
# Postmark's documented webhook payloads and two real-shaped lead exports (see their README files).
PROVIDER_FIXTURES = Path(__file__).parent / "data" / "provider"


@pytest.fixture
def fake_postmark() -> Iterator[FakePostmark]:
    with FakePostmark(server_token="test-server-token") as server:
        yield server


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="test-openai-key") as server:
        yield server


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings as an operator would set them, ignoring any .env or environment of the developer."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "secret_key": "test-secret-key-that-is-long-enough-for-hs256",
        "webhook_username": WEBHOOK_AUTH[0],
        "webhook_password": WEBHOOK_AUTH[1],
        "from_email": "team@sender.example",
        "postmark_inbound_domain": "inbound.sender.example",
        "app_base_url": "https://outreach.example",
        "frontend_url": "https://app.outreach.example",
        "leads_bucket": str(tmp_path / "bucket"),
        "email_backend": "outbox",
        "llm_backend": "offline",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Embedded defaults: file outbox and offline writer, on each test database."""
    return make_settings(tmp_path, database_url)


@pytest.fixture
def provider_settings(tmp_path: Path, database_url: str, fake_postmark: FakePostmark, fake_openai: FakeOpenAI) -> Settings:
    """Production-shaped settings: Postmark and an OpenAI-compatible model, both local fakes."""
    return make_settings(
        tmp_path, database_url,
        email_backend="postmark",
        postmark_server_token=fake_postmark.server_token,
        postmark_api_url=fake_postmark.url,
        llm_backend="openai",
        openai_api_key="test-openai-key",
        openai_base_url=fake_openai.url + "/v1",
        openai_model="fake-model",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def token_from_text(text: str) -> str:
    return text.split("POST /api/auth/verify): ", 1)[1].split()[0]


def latest_outbox_token(outbox: Path) -> str:
    newest = max(outbox.rglob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    message = email.message_from_bytes(newest.read_bytes())
    return token_from_text(message.get_payload(decode=True).decode())  # type: ignore[union-attr]


def sign_in(client: TestClient[Any], address: str, read_token: Any) -> dict[str, str]:
    """Ask for a magic link, read it where the mail backend put it, trade it for a bearer header."""
    assert client.post("/api/auth/magic-link", json={"email": address}).status_code == 202
    answer = client.post("/api/auth/verify", json={"token": read_token()})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture
def auth_headers(client: TestClient[Any], settings: Settings) -> dict[str, str]:
    assert settings.outbox_dir is not None
    return sign_in(client, "operator@company.example", lambda: latest_outbox_token(settings.outbox_dir))
