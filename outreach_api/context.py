"""What handlers get injected: the app's services and a database session per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from litestar import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from outreach_api.webhooks.batcher import EventBatcher
from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.llm.brief import TemplateWriter
from outreach_pipeline.mail.message import Mailer
from outreach_pipeline.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    mailer: Mailer
    writer: TemplateWriter
    events: EventBatcher

    @property
    def sender(self) -> SenderConfig:
        return SenderConfig(self.settings.from_email, self.settings.postmark_inbound_domain, self.settings.app_base_url)


def provide_services(request: Request[Any, Any, Any]) -> Services:
    # From the request, not a `state: State` parameter: Litestar builds a new State (and its lock) for that
    # on every request, a measurable share of a webhook's cost.
    return request.app.state.services  # type: ignore[no-any-return]


def _end(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


async def provide_db(request: Request[Any, Any, Any]) -> AsyncIterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back when it raises.

    The commit runs on a thread of its own limiter (`state.db_finishers`), not the handlers' one: if it
    queued behind handler threads that wait for a pooled connection, the connection it would give back
    could never come back, and a burst of requests would stall until the pool timed out.
    """
    state = request.app.state
    session = state.services.sessions()
    commit = False
    try:
        yield session
        commit = True
    finally:
        # Set at startup; an app driven without its lifespan falls back to the default limiter.
        await anyio.to_thread.run_sync(_end, session, commit, limiter=state.get("db_finishers"))
