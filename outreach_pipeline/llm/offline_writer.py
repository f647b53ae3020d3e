"""A writer that needs no account: plain templates built from the campaign's own facts.

Its output is labelled `source="offline"` so nobody mistakes it for a model's work.
"""

from __future__ import annotations

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.llm.brief import StepBrief, TemplateDraft, WrittenTemplate


class OfflineWriter:
    name = "offline"

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        company = "{{company|your team}}" if "company" in brief.available_fields else "your team"
        sign_off = f"\n\nBest,\n{brief.sender_name}" if brief.sender_name else "\n\nBest"
        pitch = brief.pitch.strip() or f"{brief.campaign_name}"
        if brief.step_number == 1:
            draft = TemplateDraft(
                subject=f"{brief.campaign_name} for {company}",
                body=f"Hi {{{{first_name|there}}}},\n\n{pitch}\n\nWould it be worth a short call?{sign_off}",
            )
        elif brief.role == "break-up":
            draft = TemplateDraft(
                subject=f"Closing the loop, {{{{first_name|there}}}}",
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

    def rewrite(self, brief: StepBrief, current: TemplateDraft, instruction: str) -> WrittenTemplate:
        raise InvalidInputError("Rewriting needs a language model: set OPENAI_API_KEY or OPENAI_BASE_URL.")
