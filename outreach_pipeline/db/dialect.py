"""The few statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session


def insert_ignoring_conflicts(session: Session, model: type[Any], conflict_columns: list[str]) -> Any:
    """INSERT ... ON CONFLICT (columns) DO NOTHING, for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=conflict_columns)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(session: Session, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL one array parameter (`= ANY(:values)`): nothing per value to
    render or bind, and one plan whatever the batch size."""
    if is_postgresql(session):
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def in_list(column: ColumnElement[Any], name: str, postgresql: bool) -> ColumnElement[bool]:
    """`column` among the values bound as `name`, for a statement built once and run with many lists: on
    PostgreSQL one array parameter (one plan and one statement text whatever the list's length), elsewhere
    an expanding IN."""
    if postgresql:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))
