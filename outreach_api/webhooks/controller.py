"""Postmark webhooks behind HTTP Basic auth; each event is stored once and acted on in the transaction that
stores it (shared with the other events arriving at that moment: outreach_api/webhooks/batcher.py)."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, post
from litestar.exceptions import NotAuthorizedException

from outreach_api.context import Services
from outreach_pipeline.core.errors import InvalidInputError


@dataclass(frozen=True)
class EventOut:
    """A dataclass, not a pydantic model: Litestar encodes it with msgspec, cheaper on the hottest route."""

    stored: bool
    duplicate: bool
    outcome: str


def _credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


async def require_webhook_credentials(request: Request[Any, Any, Any]) -> None:
    """401 (never 403, on which Postmark stops retrying) unless the credentials match, compared in constant time.

    A before-request hook rather than a guard: it runs as early (before the body is read) without Litestar's
    copy of the route handler for every guard call. Async though it never waits: Litestar runs a sync hook
    on a worker thread, a hop per webhook."""
    settings = request.app.state.services.settings
    given = _credentials(request.headers.get("authorization", ""))
    expected_user, expected_password = settings.webhook_username, settings.webhook_password
    ok = (
        given is not None
        and bool(expected_password)
        & hmac.compare_digest(given[0].encode(), expected_user.encode())
        & hmac.compare_digest(given[1].encode(), expected_password.encode())
    )
    if not ok:
        raise NotAuthorizedException("Webhook credentials missing or wrong.",
                                     headers={"WWW-Authenticate": 'Basic realm="webhooks"'})


MAX_RECORD_TYPE = 32  # the width of webhook_events.record_type
MAX_ID = 150  # event keys (ID or MessageID, plus a timestamp) must fit webhook_events.provider_id


def _check_shape(payload: dict[str, Any], record_type: str) -> None:
    """Refuse what the store cannot hold with a 422, before anything is written."""
    if len(record_type) > MAX_RECORD_TYPE:
        raise InvalidInputError(f"RecordType is longer than {MAX_RECORD_TYPE} characters.")
    for field in ("ID", "MessageID"):
        if len(str(payload.get(field) or "")) > MAX_ID:
            raise InvalidInputError(f"{field} is longer than {MAX_ID} characters.")


async def _handle(request: Request[Any, Any, Any], payload: dict[str, Any], record_type: str) -> EventOut:
    # The services from the app's state, not injected: dependency resolution was a measurable share of
    # this route's cost.
    services: Services = request.app.state.services
    record_type = str(payload.get("RecordType") or record_type)
    _check_shape(payload, record_type)
    # Applied with the other events waiting at this moment, in one transaction; answered after its commit.
    result = await services.events.submit(payload, record_type)
    return EventOut(stored=not result.duplicate, duplicate=result.duplicate, outcome=result.outcome)


def _untyped_record(payload: dict[str, Any]) -> str:
    """Postmark's inbound webhook is the one payload without a RecordType: it is known by its inbound stream
    or by the parsed sender and mailbox hash only inbound mail has."""
    if payload.get("MessageStream") == "inbound" or ("FromFull" in payload and "MailboxHash" in payload):
        return "Inbound"
    return "Unknown"


class PostmarkWebhookController(Controller):
    path = "/api/webhooks/postmark"
    tags = ["webhooks"]
    before_request = require_webhook_credentials
    # Postmark posts inbound mail of up to 35 MB with attachments base64-encoded; checked after the credentials.
    request_max_body_size = 50 * 1024 * 1024

    @post("/", status_code=200)
    async def any_event(self, data: dict[str, Any], request: Request[Any, Any, Any]) -> EventOut:
        """Any Postmark record type, told apart by its RecordType; inbound mail carries none."""
        return await _handle(request, data, str(data.get("RecordType", "")) or _untyped_record(data))

    @post("/inbound", status_code=200)
    async def inbound(self, data: dict[str, Any], request: Request[Any, Any, Any]) -> EventOut:
        return await _handle(request, data, "Inbound")

    @post("/bounce", status_code=200)
    async def bounce(self, data: dict[str, Any], request: Request[Any, Any, Any]) -> EventOut:
        return await _handle(request, data, "Bounce")

    @post("/delivery", status_code=200)
    async def delivery(self, data: dict[str, Any], request: Request[Any, Any, Any]) -> EventOut:
        return await _handle(request, data, "Delivery")
