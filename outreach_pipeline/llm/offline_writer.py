"""A writer that needs no account: plain templates and openers built from the campaign's own facts.

Its output is labelled `source="offline"` so nobody mistakes it for a model's work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.llm.brief import OpenerBrief, StepBrief, TemplateDraft, WrittenOpener, WrittenTemplate


class OfflineWriter:
    name = "offline"
    model = None

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        company = "{{company|your team}}" if "company" in brief.available_fields else "your team"
        sign_off = f"\n\nBest,\n{brief.sender_name}" if brief.sender_name else "\n\nBest"
        pitch = brief.pitch.strip() or f"{brief.campaign_name}"
        opener = "{{ai_opener}}\n\n" if brief.use_ai_opener else ""
        # Variants differ by their question, so an A/B test of offline templates still has two texts.
        ask = {"A": "Would it be worth a short call?", "B": "Is this on your list for this quarter?"}.get(
            brief.variant, f"Worth a look? (variant {brief.variant})")
        if brief.step_number == 1:
            draft = TemplateDraft(
                subject=f"{brief.campaign_name} for {company}",
                body=f"Hi {{{{first_name|there}}}},\n\n{opener}{pitch}\n\n{ask}{sign_off}",
            )
        elif brief.role == "break-up":
            draft = TemplateDraft(
                subject="Closing the loop, {{first_name|there}}",
                body=(
                    "Hi {{first_name|there}},\n\nI have not heard back, so I will not write again. "
                    f"If {company} ever wants to talk about it, just reply.{sign_off}"
                ),
            )
        else:
            draft = TemplateDraft(
                subject=f"Following up: {brief.campaign_name}",
                body=(
                    "Hi {{first_name|there}},\n\nFollowing up on my last note in case it got buried. "
                    f"Is this something {company} is looking at?{sign_off}"
                ),
            )
        return WrittenTemplate(draft=draft, source="offline", model=None)

    def rewrite(
        self, brief: StepBrief, current: TemplateDraft, instruction: str, feedback: str | None = None
    ) -> WrittenTemplate:
        raise InvalidInputError("Rewriting needs a language model: set OPENAI_API_KEY or OPENAI_BASE_URL.")

    @asynccontextmanager
    async def opener_client(self, concurrency: int = 16) -> AsyncIterator[_OfflineOpeners]:
        yield _OfflineOpeners()


class _OfflineOpeners:
    async def write_opener(self, brief: OpenerBrief, feedback: str | None = None) -> WrittenOpener:
        """A plain line from the lead's own title and company: nothing invented."""
        fields = brief.lead_fields
        title, company = fields.get("title"), fields.get("company")
        if title and company:
            text = f"I am writing to you as {title} at {company}."
        elif company:
            text = f"I am writing to you because of your work at {company}."
        else:
            text = "I am writing to you directly because this seemed relevant to your work."
        return WrittenOpener(text, "offline", None)
