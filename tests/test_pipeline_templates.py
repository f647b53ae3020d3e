"""The `campaign_templates` asset writing templates through the real `openai` SDK against the local fake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, instance_for_test, materialize
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.assets.templates import campaign_templates
from outreach_pipeline.core.auth import request_magic_link, verify_magic_link
from outreach_pipeline.core.campaigns import CampaignCreate, StepSpec, create_campaign
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import Campaign, Template
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.settings import Settings
from tests.fakes.openai import DEFAULT_BODY, DEFAULT_SUBJECT, FakeOpenAI, default_responder
from tests.fixtures import latest_outbox_token

KNOWN_FIELDS = "email, first_name, last_name, company, title"  # a campaign without leads


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@dataclass
class App:
    settings: Settings
    sessions: sessionmaker[Session]
    owner_id: int

    def campaign(self, name: str, steps: int) -> int:
        with session_scope(self.sessions) as session:
            campaign = create_campaign(session, self.owner_id, CampaignCreate(
                name=name, pitch="We cut freight costs by 12%.", sender_name="Ada",
                steps=[StepSpec(delay_days=0 if n == 0 else 2) for n in range(steps)],
            ))
            return campaign.id

    def templates(self, campaign_id: int) -> list[Template]:
        with session_scope(self.sessions) as session:
            return list(session.scalars(
                select(Template).where(Template.campaign_id == campaign_id).order_by(Template.step_number)
            ))

    def generate(self, instance: DagsterInstance) -> dict[str, Any]:
        result: ExecuteInProcessResult = materialize(
            [campaign_templates], instance=instance, resources=resources_from_settings(self.settings))
        assert result.success
        (materialization,) = result.asset_materializations_for_node("campaign_templates")
        return {key: value.value for key, value in materialization.metadata.items()}


@pytest.fixture
def app(provider_settings: Settings) -> Iterator[App]:
    engine = create_db_engine(provider_settings.database_url)
    sessions = make_session_factory(engine)
    outbox = provider_settings.data_dir / "sign-in-outbox"
    with session_scope(sessions) as session:
        request_magic_link(session, FileOutbox(outbox), "operator@company.example",
                           frontend_url=provider_settings.frontend_url, from_email=provider_settings.from_email)
    with session_scope(sessions) as session:
        owner_id = verify_magic_link(session, latest_outbox_token(outbox)).id
    try:
        yield App(provider_settings, sessions, owner_id)
    finally:
        engine.dispose()


def test_writes_every_missing_template_once_through_the_model(
    app: App, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    freight = app.campaign("Freight analytics", steps=3)
    fintech = app.campaign("Fintech pilots", steps=2)
    with session_scope(app.sessions) as session:
        save_template(session, session.get_one(Campaign, fintech),
                      TemplateInput(step_number=1, subject="Hello {{company|there}}", body="Hi {{first_name|there}}"))

    metadata = app.generate(instance)

    # 3 steps of the first campaign and the one missing step of the second.
    assert fake_openai.call_count == 4
    assert {path for path, _ in fake_openai.calls} == {"/v1/chat/completions"}
    assert all(body["model"] == "fake-model" for _, body in fake_openai.calls)
    written = app.templates(freight) + app.templates(fintech)
    assert [(t.campaign_id, t.step_number, t.source) for t in written] == [
        (freight, 1, "openai"), (freight, 2, "openai"), (freight, 3, "openai"),
        (fintech, 1, "manual"), (fintech, 2, "openai"),
    ]
    generated = [t for t in written if t.source == "openai"]
    assert {(t.subject, t.body, t.model) for t in generated} == {(DEFAULT_SUBJECT, DEFAULT_BODY, "fake-model")}
    assert all(t.prompt_tokens > 0 and t.completion_tokens > 0 for t in generated)
    assert metadata == {
        "writer": "openai",
        "campaigns_checked": 2,
        "templates_generated": 4,
        "prompt_tokens": sum(t.prompt_tokens for t in generated),
        "completion_tokens": sum(t.completion_tokens for t in generated),
        "problems": {},
    }

    # Nothing is missing any more: a second run pays the model nothing.
    again = app.generate(instance)

    assert fake_openai.call_count == 4
    assert (again["templates_generated"], again["prompt_tokens"], again["completion_tokens"], again["problems"]) == (
        0, 0, 0, {})
    assert [(t.id, t.subject) for t in app.templates(freight)] == [(t.id, t.subject) for t in written[:3]]


def _why(result: ExecuteInProcessResult) -> str:
    failure = result.failure_data_for_node("campaign_templates")
    if failure is None:
        return "no step failure"
    error, messages = failure.error, []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(messages)


def _prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(message.get("content")) for message in body["messages"])


def test_a_campaign_whose_model_output_is_invalid_twice_is_reported_while_others_get_templates(
    app: App, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    broken = app.campaign("Broken brief", steps=2)
    fine = app.campaign("Fine brief", steps=2)

    def responder(body: dict[str, Any]) -> Any:
        if "Campaign: Broken brief" in _prompt(body):
            return {"subject": "Hi {{favourite_colour}}", "body": "Hello {{first_name|there}}, a short note."}
        return default_responder(body)

    fake_openai.responder = responder

    metadata = app.generate(instance)

    assert metadata["problems"] == {str(broken): [
        "The openai writer returned an invalid template twice.",
        f"Unknown field {{{{favourite_colour}}}} in the subject; known fields: {KNOWN_FIELDS}. "
        "Use a fallback like {{favourite_colour|...}} if some leads lack it.",
    ]}
    assert (metadata["campaigns_checked"], metadata["templates_generated"]) == (2, 2)
    assert app.templates(broken) == []
    assert [(t.step_number, t.source) for t in app.templates(fine)] == [(1, "openai"), (2, "openai")]
    # The broken campaign's first step was asked twice (the second time with the reason), then given up.
    broken_calls = [body for _, body in fake_openai.calls if "Campaign: Broken brief" in _prompt(body)]
    assert len(broken_calls) == 2
    assert "Your previous answer was refused: Unknown field {{favourite_colour}}" in _prompt(broken_calls[1])
    assert fake_openai.call_count == 4


def test_a_campaign_whose_model_returns_broken_json_twice_is_reported_while_others_get_templates(
    app: App, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    """A model that stops mid-object (truncated JSON) is invalid output too: report it, keep the others' work."""
    broken = app.campaign("Broken brief", steps=1)
    fine = app.campaign("Fine brief", steps=1)
    answers: dict[str, int] = {}

    def responder(body: dict[str, Any]) -> Any:
        if "Campaign: Broken brief" in _prompt(body):
            answers["broken"] = answers.get("broken", 0) + 1
            return '{"subject": "Quick question", "body": "Hi {{first'  # cut off mid-answer
        return default_responder(body)

    fake_openai.responder = responder

    result = materialize([campaign_templates], instance=instance,
                         resources=resources_from_settings(app.settings), raise_on_error=False)

    assert result.success, _why(result)
    (materialization,) = result.asset_materializations_for_node("campaign_templates")
    problems = materialization.metadata["problems"].value
    assert list(problems) == [str(broken)]
    assert answers["broken"] == 2
    assert app.templates(broken) == []
    assert [(t.step_number, t.source) for t in app.templates(fine)] == [(1, "openai")]
