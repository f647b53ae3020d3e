"""Declarative base with a naming convention so migrations name constraints the same everywhere."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, DateTime, MetaData, String, Text, TypeDecorator, Uuid, cast, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonType = JSON().with_variant(JSONB(), "postgresql")

_TOKEN = re.compile(r"[0-9a-fA-F]{32}")


def as_token(value: str) -> str | None:
    """`value` as a 128-bit token (32 lower-case hex digits), or None when it is not one."""
    return value.lower() if _TOKEN.fullmatch(value) else None


class HexToken(TypeDecorator[str]):
    """A 128-bit token, 32 hex digits in Python. PostgreSQL keeps it as a uuid: 16 bytes compared as bytes,
    where text cost an import a tenth of its database time in the unique index (the digits are read the
    same without dashes); other databases keep the 32 digits. Compare with `as_token` first: PostgreSQL
    refuses text that is not a uuid with an error, not a miss."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Uuid(as_uuid=False))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        token = as_token(value)
        if token is None:
            raise ValueError(f"not a 32-digit hex token: {value!r}")
        return token

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.replace("-", "")


class JsonText(TypeDecorator[Any]):
    """A JSON value that PostgreSQL keeps as text. Its json type checks every value as it comes in, which cost
    an import of a million leads a fifteenth of its database time, and nothing here needs the database to
    know the text is JSON: it is read whole, and the one query that looks inside casts it (`json_text_field`).
    Other databases keep SQLAlchemy's JSON type."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        # Text as it is: the PostgreSQL dialect's descriptor for it is a VARCHAR.
        return Text() if dialect.name == "postgresql" else dialect.type_descriptor(JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "postgresql" or value is None:
            return value  # JSON's own processing serialises it
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        # A json or JSONB column comes back already parsed: reads work before migration 0014 (writes need it).
        return json.loads(value) if dialect.name == "postgresql" and isinstance(value, str) else value


def json_text_field(column: Any, name: str, dialect: Dialect) -> ColumnElement[str]:
    """The text at `name` in a `JsonText` column's objects, in SQL (NULL where it is missing or null)."""
    as_json = cast(column, JSON) if dialect.name == "postgresql" else type_coerce(column, JSON)
    return as_json[name].as_string()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime, dict[str, Any]: JsonType}


def utcnow() -> datetime:
    return datetime.now(UTC)
