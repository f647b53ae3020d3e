"""A local stand-in for Postmark's HTTP API, to be driven through the real ``postmarker`` client.

    with FakePostmark() as pm:
        client = PostmarkClient(server_token="test-token", root_api_url=pm.url)
        client.emails.send_batch({"From": ..., "To": ..., "Subject": ..., "TextBody": ...})

Contract followed (https://postmarkapp.com/developer/api/overview, /email-api, /messages-api):

- Every call carries ``X-Postmark-Server-Token``; a wrong or missing token answers HTTP 401 with
  ``{"ErrorCode": 10, ...}``. Every other account-level error answers HTTP 422 with
  ``{"ErrorCode": N, "Message": "..."}`` (postmarker turns any non-2xx JSON answer into ``ClientError``).
- ``POST /email`` sends one message: HTTP 200 with the result, or HTTP 422 with the error.
- ``POST /email/batch`` takes a JSON array of at most 500 messages and answers HTTP 200 with one result
  per message, in order, each with its own ``ErrorCode`` (0 accepted, 300 invalid request, 406 inactive
  recipient, 400 sender signature not found); rejected messages carry no ``MessageID``.
- ``GET /messages/outbound`` searches accepted messages (``count``/``offset`` required, newest first),
  filtered by ``recipient``, ``fromemail``, ``tag``, ``subject``, ``status`` and ``metadata_<key>``;
  ``GET /messages/outbound/{id}/details`` returns one message.

Not Postmark, but met in front of it: ``fail_next_from_proxy`` answers as a proxy or gateway does, an
HTTP error whose JSON body lacks ``ErrorCode`` (``{"message": "Service Unavailable"}``).

Only the standard library is used; the server runs in a background thread on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from email.message import Message
from http import HTTPStatus
from email.utils import getaddresses
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes._server import App, LocalHTTPServer, Reply  # noqa: F401  (App, Reply: kept importable here)

# Postmark API error codes (https://postmarkapp.com/developer/api/overview#error-codes).
BAD_SERVER_TOKEN = 10
MAINTENANCE = 100
INVALID_EMAIL_REQUEST = 300
INVALID_JSON = 402
INCOMPATIBLE_JSON = 403
SENDER_SIGNATURE_NOT_FOUND = 400
INACTIVE_RECIPIENT = 406
JSON_REQUIRED = 409
TOO_MANY_BATCH_MESSAGES = 410
RATE_LIMIT_EXCEEDED = 429
MESSAGE_NOT_FOUND = 701

MAX_BATCH_SIZE = 500  # messages per POST /email/batch
MAX_SEARCH_COUNT = 500  # messages per page of GET /messages/outbound
MAX_SEARCH_WINDOW = 10_000  # count + offset may not exceed this

BAD_TOKEN_MESSAGE = (
    "The Server Token you provided in the X-Postmark-Server-Token request header was invalid. "
    "Please verify that you are using a valid token."
)


def _error(code: int, message: str, status: int = 422) -> Reply:
    return status, {"ErrorCode": code, "Message": message}, {}


def _default_fault_body(status: int) -> dict[str, Any]:
    if status == 401:
        return {"ErrorCode": BAD_SERVER_TOKEN, "Message": BAD_TOKEN_MESSAGE}
    if status == 429:
        return {"ErrorCode": RATE_LIMIT_EXCEEDED, "Message": "Rate limit exceeded. Please slow down."}
    if status == 422:
        return {"ErrorCode": INVALID_EMAIL_REQUEST, "Message": "Invalid email request (injected)."}
    return {"ErrorCode": MAINTENANCE, "Message": f"Injected HTTP {status}: the service is unavailable."}


def _is_valid_address(address: str) -> bool:
    """Syntactic check only: one '@', a local part, and a dotted domain."""
    local, _, domain = address.partition("@")
    return (
        address.count("@") == 1
        and bool(local)
        and "." in domain
        and not domain.startswith(".")
        and not domain.endswith(".")
        and not any(char.isspace() for char in address)
    )


def _parse_addresses(value: Any) -> list[tuple[str, str]] | None:
    """``"Name <a@b.co>, c@d.co"`` -> [(name, address)]; None when any part is not a valid address."""
    if not isinstance(value, str):
        return None
    pairs = getaddresses([value])
    if not pairs or any(not _is_valid_address(address) for _, address in pairs):
        return None
    return pairs


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class FakePostmark(LocalHTTPServer):
    """Postmark's send and outbound-search API on a random local port. See the module docstring."""

    def __init__(self, server_token: str = "test-token") -> None:
        super().__init__()
        self.server_token = server_token
        # Recipients that answer ErrorCode 406, compared case-insensitively. Mutate freely.
        self.inactive_recipients: set[str] = set()
        # The account's confirmed sender signatures; when set, any other From address answers ErrorCode 400.
        self.sender_signatures: set[str] | None = None
        # Seconds to sleep before answering each request.
        self.latency_s: float = 0.0
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._received_at: dict[str, str] = {}
        self._requests = 0
        self._batches: list[int] = []
        self._faults: list[tuple[int, Any]] = []

    # -- recorded state and fault injection ----------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Accepted messages as received, each with the ``MessageID`` it was given."""
        with self._lock:
            return [dict(message) for message in self._messages]

    @property
    def requests(self) -> int:
        """Every HTTP request received, whatever its answer."""
        with self._lock:
            return self._requests

    @property
    def batches(self) -> list[int]:
        """Size of each ``POST /email/batch`` array that was processed."""
        with self._lock:
            return list(self._batches)

    def messages_to(self, address: str) -> list[dict[str, Any]]:
        """Accepted messages with ``address`` among their ``To`` recipients (case-insensitive)."""
        wanted = address.strip().lower()
        return [
            message
            for message in self.messages
            if any(addr.lower() == wanted for _, addr in _parse_addresses(message.get("To")) or [])
        ]

    def fail_next(self, status: int, body: Mapping[str, Any] | list[Any] | str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` requests with HTTP ``status`` and ``body``.

        The default body is Postmark's error shape, so postmarker raises ``ClientError``; a ``str`` body is
        sent as text/plain, which makes postmarker raise ``requests.HTTPError`` instead. Any other JSON
        body goes out as given (see ``fail_next_from_proxy``).
        """
        payload = dict(body) if isinstance(body, Mapping) else body
        with self._lock:
            self._faults.extend([(status, payload if payload is not None else _default_fault_body(status))] * times)

    def fail_next_from_proxy(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests as a proxy or gateway in front of Postmark does: HTTP ``status``
        with a JSON body that is not Postmark's (no ``ErrorCode``), e.g. ``{"message": "Bad Gateway"}``."""
        self.fail_next(status, {"message": HTTPStatus(status).phrase}, times=times)

    def reset(self) -> None:
        """Forget recorded messages, counters and pending faults (settings are kept)."""
        with self._lock:
            self._messages.clear()
            self._received_at.clear()
            self._requests = 0
            self._batches.clear()
            self._faults.clear()

    # -- request handling ----------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Message, raw: bytes) -> Reply:
        with self._lock:
            self._requests += 1
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            return fault[0], fault[1], {}
        if headers.get("X-Postmark-Server-Token") != self.server_token:
            return _error(BAD_SERVER_TOKEN, BAD_TOKEN_MESSAGE, status=401)

        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if method == "POST" and path in ("/email", "/email/batch"):
            # Postmark wants JSON in and out; without the header it answers ErrorCode 409.
            if "application/json" not in (headers.get("Content-Type") or ""):
                return _error(JSON_REQUIRED, "Your HTTP request does not have the Content-Type header set to JSON.")
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                return _error(INVALID_JSON, "Received invalid JSON input.")
            return self._send_one(body) if path == "/email" else self._send_batch(body)
        if method == "GET" and path == "/messages/outbound":
            return self._search(parse_qs(parts.query, keep_blank_values=True))
        segments = path.strip("/").split("/")
        if method == "GET" and len(segments) == 4 and segments[:2] == ["messages", "outbound"]:
            if segments[3] == "details":
                return self._details(segments[2])
        return _error(404, f"Not found: {method} {parts.path}", status=404)

    def _send_one(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            return _error(INCOMPATIBLE_JSON, "Incompatible JSON input: expected a message object.")
        result = self._accept(body)
        # A single send reports a refused message as an account-level error: HTTP 422.
        return (200 if result["ErrorCode"] == 0 else 422), result, {}

    def _send_batch(self, body: Any) -> Reply:
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            return _error(INCOMPATIBLE_JSON, "Incompatible JSON input: expected an array of message objects.")
        if len(body) > MAX_BATCH_SIZE:
            # Documented ErrorCode 410 "Too many batch messages"; the whole call is refused (HTTP 422).
            return _error(TOO_MANY_BATCH_MESSAGES, f"You may only send up to {MAX_BATCH_SIZE} messages per batch.")
        with self._lock:
            self._batches.append(len(body))
        # Per-message failures still answer HTTP 200: one result per message, in order.
        return 200, [self._accept(message) for message in body], {}

    def _accept(self, message: dict[str, Any]) -> dict[str, Any]:
        """Validate one message; record it and return Postmark's result object."""
        problem = self._validate(message)
        if problem is not None:
            code, text = problem
            return {"ErrorCode": code, "Message": text}
        message_id = str(uuid.uuid4())
        submitted_at = _now_iso()
        with self._lock:
            self._messages.append({**message, "MessageID": message_id})
            self._received_at[message_id] = submitted_at
        return {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": message_id,
            "SubmittedAt": submitted_at,
            "To": message["To"],
        }

    def _validate(self, message: dict[str, Any]) -> tuple[int, str] | None:
        sender = message.get("From")
        senders = _parse_addresses(sender) if sender else None
        if not senders:
            return INVALID_EMAIL_REQUEST, f"Invalid 'From' address: '{sender or ''}'."
        signatures = self.sender_signatures
        if signatures is not None and senders[0][1].lower() not in {s.lower() for s in set(signatures)}:
            return SENDER_SIGNATURE_NOT_FOUND, (
                f"The 'From' address you supplied ({sender}) is not a Sender Signature on your account. "
                "Please add and confirm this address in order to be able to use it in the 'From' field of "
                "your messages."
            )
        if not message.get("To"):
            return INVALID_EMAIL_REQUEST, "Zero recipients specified"
        recipients: list[str] = []
        for field in ("To", "Cc", "Bcc"):
            value = message.get(field)
            if not value:
                continue
            pairs = _parse_addresses(value)
            if pairs is None:
                return INVALID_EMAIL_REQUEST, f"Invalid '{field}' address: '{value}'."
            recipients.extend(address for _, address in pairs)
        if not message.get("TextBody") and not message.get("HtmlBody"):
            return INVALID_EMAIL_REQUEST, "Provide either email TextBody or HtmlBody or both."
        inactive = {address.lower() for address in set(self.inactive_recipients)}
        # Simplification: any inactive recipient refuses the whole message (we send one recipient each).
        found = [address for address in recipients if address.lower() in inactive]
        if found:
            return INACTIVE_RECIPIENT, (
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {', '.join(found)}. Inactive recipients are ones that have "
                "generated a hard bounce, a spam complaint, or a manual suppression."
            )
        return None

    # -- outbound message search ---------------------------------------------------------------

    def _search(self, query: dict[str, list[str]]) -> Reply:
        params = {key: values[0] for key, values in query.items()}
        try:
            count, offset = int(params["count"]), int(params["offset"])
        except (KeyError, ValueError):
            # The error code for bad paging is not documented; 300 is our choice.
            return _error(INVALID_EMAIL_REQUEST, "The 'count' and 'offset' query parameters are required integers.")
        if not 0 < count <= MAX_SEARCH_COUNT or offset < 0 or count + offset > MAX_SEARCH_WINDOW:
            return _error(
                INVALID_EMAIL_REQUEST,
                f"'count' must be 1..{MAX_SEARCH_COUNT} and count + offset at most {MAX_SEARCH_WINDOW}.",
            )
        metadata = {key[len("metadata_") :]: value for key, value in params.items() if key.startswith("metadata_")}
        with self._lock:
            stored = [(dict(message), self._received_at[message["MessageID"]]) for message in self._messages]
        # Newest first, as Postmark lists them.
        summaries = [self._summary(message, received_at) for message, received_at in reversed(stored)]
        matches = [summary for summary in summaries if self._matches(summary, params, metadata)]
        return 200, {"TotalCount": len(matches), "Messages": matches[offset : offset + count]}, {}

    @staticmethod
    def _matches(summary: dict[str, Any], params: Mapping[str, str], metadata: Mapping[str, str]) -> bool:
        recipient = params.get("recipient")
        if recipient and recipient.lower() not in (address.lower() for address in summary["Recipients"]):
            return False
        sender = params.get("fromemail")
        if sender and sender.lower() not in summary["From"].lower():
            return False
        if params.get("tag") and params["tag"] != summary["Tag"]:
            return False
        if params.get("subject") and params["subject"].lower() not in summary["Subject"].lower():
            return False
        # Every stored message has been "sent"; a search for "queued" finds nothing.
        if params.get("status") and params["status"].lower() != "sent":
            return False
        stored = summary["Metadata"] or {}
        return all(key in stored and str(stored[key]) == value for key, value in metadata.items())

    @staticmethod
    def _summary(message: Mapping[str, Any], received_at: str) -> dict[str, Any]:
        """The search result shape (no bodies); the documented field is ``Recipients``."""

        def people(field: str) -> list[dict[str, str]]:
            return [{"Email": address, "Name": name} for name, address in _parse_addresses(message.get(field)) or []]

        to, cc, bcc = people("To"), people("Cc"), people("Bcc")
        return {
            "Tag": message.get("Tag") or "",
            "MessageID": message["MessageID"],
            "MessageStream": message.get("MessageStream") or "outbound",
            "To": to,
            "Cc": cc,
            "Bcc": bcc,
            "Recipients": [person["Email"] for person in to + cc + bcc],
            "ReceivedAt": received_at,
            "From": message.get("From") or "",
            "Subject": message.get("Subject") or "",
            "Attachments": [attachment.get("Name") for attachment in message.get("Attachments") or []],
            "Status": "Sent",
            "TrackOpens": bool(message.get("TrackOpens")),
            "TrackLinks": message.get("TrackLinks") or "None",
            "Metadata": dict(message.get("Metadata") or {}),
            "Sandboxed": False,
        }

    def _details(self, message_id: str) -> Reply:
        with self._lock:
            found = next((dict(m) for m in self._messages if m["MessageID"] == message_id), None)
            received_at = self._received_at.get(message_id, "")
        if found is None:
            return _error(MESSAGE_NOT_FOUND, f"This message was not found: {message_id}.")
        details = self._summary(found, received_at)
        details.update(
            TextBody=found.get("TextBody") or "",
            HtmlBody=found.get("HtmlBody") or "",
            Body="",
            MessageEvents=[],
        )
        return 200, details, {}
