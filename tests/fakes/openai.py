"""A local stand-in for OpenAI's Chat Completions and Responses APIs, driven through the real ``openai`` SDK.

    with FakeOpenAI() as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.url + "/v1", max_retries=0)
        client.chat.completions.parse(model="m", messages=[...], response_format=Draft)

Contract followed (https://platform.openai.com/docs/api-reference):

- ``Authorization: Bearer <key>`` with a non-empty key (or exactly ``api_key`` when one is configured),
  else HTTP 401 with ``{"error": {"message", "type": "invalid_request_error", "param", "code": "invalid_api_key"}}``.
  Every error uses that ``{"error": {...}}`` shape; the SDK maps the status to ``AuthenticationError``,
  ``RateLimitError``, ``InternalServerError``... and retries 408/409/429/5xx, honouring ``retry-after``.
- ``POST /v1/chat/completions`` answers a ``chat.completion`` object; ``POST /v1/responses`` a ``response``
  object whose ``output`` holds one assistant message with an ``output_text`` part.
- ``POST /v1/files`` (multipart: ``file``, ``purpose``) stores a file and answers a ``file`` object;
  ``GET /v1/files/{id}/content`` answers its bytes. ``POST /v1/batches`` (``input_file_id``, ``endpoint``,
  ``completion_window``) answers a ``batch`` in ``validating``; ``GET /v1/batches/{id}`` runs the batch's
  JSONL requests through the same endpoints once ``batch_polls_before_done`` polls have passed (default 0:
  the first poll completes it) and then answers it ``completed`` with an ``output_file_id`` whose lines are
  ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. Batch lines are not
  HTTP requests: ``calls`` records the uploads and polls, ``batch_lines`` counts the lines answered.
- With structured output (``response_format`` / ``text.format`` of type ``json_schema``), the text is a
  JSON object valid for the schema. It comes from ``fake.responder(request_body)``; the default responder
  fills the schema with a plausible cold email (``subject``/``body``) and nulls where null is allowed.

Only the standard library is used; the server runs in a background thread on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from email.message import Message
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any
from urllib.parse import urlsplit

from tests.fakes._server import App, LocalHTTPServer, Reply  # noqa: F401  (App, Reply: kept importable here)

# The body of a request -> the object to serialise as the answer's text (a str is sent verbatim).
Responder = Callable[[dict[str, Any]], "dict[str, Any] | str"]

DEFAULT_SUBJECT = "Quick question, {{first_name}}"
DEFAULT_BODY = (
    "Hi {{first_name|there}},\n\n"
    "I noticed {{company}} has been growing its team, and wondered how you are handling outbound today. "
    "We help teams like yours book more meetings without adding headcount.\n\n"
    "Would a 15-minute call next week be worth it?\n\n"
    "Best,\nThe team"
)
# What ``invalid_json_next`` sends: truncated JSON, as when a model stops mid-object.
INVALID_JSON_TEXT = '{"subject": "Quick question, {{first_name}}", "body": "Hi {{first'


def request_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks for: Chat's ``response_format`` or Responses' ``text.format``."""
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if isinstance(text_format, Mapping) and text_format.get("type") == "json_schema":
        schema = text_format.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    return None


