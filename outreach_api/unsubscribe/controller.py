"""The unsubscribe link: GET shows a confirm button (link scanners follow GETs), POST unsubscribes.

POST also serves RFC 8058 one-click unsubscribe (List-Unsubscribe-Post) and answers 200 without redirect.
"""

from __future__ import annotations

import html

from litestar import Controller, MediaType, Response, get, post
from litestar.status_codes import HTTP_404_NOT_FOUND
from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.core.events import unsubscribe_by_token
from outreach_pipeline.db.models import Lead, holds_reply_token

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:4em auto">{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    return Response(PAGE.format(title=html.escape(title), body=body), media_type=MediaType.HTML, status_code=status)


class UnsubscribeController(Controller):
    path = "/unsubscribe"
    tags = ["unsubscribe"]
    include_in_schema = True

    @get("/{token:str}", sync_to_thread=True)
    def confirm_page(self, token: str, db: Session) -> Response[str]:
        if db.scalar(select(Lead.id).where(holds_reply_token(token))) is None:
            return _page("Link not found", "<p>This unsubscribe link is not valid.</p>", HTTP_404_NOT_FOUND)
        return _page("Unsubscribe", f'<p>Stop receiving these emails?</p><form method="post" '
                     f'action="/unsubscribe/{html.escape(token)}"><button type="submit">Unsubscribe</button></form>')

    @post("/{token:str}", status_code=200, sync_to_thread=True)
    def unsubscribe(self, token: str, db: Session) -> Response[str]:
        if unsubscribe_by_token(db, token) is None:
            return _page("Link not found", "<p>This unsubscribe link is not valid.</p>", HTTP_404_NOT_FOUND)
        return _page("Unsubscribed", "<p>You are unsubscribed and will not hear from us again.</p>")
