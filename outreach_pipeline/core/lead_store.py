"""Storing validated lead rows: skip addresses already in the campaign or suppressed, insert the rest.

Two ways to one result. PostgreSQL gets the fast path: `COPY` into a temporary staging table, then one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING` that also names why each row that did not land
was refused. SQLite (the embedded default) gets the portable one: look up, then `executemany`.
Rows arrive as a frame indexed by their file line, with `email_key` (the lower-cased address) beside them.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import TextClause, select, text
from sqlalchemy.orm import Session

from outreach_pipeline.core.lead_schema import STANDARD_FIELDS
from outreach_pipeline.db.dialect import insert_ignoring_conflicts, is_postgresql
from outreach_pipeline.db.models import Lead, LeadStatus, Suppression

ALREADY_IN_CAMPAIGN = "already in campaign"
SUPPRESSED = "suppressed"
LOOKUP_BATCH = 5000
# jsonb_build_object takes at most 100 arguments: custom fields are built 50 pairs at a time.
JSON_PAIRS_PER_CALL = 50
STAGE_WORK_MEM = "64MB"


@dataclass(frozen=True)
class StoreTarget:
    campaign_id: int
    owner_id: int
    import_id: int
    now: datetime


@dataclass
class StoreResult:
    stored: int
    refused: list[tuple[int, str, str]]  # (line, email, reason)


def new_reply_token() -> str:
    """24 hex characters; PostgreSQL's staging path makes 32 from a random UUID (the column takes 32)."""
    return secrets.token_hex(12)


class LeadStore(Protocol):
    def store(self, rows: pd.DataFrame) -> StoreResult: ...


def lead_store_for(session: Session, target: StoreTarget) -> LeadStore:
    return PostgresLeadStore(session, target) if is_postgresql(session) else PortableLeadStore(session, target)


def custom_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c not in STANDARD_FIELDS and c != "email_key"]


