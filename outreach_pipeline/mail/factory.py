"""Pick the mail backend: one place for both doors."""

from __future__ import annotations

from pathlib import Path

from outreach_pipeline.mail.message import Mailer
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.mail.postmark import PostmarkMailer
from outreach_pipeline.settings import Settings


def build_mailer(backend: str, *, outbox_dir: str | Path, postmark_server_token: str = "",
                 postmark_api_url: str = "", postmark_message_stream: str = "outbound") -> Mailer:
    if backend == "postmark":
        if not postmark_server_token:
            raise RuntimeError("The Postmark backend needs POSTMARK_SERVER_TOKEN.")
        return PostmarkMailer(postmark_server_token, postmark_api_url, postmark_message_stream)
    return FileOutbox(Path(outbox_dir))


def mailer_from_settings(settings: Settings) -> Mailer:
    return build_mailer(
        "postmark" if settings.uses_postmark else "outbox",
        outbox_dir=settings.outbox_dir or settings.data_dir / "outbox",
        postmark_server_token=settings.postmark_server_token,
        postmark_api_url=settings.postmark_api_url,
        postmark_message_stream=settings.postmark_message_stream,
    )
