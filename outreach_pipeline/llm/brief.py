"""What a template writer is told, and what it must return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field


class TemplateDraft(BaseModel):
    """The structured output asked of the model."""

    subject: str = Field(description="Subject line, under 80 characters, may use placeholders.")
    body: str = Field(description="Plain-text body with {{placeholders}} for lead fields.")


@dataclass(frozen=True)
class StepBrief:
    campaign_name: str
    pitch: str
    tone: str
    sender_name: str
    step_number: int
    total_steps: int
    available_fields: Sequence[str]
    previous_steps: Sequence[TemplateDraft] = field(default_factory=tuple)

    @property
    def role(self) -> str:
        if self.step_number == 1:
            return "first touch"
        if self.step_number == self.total_steps and self.total_steps > 2:
            return "break-up"
        return "bump"


@dataclass(frozen=True)
class WrittenTemplate:
    draft: TemplateDraft
    source: str  # "openai" | "offline"
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TemplateWriter(Protocol):
    name: str

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        """Write the template for one step; `feedback` explains why a previous answer was refused."""
        ...

    def rewrite(self, brief: StepBrief, current: TemplateDraft, instruction: str) -> WrittenTemplate:
        """Rewrite an existing template following an instruction ("shorter", "more casual")."""
        ...
