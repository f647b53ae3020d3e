"""Postmark through postmarker's batch call; the API root is configurable for local test servers.

postmarker raises `ClientError` for an HTTP error with Postmark's JSON body, `requests` errors for
anything else, and never raises for a per-message failure inside a 200 batch answer: each of the
three is mapped here, once. An error answer with some other JSON body (a proxy's or gateway's 429/5xx)
would make postmarker itself fail (KeyError, TypeError): our client raises the plain HTTPError instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from outreach_pipeline.mail.message import (
    MailerAccountError,
    MailerUnavailableError,
    OutgoingEmail,
    SendOutcome,
    SendResult,
)

# Postmark's per-message ErrorCodes (https://postmarkapp.com/developer/api/overview#error-codes).
INVALID_EMAIL_REQUEST = 300
INACTIVE_RECIPIENT = 406
RATE_LIMITED = 429
GATEWAY_TIMEOUT = 504
DEFAULT_TIMEOUT_S = 30.0  # per request to Postmark
# About our side, never the recipient, so no lead is failed for them. A sender signature not found or not
# confirmed is one campaign's sender: that campaign pauses. A bad token, no credits, an account pending or
# not allowed to send is the whole account: the run stops. Both leave the jobs PENDING.
SENDER_CODES = frozenset({400, 401})
ACCOUNT_CODES = frozenset({10, 405, 412, 413})
# A 300 is a malformed message, whose field Postmark names first, in quotes: "Invalid 'To' address: ...".
# The recipient's own address is the lead's fault; a From, Sender or Reply-To address is ours (campaign
# settings or the configured default), however the address itself is spelled, so only the first quoted word
# counts (a lead address may hold quotes: "Invalid 'To' address: ''From'@x.example'").
_SENDER_FIELD_FIRST = re.compile(r"^[^']*'(?:From|Sender|ReplyTo|Reply-To)'", re.IGNORECASE)


def _is_about_sender(code: int, message: str) -> bool:
    if code == INVALID_EMAIL_REQUEST:
        return _SENDER_FIELD_FIRST.match(message) is not None
    return code in SENDER_CODES


def _is_postmark_error(response: requests.Response) -> bool:
    """Whether an error answer carries Postmark's {"ErrorCode": N, "Message": "..."} body."""
    try:
        data = response.json()
    except ValueError:
        return False
    return isinstance(data, dict) and "ErrorCode" in data and "Message" in data


class _Client(PostmarkClient):
    """postmarker's client, except that an error answer without Postmark's error body raises `HTTPError`
    (classified by its status) rather than the KeyError or TypeError postmarker would fail with."""

    def check_response(self, response: requests.Response) -> None:
        if not response.ok and not _is_postmark_error(response):
            response.raise_for_status()
        super().check_response(response)


def _http_status(error: BaseException) -> int | None:
    cause = error if isinstance(error, requests.HTTPError) else error.__cause__
    response = getattr(cause, "response", None)
    return getattr(response, "status_code", None)


def _is_passing(status: int | None, code: int | None) -> bool:
    """429 and 5xx pass with time; any other HTTP error (401 bad token, 422 account) will not."""
    return status == RATE_LIMITED or code == RATE_LIMITED or (status is not None and status >= 500)


