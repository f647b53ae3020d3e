"""What handlers get injected: the app's services and a database session per request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from litestar.datastructures import State
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

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

    @property
    def sender(self) -> SenderConfig:
        return SenderConfig(self.settings.from_email, self.settings.postmark_inbound_domain, self.settings.app_base_url)


def provide_services(state: State) -> Services:
    return state.services  # type: ignore[no-any-return]


def provide_db(state: State) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back when it raises."""
    session = state.services.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
