"""What each email carries: rendered, escaped, header-safe, threaded, with its unsubscribe and footer; and the
pre-flight and suppression rules that decide whether it goes at all."""

from __future__ import annotations

import html
import secrets
import time

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.campaigns import CampaignCreate, StepSpec, create_campaign, launch_campaign
from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.placeholders import render
from outreach_pipeline.core.reconcile import _variant_sent
from outreach_pipeline.core.suppression import suppress_domain
from outreach_pipeline.core.templates import TemplateInput, save_template
from outreach_pipeline.db.models import Campaign, EmailJob, JobStatus, Lead, LeadStatus, Template, User
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.settings import Settings
from tests.fakes.postmark import FakePostmark
from tests.test_delivery_processes import seed_campaign
from tests.test_delivery_rules import send


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _headers(message: dict[str, Any]) -> dict[str, str]:
    return {h["Name"]: h["Value"] for h in message.get("Headers", [])}


def test_lead_values_are_escaped_in_html_and_never_put_a_line_break_in_a_header(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 2)
    with session_scope(sessions) as session:
        first, second = session.scalars(select(Lead).where(Lead.campaign_id == seeded.campaign_id).order_by(Lead.id))
        first.first_name, first.company = "<b>Eve</b> & co", "Acme\r\nBcc: victim@else.example"
        second.first_name = None  # the fallback fills in
        session.get_one(Campaign, seeded.campaign_id).postal_address = "Ada Ltd, 1 Main St, Springfield"

    send(sessions, fake_postmark)

    eve, other = sorted(fake_postmark.messages, key=lambda m: m["To"])
    assert eve["Subject"] == "Hello Acme Bcc: victim@else.example"
    assert "Bcc" not in eve and all("\r" not in v and "\n" not in v for v in _headers(eve).values())
    assert "Hi &lt;b&gt;Eve&lt;/b&gt; &amp; co, step 1." in eve["HtmlBody"]
    assert eve["TextBody"].startswith("Hi <b>Eve</b> & co, step 1.")
    assert other["TextBody"].startswith("Hi there, step 1.")
    for message in (eve, other):
        headers = _headers(message)
        token = message["ReplyTo"].removeprefix("reply+").split("@")[0]
        assert message["ReplyTo"] == f"reply+{token}@inbound.sender.example"
        assert headers["List-Unsubscribe"] == f"<https://outreach.example/unsubscribe/{token}>"
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f"Unsubscribe: https://outreach.example/unsubscribe/{token}" in message["TextBody"]
        assert f'href="https://outreach.example/unsubscribe/{token}"' in message["HtmlBody"]
        assert message["TextBody"].rstrip().endswith("Ada Ltd, 1 Main St, Springfield")
        assert "Ada Ltd, 1 Main St, Springfield" in message["HtmlBody"]


def test_a_template_with_its_own_html_version_sends_that_html_with_lead_values_escaped(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 2)
    with session_scope(sessions) as session:
        first, second = session.scalars(select(Lead).where(Lead.campaign_id == seeded.campaign_id).order_by(Lead.id))
        first.first_name, second.first_name = "<b>Eve</b> & co", None
        template = session.scalar(select(Template).where(Template.campaign_id == seeded.campaign_id))
        assert template is not None
        template.html_body = "<p>Hi <strong>{{first_name|Tom & Jerry}}</strong>,</p>\n<p>step 1.</p>"

    send(sessions, fake_postmark)

    eve, other = sorted(fake_postmark.messages, key=lambda m: m["To"])
    assert eve["HtmlBody"].startswith("<div><p>Hi <strong>&lt;b&gt;Eve&lt;/b&gt; &amp; co</strong>,</p>\n<p>step 1.</p>"
                                      "</div>")
    assert other["HtmlBody"].startswith("<div><p>Hi <strong>Tom & Jerry</strong>,</p>")  # the template's own HTML
    assert "Unsubscribe</a>" in eve["HtmlBody"]
    assert eve["TextBody"].startswith("Hi <b>Eve</b> & co, step 1.")  # the text part from the text body


