"""The file outbox: each email written as a complete .eml file; nothing leaves the machine."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path

from outreach_pipeline.mail.message import OutgoingEmail, SendOutcome, SendResult

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _readable_cte(text: str) -> str:
    # 8bit keeps the file readable in a text editor; RFC 5322 caps lines at 998 characters.
    return "8bit" if all(len(line) <= 998 for line in text.splitlines()) else "quoted-printable"


def build_mime(message: OutgoingEmail, message_id: str) -> EmailMessage:
    mime = EmailMessage()
    mime["From"] = message.from_email
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(datetime.now(UTC))
    mime["Message-ID"] = message_id
    if message.reply_to:
        mime["Reply-To"] = message.reply_to
    for name, value in message.headers.items():
        mime[name] = value
    for key, value in message.metadata.items():
        mime[f"X-Outreach-{key.replace('_', '-').title()}"] = value
    mime["X-Outreach-Backend"] = "file-outbox (written locally, not sent)"
    mime.set_content(message.text_body, cte=_readable_cte(message.text_body))
    if message.html_body:
        mime.add_alternative(message.html_body, subtype="html", cte=_readable_cte(message.html_body))
    return mime


class FileOutbox:
    """Writes `<dir>/<YYYY-MM-DD>/<tag>/<time>-<id>.eml`; open them with any mail client."""

    name = "file-outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        return [self._write(message) for message in messages]

    def find_sent(self, job_id: str) -> SendResult | None:
        """Reads the outbox's own files: an .eml carrying `X-Outreach-Job-Id: <job_id>` was sent."""
        wanted = f"X-Outreach-Job-Id: {job_id}\n".encode()
        for path in self.directory.rglob("*.eml"):
            data = path.read_bytes()
            if wanted not in data.replace(b"\r\n", b"\n"):
                continue
            parsed = email.message_from_bytes(data, policy=email.policy.default)
            message_id = str(parsed["Message-ID"] or "")
            local_id = message_id.strip("<>").partition("@")[0]
            return SendResult(SendOutcome.SENT, provider_message_id=local_id, message_id_header=message_id or None,
                              subject=str(parsed["Subject"] or "") or None)
        return None

    def _write(self, message: OutgoingEmail) -> SendResult:
        if "@" not in parseaddr(message.to)[1]:
            return SendResult(SendOutcome.INVALID_RECIPIENT, error_code=300, error=f"Invalid 'To' address: {message.to!r}")
        domain = parseaddr(message.from_email)[1].partition("@")[2] or "outbox.local"
        message_id = make_msgid(domain=domain)
        now = datetime.now(UTC)
        folder = self.directory / now.strftime("%Y-%m-%d") / _UNSAFE.sub("_", message.tag or "system")
        folder.mkdir(parents=True, exist_ok=True)
        local_id = message_id.strip("<>").partition("@")[0]
        path = folder / f"{now.strftime('%H%M%S')}-{local_id}.eml"
        # Written under a temporary name and renamed: a kill mid-write leaves no .eml the reconciler trusts.
        partial = path.with_suffix(".eml.part")
        partial.write_bytes(bytes(build_mime(message, message_id)))
        partial.rename(path)
        return SendResult(SendOutcome.SENT, provider_message_id=local_id, message_id_header=message_id)
