"""Per-lead `{{ai_opener}}` lines in batch: the `lead_openers` asset through real Dagster `materialize`, the
real async `openai` client over HTTP to the local fake, real databases. Concurrency bound, retries, the
cache, failed leads retried next run and reported before launch, cost metadata."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, instance_for_test, materialize
from litestar.testing import TestClient
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from outreach_api.app import create_app
from outreach_pipeline.assets.openers import lead_openers
from outreach_pipeline.core.campaigns import CampaignCreate, StepSpec, create_campaign
from outreach_pipeline.core.generation_stats import Prices
from outreach_pipeline.core.openers import missing_opener_problems, opener_values
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import Campaign, Lead, LeadOpener, LlmCacheEntry, User
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.llm.prompts import PROMPT_VERSION
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.settings import Settings
from tests.fakes.openai import FakeOpenAI
from tests.fixtures import latest_outbox_token, make_settings, sign_in

OPENER_BODY = "Hi {{first_name|there}},\n\n{{ai_opener}}\n\nWe cut freight costs by 12%."


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def opener_for(body: dict[str, Any]) -> dict[str, Any]:
    """Answers from the lead's facts in the prompt, so each lead's line is recognisably its own."""
    items = body.get("messages") or body.get("input")
    text = "\n".join(str(m["content"]) for m in items)
    company = text.split("- company: ", 1)[1].split("\n", 1)[0] if "- company: " in text else "nobody"
    return {"opener": f"Congrats on the growth at {company}."}


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    owner_id: int

    def campaign(self, name: str, body: str = OPENER_BODY) -> int:
        with session_scope(self.sessions) as session:
            campaign = create_campaign(session, self.owner_id, CampaignCreate(
                name=name, pitch="We cut freight costs by 12%.", steps=[StepSpec()]))
            save_template(session, campaign, TemplateInput(step_number=1, subject="Freight", body=body))
            return campaign.id

    def leads(self, campaign_id: int, companies: list[str]) -> list[int]:
        with session_scope(self.sessions) as session:
            start = len(session.scalars(select(Lead.id).where(Lead.campaign_id == campaign_id)).all())
            session.execute(insert(Lead), [
                {"campaign_id": campaign_id, "email": f"l{start + n}@{campaign_id}.example",
                 "email_key": f"l{start + n}@{campaign_id}.example", "first_name": "Sam", "company": company,
                 "custom_fields": {}, "reply_token": secrets.token_hex(16)}
                for n, company in enumerate(companies)])
            return list(session.scalars(select(Lead.id).where(Lead.campaign_id == campaign_id).order_by(Lead.id)))

    def openers(self, campaign_id: int) -> dict[int, tuple[str, str | None]]:
        with session_scope(self.sessions) as session:
            rows = session.scalars(select(LeadOpener).where(LeadOpener.campaign_id == campaign_id))
            return {row.lead_id: (row.status, row.text) for row in rows}

    def materialize(self, instance: DagsterInstance, **overrides: Any) -> dict[str, Any]:
        settings = self.settings.model_copy(update=overrides)
        result = materialize([lead_openers], instance=instance, resources=resources_from_settings(settings))
        assert result.success
        (materialization,) = result.asset_materializations_for_node("lead_openers")
        return {key: value.value for key, value in materialization.metadata.items()}


@pytest.fixture
def world(tmp_path: Path, database_url: str, fake_openai: FakeOpenAI) -> Iterator[World]:
    settings = make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                             openai_base_url=fake_openai.url + "/v1", openai_model="fake-model",
                             llm_concurrency=8, llm_max_retries=0)
    engine = create_db_engine(database_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        owner = User(email="operator@company.example")
        session.add(owner)
        session.flush()
        owner_id = owner.id
    fake_openai.responder = opener_for
    try:
        yield World(settings, sessions, owner_id)
    finally:
        engine.dispose()


def test_every_waiting_lead_gets_its_opener_once_and_a_rerun_pays_nothing(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    using = world.campaign("Uses openers")
    plain = world.campaign("Plain", body="Hi {{first_name|there}}, no opener here.")
    # Two leads share their facts (same name and company): one request serves both.
    lead_ids = world.leads(using, ["Acme", "Globex", "Initech", "Acme"])
    world.leads(plain, ["Umbrella"])

    metadata = world.materialize(instance)

    assert fake_openai.call_count == 3
    assert world.openers(using) == {
        lead_ids[0]: ("READY", "Congrats on the growth at Acme."),
        lead_ids[1]: ("READY", "Congrats on the growth at Globex."),
        lead_ids[2]: ("READY", "Congrats on the growth at Initech."),
        lead_ids[3]: ("READY", "Congrats on the growth at Acme."),
    }
    assert world.openers(plain) == {}
    with session_scope(world.sessions) as session:
        rows = session.scalars(select(LeadOpener).where(LeadOpener.campaign_id == using)).all()
        assert {(r.model, r.prompt_version, r.source) for r in rows} == {("fake-model", PROMPT_VERSION, "openai")}
        prompt_tokens = sum(r.prompt_tokens for r in rows)
        completion_tokens = sum(r.completion_tokens for r in rows)
        assert session.get_one(LeadOpener, rows[0].id).attempts == 1
    assert prompt_tokens > 0 and completion_tokens > 0
    cost = Prices().cost(prompt_tokens, completion_tokens)
    assert {k: metadata[k] for k in ("writer", "campaigns", "leads_needing_openers", "openers_written",
                                     "cache_hits", "failed", "model_requests", "prompt_tokens",
                                     "completion_tokens", "estimated_cost_usd")} == {
        "writer": "openai", "campaigns": 1, "leads_needing_openers": 4, "openers_written": 4, "cache_hits": 0,
        "failed": 0, "model_requests": 3, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "estimated_cost_usd": cost,
    }
    usage = metadata["usage_by_campaign"][str(using)]
    assert (usage["opener_prompt_tokens"], usage["template_prompt_tokens"], usage["estimated_cost_usd"]) == (
        prompt_tokens, 0, cost)

    # Every lead has its line: the re-run asks nothing.
    again = world.materialize(instance)
    assert fake_openai.call_count == 3
    assert (again["leads_needing_openers"], again["model_requests"], again["prompt_tokens"]) == (0, 0, 0)

    # Lines lost from the table come back from the cache, still without a call.
    with session_scope(world.sessions) as session:
        session.execute(delete(LeadOpener))
    cached = world.materialize(instance)
    assert fake_openai.call_count == 3
    assert (cached["openers_written"], cached["cache_hits"], cached["model_requests"]) == (4, 4, 0)
    assert world.openers(using)[lead_ids[1]] == ("READY", "Congrats on the growth at Globex.")


def test_requests_run_concurrently_up_to_the_limit_and_no_further(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    campaign = world.campaign("Many leads")
    world.leads(campaign, [f"Company {n}" for n in range(24)])
    fake_openai.latency_s = 0.2

    started = time.monotonic()
    metadata = world.materialize(instance, llm_concurrency=6)
    elapsed = time.monotonic() - started

    assert metadata["openers_written"] == 24 and fake_openai.call_count == 24
    assert fake_openai.max_in_flight == 6
    # 24 requests of 0.2 s, 6 at a time: at least 0.8 s; one at a time would take 4.8 s.
    assert elapsed >= 0.8
    assert elapsed < 4.0


def test_failed_leads_are_reported_before_launch_never_filled_blank_and_retried_next_run(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    campaign = world.campaign("Flaky model")
    lead_ids = world.leads(campaign, ["Acme", "Globex", "Initech"])
    fake_openai.fail_next(500, times=2)  # with no SDK retries, two leads fail this run

    first = world.materialize(instance)

    assert (first["openers_written"], first["failed"]) == (1, 2)
    assert all("InternalServerError" in error for error in first["errors"].values())
    with session_scope(world.sessions) as session:
        campaign_row = session.get_one(Campaign, campaign)
        problems = missing_opener_problems(session, campaign_row)
        values = opener_values(session, lead_ids)
    assert len(problems) == 1 and problems[0].startswith("2 lead(s) have no {{ai_opener}} opening line yet")
    assert "InternalServerError" in problems[0]
    assert len(values) == 1 and all(text.startswith("Congrats") for text in values.values())

    fake_openai.reset()
    second = world.materialize(instance)

    assert fake_openai.call_count == 2  # only the two that failed
    assert (second["leads_needing_openers"], second["openers_written"], second["failed"]) == (2, 2, 0)
    assert {status for status, _ in world.openers(campaign).values()} == {"READY"}
    with session_scope(world.sessions) as session:
        campaign_row = session.get_one(Campaign, campaign)
        assert missing_opener_problems(session, campaign_row) == []
        assert set(opener_values(session, lead_ids)) == set(lead_ids)
        # A fallback means a lead without a line still reads well: no launch problem then.
        save_template(session, campaign_row, TemplateInput(step_number=1, subject="Freight",
                                                           body="Hi,\n{{ai_opener|I hope you are well.}}"))
        session.execute(delete(LeadOpener))
        assert missing_opener_problems(session, campaign_row) == []


def test_a_rate_limit_in_a_batch_waits_for_retry_after_and_loses_no_lead(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    campaign = world.campaign("Rate limited")
    world.leads(campaign, ["Acme", "Globex"])
    fake_openai.fail_next(429, retry_after=0.6)

    started = time.monotonic()
    metadata = world.materialize(instance, llm_max_retries=2, llm_concurrency=1)

    assert time.monotonic() - started >= 0.6
    assert (metadata["openers_written"], metadata["failed"]) == (2, 0)
    assert fake_openai.call_count == 3


def test_an_unusable_line_is_asked_again_with_the_reason_and_never_stored_broken(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    campaign = world.campaign("Picky")
    lead_ids = world.leads(campaign, ["Acme", "Globex"])
    answers: dict[str, int] = {}

    def responder(body: dict[str, Any]) -> Any:
        answer = opener_for(body)
        company = answer["opener"].rsplit(" ", 1)[1]
        answers[company] = answers.get(company, 0) + 1
        if company == "Acme." and answers[company] == 1:
            return {"opener": "Hi {{first_name}},\nlovely to meet you."}  # braces and a line break
        if company == "Globex.":
            return '{"opener": "cut off'  # broken JSON, twice
        return answer

    fake_openai.responder = responder

    metadata = world.materialize(instance)

    assert (metadata["openers_written"], metadata["failed"], metadata["model_requests"]) == (1, 1, 4)
    assert world.openers(campaign) == {lead_ids[0]: ("READY", "Congrats on the growth at Acme."),
                                       lead_ids[1]: ("FAILED", None)}
    retried = [body for _, body in fake_openai.calls if "Acme" in str(body)][1]
    assert "Your previous answer was refused: The opener must be one line.; The opener must not contain braces" in str(retried)
    with session_scope(world.sessions) as session:
        # Only the good line was cached; the broken one will be asked again.
        assert session.scalar(select(LlmCacheEntry.answer)) == {"opener": "Congrats on the growth at Acme."}


def test_the_api_writes_openers_through_the_responses_api_and_reports_what_is_missing(
    tmp_path: Path, database_url: str, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                             openai_base_url=fake_openai.url + "/v1", openai_model="fake-model",
                             openai_api_style="responses", llm_max_retries=0)
    fake_openai.responder = opener_for
    with TestClient(create_app(settings)) as api:
        assert settings.outbox_dir is not None
        outbox = settings.outbox_dir
        headers = sign_in(api, "operator@company.example", lambda: latest_outbox_token(outbox))
        campaign = api.post("/api/campaigns", headers=headers, json={"name": "API", "pitch": "Freight."}).json()["id"]
        api.post(f"/api/campaigns/{campaign}/templates", headers=headers,
                 json={"step_number": 1, "subject": "Hi", "body": OPENER_BODY})
        engine = create_db_engine(database_url)
        with engine.begin() as connection:
            connection.execute(insert(Lead), [
                {"campaign_id": campaign, "email": f"{c}@x.example", "email_key": f"{c}@x.example", "company": c,
                 "custom_fields": {}, "reply_token": secrets.token_hex(16)} for c in ("Acme", "Globex")])
        engine.dispose()
        fake_openai.fail_next(503)

        first = api.post(f"/api/campaigns/{campaign}/templates/openers", headers=headers)
        second = api.post(f"/api/campaigns/{campaign}/templates/openers", headers=headers)
        usage = api.get(f"/api/campaigns/{campaign}/templates/usage", headers=headers)
        detail = api.get(f"/api/campaigns/{campaign}", headers=headers)

    assert first.status_code == 200, first.text
    assert (first.json()["written"], first.json()["failed"]) == (1, 1)
    assert first.json()["missing"][0].startswith("1 lead(s) have no {{ai_opener}} opening line yet")
    assert (second.json()["leads"], second.json()["written"], second.json()["missing"]) == (1, 1, [])
    assert {path for path, _ in fake_openai.calls} == {"/v1/responses"}
    assert fake_openai.call_count == 3
    assert usage.status_code == 200
    assert usage.json()["opener_prompt_tokens"] == first.json()["prompt_tokens"] + second.json()["prompt_tokens"] > 0
    assert usage.json()["estimated_cost_usd"] > 0
    assert detail.json()["stats"]["generation"] == usage.json()  # the campaign's stats show the same spend


def test_the_templates_asset_writes_campaigns_side_by_side_on_postgresql(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    from outreach_pipeline.assets.templates import campaign_templates

    with session_scope(world.sessions) as session:
        for name in ("North", "South", "East"):
            create_campaign(session, world.owner_id, CampaignCreate(name=name, pitch="Freight.",
                                                                    steps=[StepSpec(), StepSpec(delay_days=2)]))
    fake_openai.responder = lambda body: {"subject": "Freight", "body": "Hi {{first_name|there}}", "html": None}
    fake_openai.latency_s = 0.1

    result = materialize([campaign_templates], instance=instance, resources=resources_from_settings(world.settings))

    assert result.success
    assert fake_openai.call_count == 6
    # SQLite keeps one writer at a time, so campaigns go one by one there; PostgreSQL takes them together.
    sqlite = world.settings.database_url.startswith("sqlite")
    assert fake_openai.max_in_flight == (1 if sqlite else 3)


def test_a_model_that_stays_down_is_reported_per_campaign_and_the_asset_still_succeeds(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    from outreach_pipeline.assets.templates import campaign_templates

    with session_scope(world.sessions) as session:
        campaign = create_campaign(session, world.owner_id, CampaignCreate(name="Down", pitch="Freight.",
                                                                           steps=[StepSpec()]))
        campaign_id = campaign.id
    fake_openai.fail_next(503, times=1)  # no SDK retries configured in this world

    result = materialize([campaign_templates], instance=instance, resources=resources_from_settings(world.settings))

    assert result.success
    (materialization,) = result.asset_materializations_for_node("campaign_templates")
    problems = materialization.metadata["problems"].value
    assert list(problems) == [str(campaign_id)] and "InternalServerError" in problems[str(campaign_id)][0]
    assert fake_openai.call_count == 1


def test_launch_waits_for_every_opener_and_each_email_carries_its_own(
    world: World, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    from datetime import UTC, datetime, timedelta

    from outreach_pipeline.core.campaigns import launch_campaign
    from outreach_pipeline.core.compose import SenderConfig
    from outreach_pipeline.core.delivery import dispatch_due
    from outreach_pipeline.core.errors import InvalidInputError
    from outreach_pipeline.mail.outbox import FileOutbox

    campaign = world.campaign("Launch with openers")
    world.leads(campaign, ["Acme", "Globex"])
    with session_scope(world.sessions) as session:
        with pytest.raises(InvalidInputError) as refused:
            launch_campaign(session, session.get_one(Campaign, campaign))
    assert refused.value.details == [
        "2 lead(s) have no {{ai_opener}} opening line yet; materialise the lead_openers asset or "
        f"POST /api/campaigns/{campaign}/templates/openers."]

    world.materialize(instance)
    with session_scope(world.sessions) as session:
        assert launch_campaign(session, session.get_one(Campaign, campaign)) == 2

    outbox = FileOutbox(world.settings.data_dir / "opener-outbox")
    report = dispatch_due(world.sessions, outbox, SenderConfig("team@sender.example", "in.example", "https://x"),
                          datetime.now(UTC) + timedelta(days=1))
    assert report.sent == 2
    bodies = [path.read_text() for path in (world.settings.data_dir / "opener-outbox").rglob("*.eml")]
    assert sorted(b.split("Hi Sam,\n\n", 1)[1].split("\n", 1)[0] for b in bodies) == [
        "Congrats on the growth at Acme.", "Congrats on the growth at Globex."]