def test_a_fallback_is_escaped_once_in_html_and_a_lead_value_always() -> None:
    template = html.escape("Hi {{first_name|Tom & Jerry}}, {{company|<none>}}")  # as compose escapes a template
    assert render(template, {}, escape_html=True) == "Hi Tom &amp; Jerry, &lt;none&gt;"
    assert render(template, {"first_name": "<b>Eve</b> & co", "company": ""}, escape_html=True) == (
        "Hi &lt;b&gt;Eve&lt;/b&gt; &amp; co, &lt;none&gt;")
    assert render("Hi {{first_name|Tom & Jerry}}", {}) == "Hi Tom & Jerry"


def test_follow_ups_thread_under_the_first_email_unless_the_step_says_not_to(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 1, steps=[StepSpec(), StepSpec(delay_days=2), StepSpec(delay_days=2, thread=False)])
    for _ in range(3):
        send(sessions, fake_postmark)
        with session_scope(sessions) as session:  # the next step falls due now
            session.execute(update(EmailJob).where(EmailJob.status == JobStatus.PENDING)
                            .values(due_at=datetime.now(UTC) - timedelta(seconds=1)))

    first, second, third = fake_postmark.messages
    parent = f"<{first['MessageID']}@mtasv.net>"
    assert "In-Reply-To" not in _headers(first)
    assert second["Subject"] == f"Re: {first['Subject']}"
    assert (_headers(second)["In-Reply-To"], _headers(second)["References"]) == (parent, parent)
    assert third["Subject"] == "Hello Acme" and "In-Reply-To" not in _headers(third)
    assert [m["Metadata"]["step"] for m in (first, second, third)] == ["1", "2", "3"]
    del seeded



