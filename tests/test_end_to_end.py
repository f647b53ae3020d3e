"""The whole flow through both doors: API and Dagster, real Postmark and OpenAI clients against local fakes.

Sign in by magic link, create a 3-step campaign, import leads through the API and through the bucket
sensor, generate templates, launch, send, follow up in the same thread after the delay, stop on a
reply, suppress on a bounce.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from dagster import DagsterInstance, build_sensor_context, instance_for_test, materialize
from litestar.testing import TestClient
from sqlalchemy import select

from outreach_api.app import create_app
from outreach_pipeline.assets.leads import lead_file_import, lead_files
from outreach_pipeline.assets.sends import email_sends, send_partitions
from outreach_pipeline.assets.templates import campaign_templates
from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus, Suppression
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.sensors import leads_bucket_sensor
from outreach_pipeline.settings import Settings
from tests.fakes.openai import FakeOpenAI
from tests.fakes.postmark import FakePostmark
from tests.fixtures import PROVIDER_FIXTURES, WEBHOOK_AUTH, sign_in, token_from_text

FIXTURES = PROVIDER_FIXTURES


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def _template_responder(body: dict[str, Any]) -> dict[str, str]:
    """A model that writes a different, valid email per step, as the prompt asks."""
    prompt = " ".join(m["content"] for m in body["messages"])
    step = prompt.split("This is email ", 1)[1].split(" ", 1)[0]
    return {
        "subject": f"Idea {step} for {{{{company|your team}}}}",
        "body": f"Hi {{{{first_name|there}}}},\n\nNote number {step} about our pitch.\n\nBest,\nAda",
    }


def _materialize_send(settings: Settings, instance: DagsterInstance) -> dict[str, Any]:
    key = send_partitions.get_last_partition_key()
    assert key is not None
    result = materialize([email_sends], partition_key=key, instance=instance,
                         resources=resources_from_settings(settings))
    assert result.success
    materialization = result.asset_materializations_for_node("email_sends")[0]
    return {k: v.value for k, v in materialization.metadata.items()}


def _post_webhook(client: TestClient[Any], path: str, payload: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(f"/api/webhooks/postmark/{path}", json=payload, auth=WEBHOOK_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_outreach_flow_end_to_end(
    provider_settings: Settings, fake_postmark: FakePostmark, fake_openai: FakeOpenAI, instance: DagsterInstance
) -> None:
    settings = provider_settings
    fake_openai.responder = _template_responder
    resources = resources_from_settings(settings)
    start = datetime.now(UTC)

    with TestClient(create_app(settings)) as client:
        # Sign in: the magic link travels through Postmark.
        headers = sign_in(client, "ada@sender.example",
                          lambda: token_from_text(fake_postmark.messages_to("ada@sender.example")[-1]["TextBody"]))

        campaign = client.post("/api/campaigns", headers=headers, json={
            "name": "Freight analytics", "pitch": "We cut freight costs by 12%.", "sender_name": "Ada",
            "sender_email": "ada@sender.example",
            "steps": [{}, {"delay_days": 2}, {"delay_days": 3}],
        })
        assert campaign.status_code == 201, campaign.text
        campaign_id = campaign.json()["id"]

        # Leads through the API...
        upload = client.post(f"/api/campaigns/{campaign_id}/leads/import", headers=headers,
                             files={"data": ("apollo.csv", (FIXTURES / "leads/apollo_export.csv").read_bytes(), "text/csv")})
        assert upload.status_code == 201, upload.text
        assert (upload.json()["stored"], upload.json()["rejected"]) == (6, 2)

        # ...and through the bucket sensor and the ingest asset.
        bucket = Path(settings.leads_bucket) / str(campaign_id)
        bucket.mkdir(parents=True)
        shutil.copy(FIXTURES / "leads/hubspot_export.csv", bucket / "hubspot.csv")
        with build_sensor_context(instance=instance, resources=resources) as context:
            sensor_result = leads_bucket_sensor(context)
        (run_request,) = sensor_result.run_requests
        assert run_request.partition_key == f"{campaign_id}/hubspot.csv"
        instance.add_dynamic_partitions(lead_files.name, [run_request.partition_key])
        ingest = materialize([lead_file_import], partition_key=run_request.partition_key, instance=instance,
                             resources=resources)
        metadata = ingest.asset_materializations_for_node("lead_file_import")[0].metadata
        assert (metadata["stored"].value, metadata["rejected"].value) == (4, 1)
        assert (bucket / "processed" / "hubspot.csv").is_file()

        # Templates from the model, through the Dagster asset.
        assert materialize([campaign_templates], instance=instance, resources=resources).success
        assert fake_openai.call_count == 3
        templates = client.get(f"/api/campaigns/{campaign_id}/templates", headers=headers).json()
        assert [(t["step_number"], t["source"]) for t in templates] == [(1, "openai"), (2, "openai"), (3, "openai")]

        launch = client.post(f"/api/campaigns/{campaign_id}/launch", headers=headers)
        assert launch.status_code == 200, launch.text
        assert launch.json()["queued_emails"] == 10

        # The current window has not closed yet: its partition does not exist, nothing goes out early.
        assert _materialize_send(settings, instance)["sent"] == 0

        # Once the window closes, step 1 goes out through Postmark.
        with time_machine.travel(start + timedelta(minutes=6), tick=True):
            assert _materialize_send(settings, instance)["sent"] == 10
        first_emails = [m for m in fake_postmark.messages if m.get("Tag") == f"campaign-{campaign_id}"]
        assert len(first_emails) == 10
        maya = next(m for m in first_emails if m["To"] == "maya.okafor@brightloop.io")
        assert maya["Subject"] == "Idea 1 for Brightloop Analytics"
        assert maya["ReplyTo"].startswith("reply+") and maya["ReplyTo"].endswith("@inbound.sender.example")

        # Nothing more is due until the delay has passed.
        with time_machine.travel(start + timedelta(days=1), tick=True):
            assert _materialize_send(settings, instance)["sent"] == 0

        # Two days later step 2 goes out, threaded under step 1.
        with time_machine.travel(start + timedelta(days=2, minutes=15), tick=True):
            assert _materialize_send(settings, instance)["sent"] == 10
        follow_up = [m for m in fake_postmark.messages_to("maya.okafor@brightloop.io")][-1]
        assert follow_up["Subject"] == "Re: Idea 1 for Brightloop Analytics"
        follow_headers = {h["Name"]: h["Value"] for h in follow_up["Headers"]}
        assert follow_headers["In-Reply-To"] == f"<{maya['MessageID']}@mtasv.net>"
        assert follow_headers["References"] == f"<{maya['MessageID']}@mtasv.net>"

        # Maya replies: her sequence stops.
        inbound = json.loads((FIXTURES / "postmark/inbound.json").read_text())
        inbound["MailboxHash"] = maya["ReplyTo"].split("+", 1)[1].split("@", 1)[0]
        inbound["From"] = "maya.okafor@brightloop.io"
        assert not _post_webhook(client, "inbound", inbound)["duplicate"]
        assert _post_webhook(client, "inbound", inbound)["duplicate"]  # a replay changes nothing

        # Daniel's first email bounces: his address is suppressed.
        daniel = next(m for m in first_emails if m["To"].lower() == "dreyes@northwindfreight.com")
        bounce = json.loads((FIXTURES / "postmark/bounce.json").read_text())
        bounce.update({"MessageID": daniel["MessageID"], "Email": daniel["To"]})
        assert "suppressed" in _post_webhook(client, "bounce", bounce)["outcome"]

        # Three days after step 2, step 3 goes to everyone else.
        with time_machine.travel(start + timedelta(days=5, minutes=30), tick=True):
            assert _materialize_send(settings, instance)["sent"] == 8
        assert len(fake_postmark.messages_to("maya.okafor@brightloop.io")) == 2
        assert len(fake_postmark.messages_to("dreyes@northwindfreight.com")) == 2

        stats = client.get(f"/api/campaigns/{campaign_id}", headers=headers).json()
        assert stats["status"] == "COMPLETED"
        assert stats["stats"]["replied"] == 1 and stats["stats"]["bounced"] == 1
        assert stats["stats"]["jobs_by_step"]["3"] == {"PENDING": 0, "SENDING": 0, "SENT": 8, "FAILED": 0,
                                                        "SKIPPED": 2}

        with client.app.state.services.sessions() as session:
            maya_lead = session.scalar(select(Lead).where(Lead.email_key == "maya.okafor@brightloop.io"))
            assert maya_lead is not None and maya_lead.status == LeadStatus.REPLIED
            step3 = session.scalar(select(EmailJob).where(EmailJob.lead_id == maya_lead.id,
                                                          EmailJob.step_number == 3))
            assert step3 is not None and step3.status == JobStatus.SKIPPED
            assert session.scalar(select(Suppression.reason).where(
                Suppression.email == "dreyes@northwindfreight.com")) == "bounce"