def sample_for_schema(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, name: str = "") -> Any:
    """A value valid for ``schema``: the cold-email text for ``subject``/``body``, null wherever allowed."""
    root = schema if root is None else root
    if "$ref" in schema:  # "#/$defs/Name" as pydantic writes it
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target[part]
        return sample_for_schema(target, root, name)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = list(schema[key])
            if any(option.get("type") == "null" for option in options):
                return None
            return sample_for_schema(options[0], root, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return None if None in schema["enum"] else schema["enum"][0]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        if "null" in kind:
            return None
        kind = kind[0]
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: sample_for_schema(value, root, key) for key, value in properties.items()}
    if kind == "array":
        return [sample_for_schema(schema.get("items") or {}, root, name) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return {"subject": DEFAULT_SUBJECT, "body": DEFAULT_BODY}.get(name, f"example {name}".strip())
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    return None


def default_responder(body: dict[str, Any]) -> dict[str, Any]:
    """Fill the requested schema; without one, answer the subject/body pair anyway."""
    schema = request_schema(body)
    if schema is None:
        return {"subject": DEFAULT_SUBJECT, "body": DEFAULT_BODY}
    sample = sample_for_schema(schema)
    return sample if isinstance(sample, dict) else {"value": sample}


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope, with the type and code the real API uses for each status."""
    kind, code, default = {
        400: ("invalid_request_error", None, "Bad request."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
        404: ("invalid_request_error", None, "Not found."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again shortly."),
        500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}."))
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def _text_of(content: Any) -> str:
    """Text inside a message's content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(part.get("text") or part.get("content")) for part in content if isinstance(part, dict))
    return ""


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # rough: about four characters a token


class FakeOpenAI(LocalHTTPServer):
    """OpenAI's chat-completions and responses endpoints on a random local port. See the module docstring."""

    def __init__(self, api_key: str | None = None, responder: Responder | None = None) -> None:
        super().__init__()
        # None: any non-empty bearer key is accepted; otherwise exactly this one.
        self.api_key = api_key
        # Called with each request body (outside the lock); swap it per test.
        self.responder: Responder = responder or default_responder
        # Seconds to sleep before answering each request.
        self.latency_s: float = 0.0
        self._lock = threading.Lock()
        self._calls: list[tuple[str, Any]] = []
        self._faults: list[tuple[int, float | None]] = []
        self._invalid_json = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._batch_polls: dict[str, int] = {}
        self._batch_lines = 0
        # Polls of GET /v1/batches/{id} answered "in_progress" before the batch completes.
        self.batch_polls_before_done: int = 0

    # -- how answers are written (every answer, errors included, is JSON) ------------------------

    def _crash_reply(self, error: Exception) -> Reply:
        return 500, _error_body(500, f"{type(self).__name__} crashed: {error!r}"), {}

    def _encode(self, payload: Any) -> tuple[bytes, str]:
        if isinstance(payload, bytes):  # a file's content
            return payload, "application/octet-stream"
        return json.dumps(payload).encode(), "application/json"

    # -- recorded state and fault injection ----------------------------------------------------

    @property
    def calls(self) -> list[tuple[str, Any]]:
        """Every request received, as (path, parsed JSON body or None), failed ones included."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self._calls)

    def file_content(self, file_id: str) -> bytes:
        """The bytes of an uploaded (or batch output) file."""
        with self._lock:
            return self._files[file_id][1]

    @property
    def batch_lines(self) -> int:
        """Batch request lines answered so far (each is one model answer, without an HTTP request)."""
        with self._lock:
            return self._batch_lines

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was answering at the same moment (since start or reset)."""
        with self._lock:
            return self._max_in_flight

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``times`` requests with HTTP ``status`` in OpenAI's error shape.

        ``retry_after`` (seconds, fractions allowed: the SDK parses floats) is sent as ``retry-after``.
        """
        with self._lock:
            self._faults.extend([(status, retry_after)] * times)

    def invalid_json_next(self, times: int = 1) -> None:
        """The next ``times`` answers carry text that is not valid JSON (so not valid for any schema)."""
        with self._lock:
            self._invalid_json += times

    def reset(self) -> None:
        """Forget recorded calls and pending faults (responder, latency and key are kept)."""
        with self._lock:
            self._calls.clear()
            self._faults.clear()
            self._invalid_json = 0
            self._max_in_flight = self._in_flight

    # -- request handling ----------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Message, raw: bytes) -> Reply:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return self._answer(method, target, headers, raw)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, method: str, target: str, headers: Message, raw: bytes) -> Reply:
        path = urlsplit(target).path.rstrip("/")
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
            invalid = True
        else:
            invalid = False
        with self._lock:
            self._calls.append((path, body))
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            status, retry_after = fault
            extra = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
            return status, _error_body(status), extra

        scheme, _, key = (headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer" or not key.strip() or (self.api_key is not None and key != self.api_key):
            shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
            return 401, _error_body(401, f"Incorrect API key provided: {shown}."), {}

        if path == "/v1/files" and method == "POST":
            return self._upload(headers, raw)
        if path.startswith("/v1/files/") and path.endswith("/content") and method == "GET":
            return self._file_content(path.split("/")[3])
        if path == "/v1/batches" and method == "POST" and isinstance(body, dict):
            return self._create_batch(body)
        if path.startswith("/v1/batches/") and method == "GET":
            return self._poll_batch(path.split("/")[3])
        endpoints = {"/v1/chat/completions": self._chat_completion, "/v1/responses": self._response}
        if method != "POST" or path not in endpoints:
            return 404, _error_body(404, f"Invalid URL ({method} {path})"), {}
        if invalid:
            return 400, _error_body(400, "We could not parse the JSON body of your request."), {}
        if not isinstance(body, dict):
            return 400, _error_body(400, "The request body must be a JSON object."), {}
        if not body.get("model"):
            return 400, _error_body(400, "you must provide a model parameter"), {}
        return endpoints[path](body)

    def _answer_text(self, body: dict[str, Any]) -> str:
        with self._lock:
            broken = self._invalid_json > 0
            if broken:
                self._invalid_json -= 1
        if broken:
            return INVALID_JSON_TEXT
        answer = self.responder(body)
        return answer if isinstance(answer, str) else json.dumps(answer)

    def _chat_completion(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            error = _error_body(400, "Missing required parameter: 'messages'.")
            error["error"].update(param="messages", code="missing_required_parameter")
            return 400, error, {}
        prompt_tokens = _count_tokens("".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict)))
        choices = []
        for index in range(int(body.get("n") or 1)):
            text = self._answer_text(body)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            )
        completion_tokens = sum(_count_tokens(choice["message"]["content"]) for choice in choices)
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        return 200, completion, {"x-request-id": f"req_{uuid.uuid4().hex}"}

    def _response(self, body: dict[str, Any]) -> Reply:
        items = body.get("input")
        if isinstance(items, str):
            prompt = items
        elif isinstance(items, list):
            prompt = "".join(_text_of(item.get("content")) for item in items if isinstance(item, dict))
        else:
            error = _error_body(400, "Missing required parameter: 'input'.")
            error["error"].update(param="input", code="missing_required_parameter")
            return 400, error, {}
        input_tokens = _count_tokens(str(body.get("instructions") or "") + prompt)
        text = self._answer_text(body)
        output_tokens = _count_tokens(text)
        now = int(time.time())
        response = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": now,
            "completed_at": now,
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                }
            ],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        return 200, response, {"x-request-id": f"req_{uuid.uuid4().hex}"}

    # -- files and batches -----------------------------------------------------------------------

    def _upload(self, headers: Message, raw: bytes) -> Reply:
        parts = BytesParser(policy=default_policy).parsebytes(
            b"Content-Type: " + (headers.get("Content-Type") or "").encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in parts.iter_parts()}
        if "file" not in fields or "purpose" not in fields:
            return 400, _error_body(400, "Missing required parameter: 'file' or 'purpose'."), {}
        content = fields["file"].get_payload(decode=True) or b""
        file = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": fields["file"].get_filename() or "upload",
                "purpose": fields["purpose"].get_content().strip(), "status": "processed"}
        with self._lock:
            self._files[file["id"]] = (file, content)
        return 200, file, {}

    def _file_content(self, file_id: str) -> Reply:
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            return 404, _error_body(404, f"No such File object: {file_id}"), {}
        return 200, stored[1], {}

    def _create_batch(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            known = body.get("input_file_id") in self._files
        if not known:
            return 400, _error_body(400, f"Invalid input_file_id: {body.get('input_file_id')}"), {}
        now = int(time.time())
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body.get("endpoint"),
                 "errors": None, "input_file_id": body["input_file_id"],
                 "completion_window": body.get("completion_window"), "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "completed_at": None, "failed_at": None, "expired_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        with self._lock:
            self._batches[batch["id"]] = batch
            self._batch_polls[batch["id"]] = 0
        return 200, batch, {}

    def _poll_batch(self, batch_id: str) -> Reply:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return 404, _error_body(404, f"No such Batch object: {batch_id}"), {}
            self._batch_polls[batch_id] += 1
            done = batch["status"] == "completed" or self._batch_polls[batch_id] > self.batch_polls_before_done
            if not done:
                batch["status"] = "in_progress"
                batch["in_progress_at"] = batch["in_progress_at"] or int(time.time())
                return 200, dict(batch), {}
            if batch["status"] == "completed":
                return 200, dict(batch), {}
            content = self._files[batch["input_file_id"]][1]
        outputs = [self._batch_line(json.loads(line)) for line in content.decode().splitlines() if line.strip()]
        data = "".join(json.dumps(line) + "\n" for line in outputs).encode()
        output = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(data),
                  "created_at": int(time.time()), "filename": "batch_output.jsonl", "purpose": "batch_output",
                  "status": "processed"}
        failed = sum(1 for line in outputs if line["response"]["status_code"] != 200)
        with self._lock:
            self._files[output["id"]] = (output, data)
            self._batch_lines += len(outputs)
            batch.update(status="completed", output_file_id=output["id"], completed_at=int(time.time()),
                         request_counts={"total": len(outputs), "completed": len(outputs) - failed, "failed": failed})
            return 200, dict(batch), {}

    def _batch_line(self, line: dict[str, Any]) -> dict[str, Any]:
        endpoints = {"/v1/chat/completions": self._chat_completion, "/v1/responses": self._response}
        handler = endpoints.get(line.get("url", ""))
        if handler is None:
            status, body = 404, _error_body(404, f"Invalid URL ({line.get('url')})")
        else:
            status, body, _headers = handler(line.get("body") or {})
        return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line.get("custom_id"),
                "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
                "error": None}
