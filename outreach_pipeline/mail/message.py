"""What the core hands a mail backend, and what it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


# Slots: one of each per email on the send path, so no per-instance dict to build.
@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    to: str
    from_email: str  # may carry a display name: "Ada <ada@example.com>"
    subject: str
    text_body: str
    html_body: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # In-Reply-To, References, List-Unsubscribe...
    metadata: dict[str, str] = field(default_factory=dict)  # travels with the message (job id, campaign id)
    tag: str | None = None


class SendOutcome(StrEnum):
    SENT = "SENT"
    INVALID_RECIPIENT = "INVALID_RECIPIENT"  # the address can never receive mail
    INACTIVE_RECIPIENT = "INACTIVE_RECIPIENT"  # the provider has stopped mailing it (bounces, complaints)
    REJECTED = "REJECTED"  # any other per-message refusal
    # The provider refused the campaign's sender, not this recipient: every message of that campaign would
    # meet the same answer, so the campaign pauses and the job waits, PENDING, for the sender to be fixed.
    SENDER_REFUSED = "SENDER_REFUSED"
    # The provider refused our account (token, credits, suspension): nothing can go out, so the run stops.
    ACCOUNT_REFUSED = "ACCOUNT_REFUSED"


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: SendOutcome
    provider_message_id: str | None = None
    message_id_header: str | None = None  # the RFC 5322 Message-ID, for threading follow-ups
    error_code: int | None = None
    error: str | None = None
    subject: str | None = None  # as the provider has it, when find_sent can tell

    @property
    def sent(self) -> bool:
        return self.outcome == SendOutcome.SENT


class MailerUnavailableError(Exception):
    """The whole batch failed for a passing reason (rate limit, 5xx, network): retry it later.

    `maybe_sent` is True when the request may have reached the provider before failing (a read
    timeout): retrying blindly could send twice, so those jobs are left to the reconciler.
    """

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class MailerAccountError(Exception):
    """The provider refuses the account (bad token, no credits, suspended): stop sending; what the refused
    batch held stays pending. `sent` is what the run had sent before (set by the dispatch)."""

    sent: int = 0


class Mailer(Protocol):
    name: str

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send messages; one result per message, in order."""
        ...

    def find_sent(self, job_id: str) -> SendResult | None:
        """The message the provider accepted with metadata job_id=`job_id`, or None if it has none.

        The reconciler asks this before re-sending a job a crashed run left in SENDING.
        """
        ...
