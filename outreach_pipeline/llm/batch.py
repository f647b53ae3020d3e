"""OpenAI's Batch API for openers: upload the requests as JSONL, create a batch, poll it, read its output.

Each line's `custom_id` is the answer-cache key of its request, so results are matched back without
trusting their order. Half the price of live calls; answers come within the 24 h completion window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from openai import OpenAI

from outreach_pipeline.llm.brief import InvalidModelOutput, OpenerBrief, OpenerDraft, WrittenOpener
from outreach_pipeline.llm.prompts import opener_messages
from outreach_pipeline.llm.structured import PATHS, from_json, request_body

FINISHED = {"completed", "failed", "expired", "cancelled"}


@dataclass
class BatchResults:
    status: str  # the provider's: validating | in_progress | finalizing | completed | failed | expired | ...
    openers: dict[str, WrittenOpener] = field(default_factory=dict)  # custom_id -> answer
    errors: dict[str, str] = field(default_factory=dict)  # custom_id -> why it has no usable answer

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def submit_openers(client: OpenAI, style: str, model: str, requests: Sequence[tuple[str, OpenerBrief]],
                   metadata: dict[str, str]) -> str:
    """Upload one JSONL line per (custom_id, brief) and create the batch; returns the provider's batch id."""
    lines = [json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1" + PATHS[style],
                         "body": request_body(style, model, opener_messages(brief), OpenerDraft)})
             for custom_id, brief in requests]
    upload = client.files.create(file=("openers.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1" + PATHS[style],  # type: ignore[arg-type]
                                  completion_window="24h", metadata=metadata)
    return batch.id


def batch_status(client: OpenAI, batch_id: str) -> str:
    return client.batches.retrieve(batch_id).status


def collect_openers(client: OpenAI, style: str, model: str, batch_id: str) -> BatchResults:
    """The batch's answers once finished (an unfinished batch comes back with its status only)."""
    batch = client.batches.retrieve(batch_id)
    results = BatchResults(batch.status)
    if not results.finished:
        return results
    if batch.output_file_id:
        for raw in client.files.content(batch.output_file_id).text.splitlines():
            if raw.strip():
                _read_line(json.loads(raw), style, model, results)
    if batch.error_file_id:
        for raw in client.files.content(batch.error_file_id).text.splitlines():
            if raw.strip():
                line = json.loads(raw)
                results.errors.setdefault(line.get("custom_id", ""), str(line.get("error") or line.get("response")))
    return results


def _read_line(line: dict[str, object], style: str, model: str, results: BatchResults) -> None:
    custom_id = str(line.get("custom_id"))
    response = line.get("response") if isinstance(line.get("response"), dict) else {}
    assert isinstance(response, dict)
    if line.get("error") or response.get("status_code") != 200:
        results.errors[custom_id] = f"batch request failed: {line.get('error') or response.get('body')}"[:500]
        return
    try:
        parsed = from_json(style, response["body"], model, OpenerDraft)
    except InvalidModelOutput as error:
        results.errors[custom_id] = f"The answer could not be read: {error}"
        return
    results.openers[custom_id] = WrittenOpener(parsed.value.opener, "openai", parsed.model, parsed.prompt_tokens,
                                               parsed.completion_tokens)
