"""Openers through OpenAI's Batch API: JSONL upload, batch creation, a sensor that notices the batch finished,
and a `lead_openers` run that reads the output file and matches answers by custom_id. Real `openai` SDK
over HTTP to the local fake's Files and Batches endpoints, real Dagster, real databases."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context, instance_for_test, materialize
from sqlalchemy import insert, select

from outreach_pipeline.assets.openers import lead_openers
from outreach_pipeline.core.campaigns import CampaignCreate, StepSpec, create_campaign
from outreach_pipeline.core.openers import missing_opener_problems
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import Campaign, Lead, LeadOpener, LlmBatch, User
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.opener_batch_sensor import opener_batches_sensor
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.settings import Settings
from tests.fakes.openai import FakeOpenAI
from tests.fixtures import make_settings


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def opener_for(body: dict[str, Any]) -> dict[str, Any]:
    text = "\n".join(str(m["content"]) for m in body["messages"])
    company = text.split("- company: ", 1)[1].split("\n", 1)[0]
    if company == "Broken":
        return {"opener": "Hi {{first_name}}"}  # refused: placeholders are not allowed in an opener
    return {"opener": f"Congrats on the growth at {company}."}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, fake_openai: FakeOpenAI) -> Settings:
    fake_openai.responder = opener_for
    return make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                         openai_base_url=fake_openai.url + "/v1", openai_model="fake-model", llm_batch_api=True,
                         llm_max_retries=0)


def _campaign_with_leads(settings: Settings, companies: list[str]) -> tuple[int, list[int]]:
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        owner = User(email="operator@company.example")
        session.add(owner)
        session.flush()
        campaign = create_campaign(session, owner.id, CampaignCreate(name="Batch", pitch="Freight.", steps=[StepSpec()]))
        save_template(session, campaign, TemplateInput(step_number=1, subject="Hi", body="Hi,\n{{ai_opener}}"))
        session.execute(insert(Lead), [
            {"campaign_id": campaign.id, "email": f"{c.lower()}@x.example", "email_key": f"{c.lower()}@x.example",
             "company": c, "custom_fields": {}, "reply_token": secrets.token_hex(16)} for c in companies])
        ids = list(session.scalars(select(Lead.id).where(Lead.campaign_id == campaign.id).order_by(Lead.id)))
        campaign_id = campaign.id
    engine.dispose()
    return campaign_id, ids


def _state(settings: Settings, campaign_id: int) -> tuple[dict[int, tuple[str, str | None]], list[str], list[str]]:
    engine = create_db_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as session:
        openers = {r.lead_id: (r.status, r.text) for r in session.scalars(select(LeadOpener))}
        batches = list(session.scalars(select(LlmBatch.status).order_by(LlmBatch.id)))
        problems = missing_opener_problems(session, session.get_one(Campaign, campaign_id))
    engine.dispose()
    return openers, batches, problems


def _run(settings: Settings, instance: DagsterInstance) -> dict[str, Any]:
    result = materialize([lead_openers], instance=instance, resources=resources_from_settings(settings))
    assert result.success
    (materialization,) = result.asset_materializations_for_node("lead_openers")
    return {key: value.value for key, value in materialization.metadata.items()}


def _tick(settings: Settings, instance: DagsterInstance) -> list[RunRequest | SkipReason]:
    resources = resources_from_settings(settings)
    with build_sensor_context(instance=instance, resources={"database": resources["database"],
                                                            "writer": resources["writer"]}) as context:
        return list(opener_batches_sensor(context))  # type: ignore[arg-type]


def test_openers_go_through_a_batch_that_a_sensor_picks_up_when_finished(
    settings: Settings, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    campaign_id, (acme, globex, broken) = _campaign_with_leads(settings, ["Acme", "Globex", "Broken"])
    # Running through the next run's poll and the sensor's first tick; done at the second tick.
    fake_openai.batch_polls_before_done = 2

    submitted = _run(settings, instance)

    # One JSONL upload and one batch: no live completion at all.
    assert [path for path, _ in fake_openai.calls] == ["/v1/files", "/v1/batches"]
    assert (submitted["batch_api"], submitted["batches_submitted"], submitted["leads_needing_openers"]) == (True, 1, 3)
    (_, created) = fake_openai.calls[1]
    assert (created["endpoint"], created["completion_window"]) == ("/v1/chat/completions", "24h")
    openers, batches, problems = _state(settings, campaign_id)
    assert {status for status, _ in openers.values()} == {"BATCHED"} and batches == ["SUBMITTED"]
    assert problems and problems[0].startswith("3 lead(s) have no {{ai_opener}}")  # launch waits for the batch

    # A second run while the batch runs submits nothing new.
    assert _run(settings, instance)["batches_submitted"] == 0

    # The sensor polls: still running, then finished -> one run request, once.
    first_tick = _tick(settings, instance)
    second_tick = _tick(settings, instance)
    assert isinstance(first_tick[0], SkipReason) and "still running" in str(first_tick[0].skip_message)
    assert len(second_tick) == 1 and isinstance(second_tick[0], RunRequest)

    collected = _run(settings, instance)

    assert fake_openai.batch_lines == 3
    assert not any(path == "/v1/chat/completions" for path, _ in fake_openai.calls)
    assert (collected["batches_collected"], collected["openers_written"], collected["failed"]) == (1, 2, 1)
    assert collected["prompt_tokens"] > 0
    openers, batches, problems = _state(settings, campaign_id)
    assert openers[acme] == ("READY", "Congrats on the growth at Acme.")
    assert openers[globex] == ("READY", "Congrats on the growth at Globex.")
    assert openers[broken][0] == "BATCHED"  # the refused one went straight into a new batch
    assert batches == ["COMPLETED", "SUBMITTED"]
    assert problems and problems[0].startswith("1 lead(s)")
    (_, resubmitted) = [call for call in fake_openai.calls if call[0] == "/v1/batches"][-1]
    upload = [body for path, body in fake_openai.calls if path == "/v1/files"]
    assert len(upload) == 2 and resubmitted["input_file_id"]


def test_batch_lines_carry_the_cache_key_as_custom_id_and_the_structured_output_schema(
    settings: Settings, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    _campaign_with_leads(settings, ["Acme"])

    _run(settings, instance)
    file_id = [body for path, body in fake_openai.calls if path == "/v1/batches"][0]["input_file_id"]
    content = fake_openai.file_content(file_id).decode().splitlines()

    (line,) = [json.loads(raw) for raw in content]
    assert len(line["custom_id"]) == 64 and line["url"] == "/v1/chat/completions" and line["method"] == "POST"
    assert line["body"]["model"] == "fake-model"
    assert line["body"]["response_format"]["json_schema"]["schema"]["required"] == ["opener"]
    assert "- company: Acme" in line["body"]["messages"][1]["content"]
    assert "acme@x.example" not in json.dumps(line)  # the address never goes to the model
