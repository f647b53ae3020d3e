"""The few statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignoring_conflicts(session: Session, model: type[Any], conflict_columns: list[str]) -> Any:
    """INSERT ... ON CONFLICT (columns) DO NOTHING, for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
