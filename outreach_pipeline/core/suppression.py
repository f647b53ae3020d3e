"""The owner-wide list of addresses never to mail again."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.db.dialect import insert_ignoring_conflicts
from outreach_pipeline.db.models import Suppression


def suppress(session: Session, owner_id: int, email: str, reason: str) -> None:
    statement = insert_ignoring_conflicts(session, Suppression, ["owner_id", "email"]).values(
        owner_id=owner_id, email=email.strip().lower(), reason=reason
    )
    session.execute(statement)


def is_suppressed(session: Session, owner_id: int, email: str) -> bool:
    found = session.scalar(
        select(Suppression.id).where(Suppression.owner_id == owner_id, Suppression.email == email.strip().lower())
    )
    return found is not None
