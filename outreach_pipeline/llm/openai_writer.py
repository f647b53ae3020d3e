"""Templates from any OpenAI-compatible endpoint through the official SDK's structured output."""

from __future__ import annotations

from openai import OpenAI

from outreach_pipeline.llm.brief import StepBrief, TemplateDraft, WrittenTemplate
from outreach_pipeline.llm.prompts import rewrite_messages, write_messages


class OpenAIWriter:
    name = "openai"

    def __init__(self, api_key: str, model: str, base_url: str | None = None, max_retries: int = 3) -> None:
        # Local servers (Ollama, vLLM) accept any key; the SDK insists on one.
        self.client = OpenAI(api_key=api_key or "unused", base_url=base_url or None, max_retries=max_retries)
        self.model = model

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        return self._complete(write_messages(brief, feedback))

    def rewrite(self, brief: StepBrief, current: TemplateDraft, instruction: str) -> WrittenTemplate:
        return self._complete(rewrite_messages(brief, current, instruction))

    def _complete(self, messages: list[dict[str, str]]) -> WrittenTemplate:
        completion = self.client.chat.completions.parse(
            model=self.model, messages=messages, response_format=TemplateDraft  # type: ignore[arg-type]
        )
        message = completion.choices[0].message
        if message.parsed is None:
            raise ValueError(message.refusal or "the model returned no template")
        usage = completion.usage
        return WrittenTemplate(
            draft=message.parsed,
            source="openai",
            model=completion.model or self.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
