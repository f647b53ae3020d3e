"""Templates and openers from any OpenAI-compatible endpoint through the official SDK's structured output.

Retries are the SDK's: 408/409/429/5xx and connection errors are retried `max_retries` times with
exponential backoff, and a 429's `retry-after` is honoured.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from openai import APIError, AsyncOpenAI, OpenAI

from outreach_pipeline.llm.brief import (
    OpenerBrief,
    OpenerDraft,
    StepBrief,
    TemplateDraft,
    WrittenOpener,
    WriterUnavailableError,
    WrittenTemplate,
)
from outreach_pipeline.llm.prompts import Messages, opener_messages, rewrite_messages, write_messages
from outreach_pipeline.llm.structured import CHAT, parse, parse_async


class OpenAIWriter:
    name = "openai"

    def __init__(self, api_key: str, model: str, base_url: str | None = None, max_retries: int = 4,
                 api_style: str = CHAT, timeout: float = 60.0) -> None:
        # Local servers (Ollama, vLLM) accept any key; the SDK insists on one.
        self._options = {"api_key": api_key or "unused", "base_url": base_url or None,
                         "max_retries": max_retries, "timeout": timeout}
        self.client = OpenAI(**self._options)  # type: ignore[arg-type]
        self.model = model
        self.api_style = api_style

    def write(self, brief: StepBrief, feedback: str | None = None) -> WrittenTemplate:
        return self._complete(write_messages(brief, feedback))

    def rewrite(
        self, brief: StepBrief, current: TemplateDraft, instruction: str, feedback: str | None = None
    ) -> WrittenTemplate:
        return self._complete(rewrite_messages(brief, current, instruction, feedback))

    def _complete(self, messages: Messages) -> WrittenTemplate:
        try:
            parsed = parse(self.client, self.api_style, self.model, messages, TemplateDraft)
        except APIError as error:  # the SDK already retried what was worth retrying
            raise WriterUnavailableError(f"{type(error).__name__}: {error}") from error
        return WrittenTemplate(parsed.value, "openai", parsed.model, parsed.prompt_tokens, parsed.completion_tokens)

    @asynccontextmanager
    async def opener_client(self, concurrency: int = 16) -> AsyncIterator[_AsyncOpeners]:
        # An async client lives in one event loop: one set per batch, closed with it. Several clients of
        # about CONNECTIONS_PER_CLIENT connections each: the connection pool looks at every connection it
        # holds on each request, so one pool of 50 costs more CPU than five of 10.
        count = max(1, -(-concurrency // CONNECTIONS_PER_CLIENT))
        clients = [AsyncOpenAI(**self._options) for _ in range(count)]  # type: ignore[arg-type]
        try:
            yield _AsyncOpeners(clients, self.model, self.api_style)
        finally:
            for client in clients:
                await client.close()


CONNECTIONS_PER_CLIENT = 10


class _AsyncOpeners:
    def __init__(self, clients: list[AsyncOpenAI], model: str, api_style: str) -> None:
        self.clients, self.model, self.api_style = clients, model, api_style
        self._turn = itertools.cycle(clients)

    async def write_opener(self, brief: OpenerBrief, feedback: str | None = None) -> WrittenOpener:
        try:
            parsed = await parse_async(next(self._turn), self.api_style, self.model,
                                       opener_messages(brief, feedback), OpenerDraft)
        except APIError as error:  # the SDK already retried what was worth retrying
            raise WriterUnavailableError(f"{type(error).__name__}: {error}") from error
        return WrittenOpener(parsed.value.opener, "openai", parsed.model, parsed.prompt_tokens, parsed.completion_tokens)
