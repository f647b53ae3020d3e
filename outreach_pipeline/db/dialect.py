"""The few statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session


def insert_ignoring_conflicts(session: Session, target: type[Any] | Table, conflict_columns: list[str]) -> Any:
    """INSERT ... ON CONFLICT (columns) DO NOTHING into a model or a table, for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(target).on_conflict_do_nothing(index_elements=conflict_columns)
    return sqlite.insert(target).on_conflict_do_nothing(index_elements=conflict_columns)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(session: Session, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`, the values bound with the statement (see `in_list`)."""
    return in_list(column, None, is_postgresql(session), values)


def in_list(column: ColumnElement[Any], name: str | None, postgresql: bool,
            values: Sequence[Any] | None = None) -> ColumnElement[bool]:
    """`column` among a list of values: bound as `name` when the statement is built once and run with many
    lists, or given here. On PostgreSQL one array parameter (`= ANY(:name)`: nothing per value to render or
    bind, one plan and one statement text whatever the list's length), elsewhere an expanding IN."""
    given = {} if values is None else {"value": list(values)}
    if postgresql:
        return column == any_(bindparam(name, type_=ARRAY(column.type), **given))
    return column.in_(bindparam(name, expanding=True, **given))
