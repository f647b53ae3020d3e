"""One structured-output call through either OpenAI API: Chat Completions or Responses.

The JSON schema is built once per pydantic model (strict, as OpenAI's structured output requires) and the
answer is validated with the same model: the SDK's `.parse()` helpers rebuild the schema on every call,
which costs more CPU than the request itself when thousands of openers are in flight. An answer that is
not valid JSON for the schema (truncated, refused) raises InvalidModelOutput so callers can feed the
reason back to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import httpx2
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from outreach_pipeline.llm.brief import InvalidModelOutput
from outreach_pipeline.llm.prompts import Messages

T = TypeVar("T", bound=BaseModel)

CHAT, RESPONSES = "chat", "responses"


@dataclass(frozen=True)
class Parsed(Generic[T]):
    value: T
    model: str
    prompt_tokens: int
    completion_tokens: int


@cache
def strict_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in OpenAI's strict form: every property required, no extras, no defaults.

    Enough for the flat models asked here (strings and nullable strings); nested models would need $defs.
    """
    json_schema = schema.model_json_schema()
    properties = json_schema.get("properties", {})
    for prop in properties.values():
        prop.pop("default", None)
    return {**json_schema, "required": list(properties), "additionalProperties": False}


def _chat_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": strict_schema(schema), "strict": True}}


def _responses_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": schema.__name__, "schema": strict_schema(schema), "strict": True}}


def _validate(schema: type[T], text: str | None, refusal: str | None = None) -> T:
    if not text:
        raise InvalidModelOutput(refusal or "the model returned no answer")
    try:
        return schema.model_validate_json(text)
    except ValueError as error:  # pydantic.ValidationError is a ValueError
        first = str(error).splitlines()
        raise InvalidModelOutput(f"the answer is not valid JSON for the schema: {' '.join(first[:3])[:300]}") from error


def _from_chat(completion: Any, model: str, schema: type[T]) -> Parsed[T]:
    message = completion.choices[0].message
    usage = completion.usage
    return Parsed(_validate(schema, message.content, message.refusal), completion.model or model,
                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)


def _from_response(response: Any, model: str, schema: type[T]) -> Parsed[T]:
    usage = response.usage
    return Parsed(_validate(schema, response.output_text), response.model or model,
                  usage.input_tokens if usage else 0, usage.output_tokens if usage else 0)


def parse(client: OpenAI, style: str, model: str, messages: Messages, schema: type[T]) -> Parsed[T]:
    if style == RESPONSES:
        response = client.responses.create(model=model, input=messages, text=_responses_format(schema))  # type: ignore[arg-type]
        return _from_response(response, model, schema)
    completion = client.chat.completions.create(model=model, messages=messages, response_format=_chat_format(schema))  # type: ignore[arg-type]
    return _from_chat(completion, model, schema)


def _output_text(response: dict[str, Any]) -> str:
    return "".join(part.get("text", "") for item in response.get("output") or [] if item.get("type") == "message"
                   for part in item.get("content") or [] if part.get("type") == "output_text")


async def parse_async(client: AsyncOpenAI, style: str, model: str, messages: Messages, schema: type[T]) -> Parsed[T]:
    """The batch path: the same request bodies as `parse`, sent with the SDK's plain `client.post` (its
    documented way to make a request with the client's auth, retries and retry-after handling) and read
    as JSON. The typed methods transform every parameter and build typed response objects, which costs
    about 40% of the client's CPU per request: what limits thousands of concurrent openers."""
    raw = await client.post(PATHS[style], cast_to=httpx2.Response, body=request_body(style, model, messages, schema))
    return from_json(style, raw.json(), model, schema)


PATHS = {CHAT: "/chat/completions", RESPONSES: "/responses"}


def request_body(style: str, model: str, messages: Messages, schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON body of a structured-output request (also a Batch API line's body)."""
    if style == RESPONSES:
        return {"model": model, "input": messages, "text": _responses_format(schema)}
    return {"model": model, "messages": messages, "response_format": _chat_format(schema)}


def from_json(style: str, payload: dict[str, Any], model: str, schema: type[T]) -> Parsed[T]:
    """Read a chat.completion or response object (as JSON) into the schema's model and its token usage."""
    usage = payload.get("usage") or {}
    if style == RESPONSES:
        return Parsed(_validate(schema, _output_text(payload)), payload.get("model") or model,
                      int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
    message = (payload.get("choices") or [{}])[0].get("message") or {}
    return Parsed(_validate(schema, message.get("content"), message.get("refusal")), payload.get("model") or model,
                  int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