class PostmarkMailer:
    name = "postmark"

    def __init__(self, server_token: str, api_url: str, message_stream: str,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._options = {"server_token": server_token, "root_api_url": api_url, "timeout": timeout}
        self._local = threading.local()
        self.message_stream = message_stream

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to each send process (core/send_processes.py) without its clients: they are per thread.
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def client(self) -> PostmarkClient:
        # One client (one requests.Session, one keep-alive connection) per sending thread.
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(**self._options)
        return client

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        if not messages:
            return []
        try:
            # Already in Postmark's wire shape, so the batch goes through postmarker's plain call (its error
            # handling included) without building a model object per message first.
            answers = self.client.call("POST", "/email/batch", data=[self._as_postmark(m) for m in messages])
        except ClientError as error:
            if _is_passing(_http_status(error), error.error_code):
                raise MailerUnavailableError(str(error)) from error
            raise MailerAccountError(str(error)) from error
        except requests.HTTPError as error:  # an answer without Postmark's error body (a gateway or proxy)
            status = _http_status(error)
            if status == GATEWAY_TIMEOUT:  # the gateway gave up waiting: Postmark may have taken the batch
                raise MailerUnavailableError(str(error), maybe_sent=True) from error
            if _is_passing(status, None):
                raise MailerUnavailableError(str(error)) from error
            raise MailerAccountError(str(error)) from error
        except (requests.ConnectionError, requests.ConnectTimeout) as error:
            # Refused or reset before an answer: ConnectTimeout never reached the server; a reset after
            # the request went out might have, so only a connect failure is safe to retry blindly.
            connect_failed = isinstance(error, requests.ConnectTimeout) or "Connection refused" in str(error)
            raise MailerUnavailableError(str(error), maybe_sent=not connect_failed) from error
        except requests.RequestException as error:  # a read timeout: the batch may have been accepted
            raise MailerUnavailableError(str(error), maybe_sent=True) from error
        return [self._result(answer) for answer in answers]

    def find_sent(self, job_id: str) -> SendResult | None:
        """Outbound message search by the `job_id` metadata every message carries."""
        try:
            found = self.client.call("GET", "/messages/outbound", count=1, offset=0, metadata_job_id=job_id)
        except ClientError as error:
            if _is_passing(_http_status(error), error.error_code):
                raise MailerUnavailableError(str(error)) from error
            raise MailerAccountError(str(error)) from error
        except requests.RequestException as error:
            raise MailerUnavailableError(str(error)) from error
        messages = found.get("Messages") or []
        if not messages:
            return None
        sent = self._result({"ErrorCode": 0, "MessageID": messages[0]["MessageID"]})
        return replace(sent, subject=messages[0].get("Subject"))

    def _as_postmark(self, message: OutgoingEmail) -> dict[str, Any]:
        fields = {
            "From": message.from_email,
            "To": message.to,
            "Subject": message.subject,
            "TextBody": message.text_body,
            "HtmlBody": message.html_body,
            "ReplyTo": message.reply_to,
            "Headers": [{"Name": name, "Value": value} for name, value in message.headers.items()],
            "Metadata": message.metadata,  # only read, by the JSON encoder
            "Tag": message.tag,
            "MessageStream": self.message_stream,
        }
        # Empty fields (None, "", [], {}) are left out; a truth test says so without four comparisons each.
        wire = {key: value for key, value in fields.items() if value}
        wire["TrackOpens"] = False
        return wire

    @staticmethod
    def _result(answer: dict[str, Any]) -> SendResult:
        code = int(answer.get("ErrorCode") or 0)  # a 200 without ErrorCode means accepted
        if code == 0:
            message_id = answer.get("MessageID")
            # Postmark stamps outbound mail with this Message-ID header (observed, not documented).
            header = f"<{message_id}@mtasv.net>" if message_id else None
            return SendResult(SendOutcome.SENT, provider_message_id=message_id, message_id_header=header)
        message = str(answer.get("Message", ""))
        if code in ACCOUNT_CODES:
            return SendResult(SendOutcome.ACCOUNT_REFUSED, error_code=code, error=message)
        if _is_about_sender(code, message):
            return SendResult(SendOutcome.SENDER_REFUSED, error_code=code, error=message)
        outcome = {
            INVALID_EMAIL_REQUEST: SendOutcome.INVALID_RECIPIENT,
            INACTIVE_RECIPIENT: SendOutcome.INACTIVE_RECIPIENT,
        }.get(code, SendOutcome.REJECTED)
        return SendResult(outcome, error_code=code, error=message)
