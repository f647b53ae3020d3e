"""A/B variants: written per step through the API, split evenly over leads, replies counted per variant."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from outreach_pipeline.core.templates import choose_variant, list_templates
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import Campaign, EmailJob, JobStatus, Lead, LeadStatus, Template
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.settings import Settings
from tests.fakes.openai import FakeOpenAI
from tests.fixtures import make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str, fake_openai: FakeOpenAI) -> Settings:
    return make_settings(tmp_path, database_url, llm_backend="openai", openai_api_key="test-openai-key",
                         openai_base_url=fake_openai.url + "/v1", openai_model="fake-model")


def prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(message.get("content")) for message in body["messages"])


def numbered(body: dict[str, Any]) -> dict[str, Any]:
    """Each answer names its call, so variants get different texts."""
    text = prompt(body)
    variant = "B" if "This is variant B" in text else "A"
    step = text.split("This is email ", 1)[1].split(" ", 1)[0]
    return {"subject": f"Step {step} variant {variant}", "body": f"Hi {{{{first_name|there}}}}, {step}{variant}.",
            "html": None}


def test_generate_writes_n_variants_that_each_know_the_others(
    client: TestClient[Any], auth_headers: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    campaign = client.post("/api/campaigns", headers=auth_headers, json={
        "name": "Freight", "pitch": "Cheaper freight.", "steps": [{}, {"delay_days": 2}]}).json()["id"]
    fake_openai.responder = numbered

    answer = client.post(f"/api/campaigns/{campaign}/templates/generate-all", headers=auth_headers, json={"variants": 2})

    assert answer.status_code == 201, answer.text
    assert [(t["step_number"], t["variant"], t["subject"]) for t in answer.json()] == [
        (1, "A", "Step 1 variant A"), (1, "B", "Step 1 variant B"),
        (2, "A", "Step 2 variant A"), (2, "B", "Step 2 variant B")]
    prompts = [prompt(body) for _, body in fake_openai.calls]
    assert len(prompts) == 4
    # B sees A to differ from it; step 2 of B follows up on B's first email, not A's.
    assert "take a clearly different angle" in prompts[1] and "Subject: Step 1 variant A" in prompts[1]
    assert "Email 1 already says (do not repeat it):\nSubject: Step 1 variant B" in prompts[3]
    assert "Email 1 already says (do not repeat it):\nSubject: Step 1 variant A" in prompts[2]

    too_many = client.post(f"/api/campaigns/{campaign}/templates/generate", headers=auth_headers,
                        json={"step_number": 1, "variants": 6})
    assert too_many.status_code == 400


def _templates(session: Session, campaign_id: int, step: int) -> list[Template]:
    return [t for t in list_templates(session, session.get_one(Campaign, campaign_id)) if t.step_number == step]


def test_leads_are_split_evenly_and_keep_their_variant_and_replies_are_counted_per_variant(
    client: TestClient[Any], auth_headers: dict[str, str], settings: Settings, fake_openai: FakeOpenAI
) -> None:
    campaign_id = client.post("/api/campaigns", headers=auth_headers, json={
        "name": "Freight", "pitch": "Cheaper freight.", "steps": [{}, {"delay_days": 2}]}).json()["id"]
    fake_openai.responder = numbered
    assert client.post(f"/api/campaigns/{campaign_id}/templates/generate-all", headers=auth_headers,
                    json={"variants": 3}).status_code == 201
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        session.execute(insert(Lead), [
            {"campaign_id": campaign_id, "email": f"l{n}@x.example", "email_key": f"l{n}@x.example",
             "custom_fields": {}, "reply_token": secrets.token_hex(16)} for n in range(90)])
        leads = session.scalars(select(Lead).where(Lead.campaign_id == campaign_id).order_by(Lead.id)).all()
        first = _templates(session, campaign_id, 1)
        second = _templates(session, campaign_id, 2)

        chosen = {lead.id: choose_variant(list(reversed(first)), lead.id) for lead in leads}

        # Even: 90 leads over 3 variants is 30 each; deterministic and stable across steps.
        assert Counter(t.variant for t in chosen.values()) == {"A": 30, "B": 30, "C": 30}
        assert all(choose_variant(first, lead.id) is chosen[lead.id] for lead in leads)
        assert all(choose_variant(second, lead.id).variant == chosen[lead.id].variant for lead in leads)

        # What the send path records: each lead's step-1 email from its variant; some leads got step 2 too.
        now = utcnow()
        for index, lead in enumerate(leads):
            session.add(EmailJob(campaign_id=campaign_id, lead_id=lead.id, step_number=1, due_at=now,
                                 status=JobStatus.SENT, template_id=chosen[lead.id].id, sent_at=now))
            if index < 30:
                session.add(EmailJob(campaign_id=campaign_id, lead_id=lead.id, step_number=2,
                                     due_at=now + timedelta(days=2), status=JobStatus.SENT,
                                     template_id=choose_variant(second, lead.id).id, sent_at=now))
        # Replies: 6 leads on A and 3 on C who only got step 1; 2 leads who replied after step 2 (B).
        replied_a = [lead for lead in leads[30:] if chosen[lead.id].variant == "A"][:6]
        replied_c = [lead for lead in leads[30:] if chosen[lead.id].variant == "C"][:3]
        replied_b2 = [lead for lead in leads[:30] if chosen[lead.id].variant == "B"][:2]
        for lead in replied_a + replied_c + replied_b2:
            lead.status = LeadStatus.REPLIED
    engine.dispose()

    stats = client.get(f"/api/campaigns/{campaign_id}/templates/variant-stats", headers=auth_headers)

    assert stats.status_code == 200, stats.text
    assert [(s["step_number"], s["variant"], s["sent"], s["replied"], s["reply_rate"]) for s in stats.json()] == [
        (1, "A", 30, 6, 0.2), (1, "B", 30, 0, 0.0), (1, "C", 30, 3, 0.1),
        (2, "A", 10, 0, 0.0), (2, "B", 10, 2, 0.2), (2, "C", 10, 0, 0.0),
    ]