# --- SQLite (and any database): look up, then executemany -------------------------------------------------


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PortableLeadStore:
    def __init__(self, session: Session, target: StoreTarget) -> None:
        self.session = session
        self.target = target

    def _found(self, column: Any, scope: Any, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(keys, LOOKUP_BATCH):
            found.update(self.session.scalars(select(column).where(scope, column.in_(batch))))
        return found

    def store(self, rows: pd.DataFrame) -> StoreResult:
        keys = list(rows["email_key"])
        existing = self._found(Lead.email_key, Lead.campaign_id == self.target.campaign_id, keys)
        suppressed = self._found(Suppression.email, Suppression.owner_id == self.target.owner_id, keys)
        refused = [  # suppression first: the address must never be mailed, whichever campaign holds it
            (int(line), email, SUPPRESSED if key in suppressed else ALREADY_IN_CAMPAIGN)
            for line, email, key in zip(rows.index, rows["email"], rows["email_key"], strict=True)
            if key in existing or key in suppressed
        ]
        fresh = rows[~rows["email_key"].isin(existing | suppressed)]
        landed = self._insert(fresh)
        # RETURNING tells what really landed: a concurrent import may have stored some addresses first.
        refused += [(int(line), email, ALREADY_IN_CAMPAIGN)
                    for line, email, key in zip(fresh.index, fresh["email"], fresh["email_key"], strict=True)
                    if key not in landed]
        return StoreResult(len(landed), refused)

    def _insert(self, rows: pd.DataFrame) -> set[str]:
        if rows.empty:
            return set()
        extra = custom_columns(rows)
        records = []
        for row in rows.astype(object).where(rows.notna(), None).to_dict("records"):
            records.append({
                "campaign_id": self.target.campaign_id,
                **{f: row.get(f) for f in STANDARD_FIELDS},
                "email_key": row["email_key"],
                "custom_fields": {c: row[c] for c in extra if row[c] is not None},
                "status": LeadStatus.PENDING,
                "reply_token": new_reply_token(),
                "import_id": self.target.import_id,
                "created_at": self.target.now,
            })
        statement = insert_ignoring_conflicts(self.session, Lead, ["campaign_id", "email_key"])
        result = self.session.connection().execute(statement.returning(Lead.__table__.c.email_key), records)
        return set(result.scalars())


# --- PostgreSQL: COPY into a staging table, then one INSERT ... SELECT ----------------------------------


class PostgresLeadStore:
    """One temporary staging table per import, emptied for every chunk, dropped at commit."""

    def __init__(self, session: Session, target: StoreTarget) -> None:
        self.session = session
        self.target = target
        self.custom: list[str] | None = None

    def _create_stage(self, custom: list[str]) -> None:
        columns = ", ".join(f"c{i} text" for i in range(len(custom)))
        standard = ", ".join(f"{f} text" for f in STANDARD_FIELDS if f != "email")
        # varchar like leads.email_key, so lookups by (campaign_id, email_key) can use the unique index.
        self.session.execute(text(
            "CREATE TEMPORARY TABLE IF NOT EXISTS lead_stage (line bigint, email text, email_key varchar(320), "
            f"{standard}{', ' + columns if columns else ''}) ON COMMIT DROP"
        ))
        # For this transaction only: JIT compiling costs more than it saves on these statements, and the
        # anti-join's hash of one chunk's keys should stay in memory.
        self.session.execute(text("SET LOCAL jit = off"))
        self.session.execute(text(f"SET LOCAL work_mem = '{STAGE_WORK_MEM}'"))
        self.custom = custom

    def _copy(self, rows: pd.DataFrame, custom: list[str]) -> None:
        ordered = rows[["email", "email_key", *[f for f in STANDARD_FIELDS if f != "email"], *custom]]
        table = pa.Table.from_pandas(ordered.reset_index(names="line"), preserve_index=False)
        buffer = io.BytesIO()
        # Every value quoted: an unquoted empty cell is NULL to COPY, and a bare `\.` would end the data.
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        driver = self.session.connection().connection.driver_connection
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute("TRUNCATE lead_stage")
            with cursor.copy("COPY lead_stage FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buffer.getbuffer())
            cursor.execute("ANALYZE lead_stage")  # true row counts, so the planner picks hash joins

    def _custom_json(self, custom: list[str]) -> tuple[str, dict[str, str]]:
        if not custom:
            return "'{}'::jsonb", {}
        params = {f"k{i}": name for i, name in enumerate(custom)}
        calls = []
        for start in range(0, len(custom), JSON_PAIRS_PER_CALL):
            end = min(start + JSON_PAIRS_PER_CALL, len(custom))
            pairs = ", ".join(f"CAST(:k{i} AS text), s.c{i}" for i in range(start, end))
            calls.append(f"jsonb_build_object({pairs})")
        return f"jsonb_strip_nulls({' || '.join(calls)})", params

    def _insert_statement(self, custom: list[str]) -> tuple[TextClause, dict[str, str]]:
        standard = [f for f in STANDARD_FIELDS if f != "email"]
        custom_json, params = self._custom_json(custom)
        # A staged row that did not land was either suppressed (filtered out) or already in the campaign
        # (the conflict), be it from before or from a concurrent import of the same address.
        return text(f"""
            WITH inserted AS (
                INSERT INTO leads (campaign_id, email, email_key, {", ".join(standard)}, custom_fields, status,
                                   reply_token, import_id, created_at)
                SELECT CAST(:campaign_id AS integer), s.email, s.email_key,
                       {", ".join(f"s.{f}" for f in standard)}, {custom_json},
                       CAST(:status AS text), replace(gen_random_uuid()::text, '-', ''), CAST(:import_id AS integer),
                       CAST(:now AS timestamptz)
                FROM lead_stage s
                WHERE NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.owner_id = :owner_id AND x.email = s.email_key)
                ON CONFLICT (campaign_id, email_key) DO NOTHING
                RETURNING email_key
            ), landed AS (SELECT count(*) AS n FROM inserted)
            SELECT (SELECT n FROM landed), s.line, s.email,
                   CASE WHEN x.email IS NOT NULL THEN CAST(:suppressed AS text) ELSE CAST(:already AS text) END
            FROM lead_stage s
            LEFT JOIN suppressions x ON x.owner_id = :owner_id AND x.email = s.email_key
            WHERE NOT EXISTS (SELECT 1 FROM inserted i WHERE i.email_key = s.email_key)  -- a hash anti-join
            UNION ALL SELECT (SELECT n FROM landed), NULL, NULL, NULL::text
            ORDER BY 2 NULLS FIRST
        """), params

    def store(self, rows: pd.DataFrame) -> StoreResult:
        custom = custom_columns(rows)
        if self.custom != custom:
            self.session.execute(text("DROP TABLE IF EXISTS lead_stage"))
            self._create_stage(custom)
        self._copy(rows, custom)
        statement, params = self._insert_statement(custom)
        result = self.session.execute(statement, {
            **params, "campaign_id": self.target.campaign_id, "owner_id": self.target.owner_id,
            "import_id": self.target.import_id, "now": self.target.now, "status": LeadStatus.PENDING.value,
            "suppressed": SUPPRESSED, "already": ALREADY_IN_CAMPAIGN,
        }).all()
        stored = int(result[0][0])
        return StoreResult(stored, [(int(line), email, reason) for _, line, email, reason in result[1:]])