def test_a_first_email_the_reconciler_settles_keeps_its_subject_and_variant_for_the_follow_up(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    seeded = seed_campaign(sessions, 2, steps=[StepSpec(), StepSpec(delay_days=2)])
    with session_scope(sessions) as session:  # an A/B test on step 1: one lead gets each variant
        save_template(session, session.get_one(Campaign, seeded.campaign_id), TemplateInput(
            step_number=1, variant="B", subject="Quick question, {{company}}", body="Hi {{first_name|there}}."))
    fake_postmark.latency_s = 0.5  # Postmark accepts the batch after our client has given up waiting
    assert send(sessions, fake_postmark, timeout=0.2).uncertain == 2
    fake_postmark.latency_s = 0
    deadline = time.monotonic() + 5
    while len(fake_postmark.messages) < 2 and time.monotonic() < deadline:  # the late batch lands
        time.sleep(0.05)

    # Once the lease has passed, the reconciler finds both at Postmark and records them as sent.
    assert send(sessions, fake_postmark, datetime.now(UTC) + timedelta(minutes=16)).reconciled_sent == 2
    firsts = {m["Metadata"]["job_id"]: m for m in fake_postmark.messages}
    with session_scope(sessions) as session:
        settled = session.execute(select(EmailJob.id, EmailJob.subject, Template.subject.label("template"))
                                  .join(Template, Template.id == EmailJob.template_id)).all()
        session.execute(update(EmailJob).where(EmailJob.step_number == 2)
                        .values(due_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert sorted(template for *_, template in settled) == ["Hello {{company}}", "Quick question, {{company}}"]
    assert {str(job_id): subject for job_id, subject, _ in settled} == {
        job_id: message["Subject"] for job_id, message in firsts.items()}

    assert send(sessions, fake_postmark).sent == 2
    by_lead = {m["To"]: m for m in fake_postmark.messages[:2]}
    for follow_up in fake_postmark.messages[2:]:
        first = by_lead[follow_up["To"]]
        assert follow_up["Subject"] == f"Re: {first['Subject']}"
        assert _headers(follow_up)["In-Reply-To"] == f"<{first['MessageID']}@mtasv.net>"


def test_a_suppressed_domain_stops_mail_to_every_address_there_in_every_campaign(
    sessions: sessionmaker[Session], fake_postmark: FakePostmark
) -> None:
    first = seed_campaign(sessions, 2)
    second = seed_campaign(sessions, 2)
    with session_scope(sessions) as session:
        suppress_domain(session, first.owner_id, f"c{first.campaign_id}.example")

    report = send(sessions, fake_postmark)

    assert (report.sent, report.skipped) == (2, 2)
    assert {m["To"].split("@")[1] for m in fake_postmark.messages} == {f"c{second.campaign_id}.example"}


def test_launch_names_the_leads_that_lack_a_custom_field_a_template_needs(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        owner = User(email="op@company.example")
        session.add(owner)
        session.flush()
        campaign = create_campaign(session, owner.id, CampaignCreate(name="Custom", sender_email="a@b.example"))
        for n, fields in enumerate([{"industry": "freight"}, {"industry": ""}, {}]):
            session.add(Lead(campaign_id=campaign.id, email=f"l{n}@x.example", email_key=f"l{n}@x.example",
                             custom_fields=fields, reply_token=secrets.token_hex(16)))
        session.flush()
        save_template(session, campaign, TemplateInput(step_number=1, subject="About {{industry}}",
                                                       body="Hi {{first_name|there}}"))
        with pytest.raises(InvalidInputError) as refused:
            launch_campaign(session, campaign)
    assert refused.value.details == [
        "Template for step 1 uses {{industry}} but 2 lead(s) have no industry (e.g. l1@x.example, l2@x.example); "
        "add a fallback like {{industry|there}}."]


def test_one_click_unsubscribe_answers_post_with_200_and_a_get_changes_nothing(
    settings: Settings, client: TestClient[Any]
) -> None:
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        seeded = seed_campaign(sessions, 1)
        with session_scope(sessions) as session:
            lead = session.scalars(select(Lead).where(Lead.campaign_id == seeded.campaign_id)).one()
            token, lead_id = lead.reply_token, lead.id

        page = client.get(f"/unsubscribe/{token}", follow_redirects=False)
        assert page.status_code == 200 and 'method="post"' in page.text
        with session_scope(sessions) as session:
            assert session.get_one(Lead, lead_id).status == LeadStatus.PENDING

        # What a mail client sends for RFC 8058 one-click.
        answer = client.post(f"/unsubscribe/{token}", content="List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, follow_redirects=False)
        assert answer.status_code == 200 and "location" not in answer.headers
        with session_scope(sessions) as session:
            assert session.get_one(Lead, lead_id).status == LeadStatus.UNSUBSCRIBED
            assert session.scalars(select(EmailJob.status).where(EmailJob.lead_id == lead_id)).all() == [
                JobStatus.SKIPPED]
    finally:
        engine.dispose()


def test_the_reconciler_credits_the_variant_whose_subject_went_out_even_after_a_variant_is_added(
    sessions: sessionmaker[Session],
) -> None:
    seeded = seed_campaign(sessions, 2)  # one variant, A: "Hello {{company}}"
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, seeded.campaign_id)
        save_template(session, campaign, TemplateInput(step_number=1, variant="B", subject="Other {{company}}",
                                                       body="Hi {{first_name|there}}"))
        session.flush()
        variant = {t.id: t.variant for t in session.scalars(select(Template))}
        jobs = session.scalars(select(EmailJob).where(EmailJob.campaign_id == seeded.campaign_id)).all()

        # Both went out as A, before B existed: the subject says so, whatever lead id % 2 picks now.
        assert {variant[_variant_sent(session, job, "Hello Acme")] for job in jobs} == {"A"}
        assert {variant[_variant_sent(session, job, "Other Acme")] for job in jobs} == {"B"}
        # No subject from the provider: the lead's deterministic variant.
        assert sorted(variant[_variant_sent(session, job, None)] for job in jobs) == ["A", "B"]
