"""What a writer is told, and what it must return: step templates and per-lead opening lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field


class TemplateDraft(BaseModel):
    """The structured output asked of the model for a step's template."""

    subject: str = Field(description="Subject line, under 80 characters, may use placeholders.")
    body: str = Field(description="Plain-text body with {{placeholders}} for lead fields.")
    html: str | None = Field(None, description="Optional simple HTML version of the same body, or null.")


class OpenerDraft(BaseModel):
    """The structured output asked of the model for one lead's opening line."""

    opener: str = Field(description="One sentence, under 30 words, personal to this lead. No greeting.")


class InvalidModelOutput(ValueError):
    """The model's answer could not be read as the requested schema (truncated JSON, refusal...)."""


class WriterUnavailableError(RuntimeError):
    """The model endpoint did not answer usefully after the SDK's retries (rate limit, 5xx, auth, network)."""


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
    # A/B testing: which variant this is, and the step's other variants it must differ from.
    variant: str = "A"
    other_variants: Sequence[TemplateDraft] = field(default_factory=tuple)
    # One real lead's values, so the model sees what the placeholders will hold.
    sample_lead: Mapping[str, str] | None = None
    # Ask the model to place the per-lead {{ai_opener}} line (first touch only).
    use_ai_opener: bool = False

    @property
    def role(self) -> str:
        if self.step_number == 1:
            return "first touch"
        if self.step_number == self.total_steps and self.total_steps > 2:
            return "break-up"
        return "bump"


@dataclass(frozen=True)
class OpenerBrief:
    """What the model may know to write one lead's opening line (never the address itself)."""

    campaign_name: str
    pitch: str
    tone: str
    lead_fields: Mapping[str, str]


@dataclass(frozen=True)
class WrittenTemplate:
    draft: TemplateDraft
    source: str  # "openai" | "offline"
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False  # served from the answer cache: no call was made, no tokens spent


@dataclass(frozen=True)
class WrittenOpener:
    text: str
    source: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TemplateWriter(Protocol):
    name: str
    model: str | None  # None: no model is called (offline), so nothing is cached

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        """Write the template for one step; `feedback` explains why a previous answer was refused."""
        ...

    def rewrite(
        self, brief: StepBrief, current: TemplateDraft, instruction: str, feedback: str | None = None
    ) -> WrittenTemplate:
        """Rewrite an existing template following an instruction ("shorter", "more casual")."""
        ...

    def opener_client(self, concurrency: int = 16) -> AbstractAsyncContextManager[OpenerClient]:
        """An async client for a batch of openers, open for the batch's duration (one event loop), sized
        for `concurrency` requests in flight."""
        ...


class OpenerClient(Protocol):
    async def write_opener(self, brief: OpenerBrief, feedback: str | None = None) -> WrittenOpener:
        """Write one lead's opening line; raises InvalidModelOutput or WriterUnavailableError."""
        ...
