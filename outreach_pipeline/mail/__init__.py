"""Mail backends behind one small interface: Postmark (real) and a file outbox (local, sends nothing)."""

from outreach_pipeline.mail.message import (
    Mailer,
    MailerAccountError,
    MailerUnavailableError,
    OutgoingEmail,
    SendOutcome,
    SendResult,
)

__all__ = [
    "Mailer",
    "MailerAccountError",
    "MailerUnavailableError",
    "OutgoingEmail",
    "SendOutcome",
    "SendResult",
]
