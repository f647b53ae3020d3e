"""Writing templates through the API: the real app, the real `openai` SDK over HTTP to the local fake, real
databases. Prompts, both OpenAI APIs, validation with one fed-back retry, lint warnings, cache, retries."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import insert

from outreach_api.app import create_app
from outreach_pipeline.db.models import Lead
from outreach_pipeline.db.session import create_db_engine
from outreach_pipeline.llm.prompts import PROMPT_VERSION
from outreach_pipeline.settings import Settings
from tests.fakes.openai import DEFAULT_BODY, DEFAULT_SUBJECT, FakeOpenAI
from tests.fixtures import latest_outbox_token, make_settings, sign_in


@pytest.fixture(params=["chat", "responses"])
def api_style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, fake_openai: FakeOpenAI) -> Settings:
    return make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                         openai_base_url=fake_openai.url + "/v1", openai_model="fake-model", llm_max_retries=2)


def new_campaign(client: TestClient[Any], auth_headers: dict[str, str], name: str = "Freight analytics", steps: int = 3) -> int:
    answer = client.post("/api/campaigns", headers=auth_headers, json={
        "name": name, "pitch": "We help logistics teams cut freight costs by 12%.", "sender_name": "Ada",
        "sender_email": "ada@sender.example", "steps": [{}] + [{"delay_days": 3}] * (steps - 1)})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def add_leads(settings: Settings, campaign_id: int, *rows: dict[str, Any]) -> None:
    engine = create_db_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(insert(Lead), [
            {"campaign_id": campaign_id, "email": row["email"], "email_key": row["email"].lower(),
             "first_name": row.get("first_name"), "company": row.get("company"), "title": row.get("title"),
             "custom_fields": row.get("custom_fields", {}), "reply_token": secrets.token_hex(16)}
            for row in rows])
    engine.dispose()


def prompt(body: dict[str, Any]) -> str:
    items = body.get("messages") or body.get("input") or []
    return "\n".join(str(item.get("content")) for item in items)


def test_generate_all_writes_every_step_through_the_configured_openai_api(
    tmp_path: Path, database_url: str, fake_openai: FakeOpenAI, api_style: str
) -> None:
    settings = make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                             openai_base_url=fake_openai.url + "/v1", openai_model="fake-model",
                             openai_api_style=api_style)
    with TestClient(create_app(settings)) as client:
        assert settings.outbox_dir is not None
        outbox = settings.outbox_dir
        auth_headers = sign_in(client, "operator@company.example", lambda: latest_outbox_token(outbox))
        campaign = new_campaign(client, auth_headers)
        add_leads(settings, campaign, {"email": "grace@hopper.example", "first_name": "Grace", "company": "Hopper Freight",
                                       "custom_fields": {"industry": "logistics"}})

        answer = client.post(f"/api/campaigns/{campaign}/templates/generate-all", headers=auth_headers)

    assert answer.status_code == 201, answer.text
    templates = answer.json()
    path = "/v1/responses" if api_style == "responses" else "/v1/chat/completions"
    assert [p for p, _ in fake_openai.calls] == [path] * 3
    assert [(t["step_number"], t["variant"], t["source"], t["model"], t["prompt_version"]) for t in templates] == [
        (n, "A", "openai", "fake-model", PROMPT_VERSION) for n in (1, 2, 3)]
    assert all(t["subject"] == DEFAULT_SUBJECT and t["body"] == DEFAULT_BODY for t in templates)
    assert all(t["prompt_tokens"] > 0 and t["completion_tokens"] > 0 for t in templates)
    # Structured output: the schema of subject, body and an optional HTML body, strict.
    _, first = fake_openai.calls[0]
    schema = (first["text"]["format"] if api_style == "responses" else first["response_format"]["json_schema"])
    assert schema["strict"] is True and schema["schema"]["required"] == ["subject", "body", "html"]
    # What each step is told: its role, the earlier emails, the fields, a sample lead.
    prompts = [prompt(body) for _, body in fake_openai.calls]
    assert "email 1 of 3 (first touch)" in prompts[0] and "Email 1 already says" not in prompts[0]
    assert "email 2 of 3 (bump)" in prompts[1] and f"Email 1 already says (do not repeat it):\nSubject: {DEFAULT_SUBJECT}" in prompts[1]
    assert "email 3 of 3 (break-up)" in prompts[2] and "Email 2 already says" in prompts[2]
    assert "{{first_name}}, {{last_name}}, {{company}}, {{title}}, {{industry}}" in prompts[0]
    assert "A sample lead" in prompts[0] and "company=Hopper Freight" in prompts[0] and "grace@" not in prompts[0]


def test_broken_json_is_asked_again_with_the_reason_then_saved(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    fake_openai.invalid_json_next(1)

    answer = client.post(f"/api/campaigns/{campaign}/templates/generate", headers=auth_headers, json={"step_number": 1})

    assert answer.status_code == 201, answer.text
    assert [t["subject"] for t in answer.json()] == [DEFAULT_SUBJECT]
    assert fake_openai.call_count == 2
    assert "Your previous answer was refused: The answer could not be read" in prompt(fake_openai.calls[1][1])


def test_an_answer_invalid_twice_is_reported_and_never_saved(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    fake_openai.responder = lambda body: {"subject": "Hi {{favourite_colour}}", "body": "Hello {{first_name|there}",
                                          "html": None}

    answer = client.post(f"/api/campaigns/{campaign}/templates/generate", headers=auth_headers, json={"step_number": 1})

    assert answer.status_code == 422
    assert answer.json()["detail"] == "The openai writer returned an invalid template twice."
    extra = answer.json()["extra"]
    assert any("Unknown field {{favourite_colour}} in the subject" in problem for problem in extra)
    assert "The body has unbalanced placeholder braces." in extra
    assert fake_openai.call_count == 2
    assert "unbalanced placeholder braces" in prompt(fake_openai.calls[1][1])
    assert client.get(f"/api/campaigns/{campaign}/templates", headers=auth_headers).json() == []


def test_hand_written_templates_are_checked_and_linted_but_lint_never_refuses(
    client: TestClient[Any], auth_headers: dict[str, str]
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    url = f"/api/campaigns/{campaign}/templates"

    unknown = client.post(url, headers=auth_headers, json={"step_number": 1, "subject": "Hi {{shoe_size}}", "body": "Hello"})
    unbalanced = client.post(url, headers=auth_headers, json={"step_number": 1, "subject": "Hi", "body": "Hello {{first_name"})
    too_long = client.post(url, headers=auth_headers, json={"step_number": 1, "subject": "x" * 201, "body": "Hello"})
    spammy = client.post(url, headers=auth_headers, json={
        "step_number": 1, "subject": "FREE offer, act now!!", "body": "Hi {{first_name|there}},\n{{ai_opener}}\n"
        "Guaranteed results for {{shoe_size|your team}}. Our CEO and API team agree."})

    assert unknown.status_code == 422 and "Unknown field {{shoe_size}}" in unknown.json()["extra"][0]
    assert unbalanced.status_code == 422 and unbalanced.json()["extra"] == ["The body has unbalanced placeholder braces."]
    assert too_long.status_code == 400  # refused by the input model before any check
    assert spammy.status_code == 201, spammy.text
    assert spammy.json()["source"] == "manual" and spammy.json()["prompt_version"] is None
    assert spammy.json()["warnings"] == [
        "Spam-trigger words in the subject: act now, free.",
        "Words in capitals in the subject: FREE.",
        "Several exclamation marks in the subject.",
        "Spam-trigger words in the body: guaranteed.",
    ]
    # Editing it clean clears the warnings.
    edited = client.patch(f"{url}/{spammy.json()['id']}", headers=auth_headers,
                       json={"subject": "A question about freight", "body": "Hi {{first_name|there}}"})
    assert edited.status_code == 200 and edited.json()["warnings"] == []


def test_the_model_s_html_body_is_checked_like_the_text_and_kept(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    answers = iter([
        {"subject": "Hello", "body": "Hi {{first_name|there}}", "html": "<p>Hi {{shoe_size}}</p>"},
        {"subject": "Hello", "body": "Hi {{first_name|there}}", "html": "<p>Hi {{first_name|there}}</p>"},
    ])
    fake_openai.responder = lambda body: next(answers)

    answer = client.post(f"/api/campaigns/{campaign}/templates/generate", headers=auth_headers, json={"step_number": 1})

    assert answer.status_code == 201, answer.text
    assert answer.json()[0]["html_body"] == "<p>Hi {{first_name|there}}</p>"
    assert "Unknown field {{shoe_size}} in the HTML body" in prompt(fake_openai.calls[1][1])


def test_rewrite_follows_the_instruction_also_when_asked_again(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    created = client.post(f"/api/campaigns/{campaign}/templates", headers=auth_headers,
                       json={"step_number": 1, "subject": "Freight costs", "body": "Hi {{first_name|there}}, long text."})
    fake_openai.responder = lambda body: {"subject": "Freight", "body": "Hi {{first_name|there}}, short.", "html": None}
    fake_openai.invalid_json_next(1)

    answer = client.post(f"/api/campaigns/{campaign}/templates/{created.json()['id']}/rewrite", headers=auth_headers,
                      json={"instruction": "shorter"})

    assert answer.status_code == 200, answer.text
    assert (answer.json()["id"], answer.json()["body"], answer.json()["source"]) == (
        created.json()["id"], "Hi {{first_name|there}}, short.", "openai")
    assert fake_openai.call_count == 2
    assert all("Instruction: shorter\nSubject: Freight costs" in prompt(body) for _, body in fake_openai.calls)


def test_the_same_question_is_answered_from_the_cache_unless_fresh(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=1)
    url = f"/api/campaigns/{campaign}/templates/generate"

    first = client.post(url, headers=auth_headers, json={"step_number": 1})
    again = client.post(url, headers=auth_headers, json={"step_number": 1})

    assert first.status_code == again.status_code == 201
    assert fake_openai.call_count == 1
    assert again.json()[0]["subject"] == first.json()[0]["subject"]
    assert again.json()[0]["prompt_tokens"] == 0  # nothing was spent the second time

    fresh = client.post(url, headers=auth_headers, json={"step_number": 1, "fresh": True})

    assert fresh.status_code == 201 and fake_openai.call_count == 2


def test_a_rate_limit_waits_for_retry_after_and_server_errors_are_retried(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = new_campaign(client, auth_headers, steps=2)
    url = f"/api/campaigns/{campaign}/templates/generate"
    fake_openai.fail_next(429, retry_after=0.8)

    started = time.monotonic()
    limited = client.post(url, headers=auth_headers, json={"step_number": 1})
    waited = time.monotonic() - started

    assert limited.status_code == 201, limited.text
    assert fake_openai.call_count == 2 and waited >= 0.8

    fake_openai.reset()
    fake_openai.fail_next(500, times=2)
    failing = client.post(url, headers=auth_headers, json={"step_number": 2})

    assert failing.status_code == 201, failing.text
    assert fake_openai.call_count == 3


def test_without_a_model_the_offline_writer_fills_templates_and_says_so(tmp_path: Path, database_url: str) -> None:
    offline = make_settings(tmp_path, database_url)  # this module's `settings` name a model; these do not
    assert offline.outbox_dir is not None
    outbox = offline.outbox_dir
    with TestClient(create_app(offline)) as client:
        auth_headers = sign_in(client, "operator@company.example", lambda: latest_outbox_token(outbox))
        campaign = new_campaign(client, auth_headers, steps=2)
        answer = client.post(f"/api/campaigns/{campaign}/templates/generate-all", headers=auth_headers,
                             json={"use_ai_opener": True})

    assert answer.status_code == 201, answer.text
    assert [(t["source"], t["model"], t["prompt_version"]) for t in answer.json()] == [("offline", None, None)] * 2
    assert "{{ai_opener}}" in answer.json()[0]["body"] and "{{ai_opener}}" not in answer.json()[1]["body"]
