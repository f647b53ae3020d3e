"""Postmark through postmarker's batch call; the API root is configurable for local test servers."""

from __future__ import annotations

from collections.abc import Sequence
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
# Account-level codes: the token or the account is refused; retrying cannot help.
ACCOUNT_ERROR_CODES = {10, 11, 400, 401, 405, 412, 413}


class PostmarkMailer:
    name = "postmark"

    def __init__(self, server_token: str, api_url: str, message_stream: str, timeout: float = 30.0) -> None:
        self.client = PostmarkClient(server_token=server_token, root_api_url=api_url, timeout=timeout)
        self.message_stream = message_stream

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        if not messages:
            return []
        try:
            answers = self.client.emails.send_batch(*(self._as_postmark(m) for m in messages))
        except ClientError as error:
            if error.error_code in ACCOUNT_ERROR_CODES:
                raise MailerAccountError(str(error)) from error
            raise MailerUnavailableError(str(error)) from error
        except requests.RequestException as error:  # 5xx without a JSON body, timeouts, refused connections
            raise MailerUnavailableError(str(error)) from error
        return [self._result(answer) for answer in answers]

    def _as_postmark(self, message: OutgoingEmail) -> dict[str, Any]:
        fields = {
            "From": message.from_email,
            "To": message.to,
            "Subject": message.subject,
            "TextBody": message.text_body,
            "HtmlBody": message.html_body,
            "ReplyTo": message.reply_to,
            "Headers": dict(message.headers),
            "Metadata": dict(message.metadata),
            "Tag": message.tag,
            "MessageStream": self.message_stream,
            "TrackOpens": False,
        }
        return {key: value for key, value in fields.items() if value not in (None, {}, "")}

    @staticmethod
    def _result(answer: dict[str, Any]) -> SendResult:
        code = int(answer.get("ErrorCode") or 0)  # a 200 without ErrorCode means accepted
        if code == 0:
            message_id = answer.get("MessageID")
            # Postmark stamps outbound mail with this Message-ID header (observed, not documented).
            header = f"<{message_id}@mtasv.net>" if message_id else None
            return SendResult(SendOutcome.SENT, provider_message_id=message_id, message_id_header=header)
        outcome = {
            INVALID_EMAIL_REQUEST: SendOutcome.INVALID_RECIPIENT,
            INACTIVE_RECIPIENT: SendOutcome.INACTIVE_RECIPIENT,
        }.get(code, SendOutcome.REJECTED)
        return SendResult(outcome, error_code=code, error=str(answer.get("Message", "")))
