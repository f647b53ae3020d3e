"""Storing validated lead rows: skip addresses already in the campaign or suppressed, insert the rest.

Two ways to one result. PostgreSQL gets the fast path: imports into one campaign take turns (an advisory
lock), each chunk is `COPY`ed into a temporary staging table, then one `INSERT ... SELECT` skips the
addresses already there or suppressed; only when fewer rows landed than were staged does a second query
name why each of the others was refused. SQLite (the embedded default) gets the portable one: look up,
then `executemany`.
Rows arrive as a frame indexed by their file line, with `email_key` (the lower-cased address) beside them.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import TextClause, exists, select, text
from sqlalchemy.orm import Session

from outreach_pipeline.core.lead_schema import STANDARD_FIELDS
from outreach_pipeline.db.dialect import insert_ignoring_conflicts, is_postgresql
from outreach_pipeline.db.models import Campaign, Lead, LeadStatus, Suppression

ALREADY_IN_CAMPAIGN = "already in campaign"
SUPPRESSED = "suppressed"
LOOKUP_BATCH = 5000
# jsonb_build_object takes at most 100 arguments: custom fields are built 50 pairs at a time.
JSON_PAIRS_PER_CALL = 50
STAGE_WORK_MEM = "64MB"
IMPORT_LOCK_SPACE = 0x1EAD  # first key of the advisory lock that serialises imports into one campaign


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


def reply_tokens(import_id: int, lines: Iterable[int]) -> list[str]:
    """One token per line, 32 hex characters: the import and the line (8 each), then 64 random bits that
    make it unguessable. The ordered prefix makes an import's tokens ascend, so the unique index takes them
    like appends, not as a million random inserts; the random part comes from one call for the whole batch.
    """
    lines = list(lines)
    randomness = secrets.token_hex(8 * len(lines))
    prefix = f"{import_id & _HEX8:08x}"
    return [f"{prefix}{line & _HEX8:08x}{randomness[16 * i:16 * i + 16]}" for i, line in enumerate(lines)]


_HEX8 = 0xFFFFFFFF


class LeadStore(Protocol):
    def store(self, rows: pd.DataFrame) -> StoreResult: ...


def lead_store_for(session: Session, target: StoreTarget) -> LeadStore:
    """The store for the session's database. Locks the campaign row until commit: leads carry no foreign key
    (a per-row parent lookup costs more than the insert), so this one lock keeps the campaign from being
    deleted under the import."""
    session.execute(select(Campaign.id).where(Campaign.id == target.campaign_id).with_for_update(key_share=True))
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
        plain = rows.astype(object).where(rows.notna(), None)
        tokens = reply_tokens(self.target.import_id, rows.index)
        for token, row in zip(tokens, plain.to_dict("records"), strict=True):
            records.append({
                "campaign_id": self.target.campaign_id,
                **{f: row.get(f) for f in STANDARD_FIELDS},
                "email_key": row["email_key"],
                "custom_fields": {c: row[c] for c in extra if row[c] is not None},
                "status": LeadStatus.PENDING,
                "reply_token": token,
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
        # Imports into one campaign take turns, so each can see every address already there and insert
        # plainly: ON CONFLICT DO NOTHING doubled the cost of the unique index on every row.
        session.execute(text("SELECT pg_advisory_xact_lock(:space, :campaign_id)"),
                        {"space": IMPORT_LOCK_SPACE, "campaign_id": target.campaign_id})
        # Known once, under the lock: into an empty campaign (the usual large import) no row can conflict,
        # since the file holds each address once.
        self.campaign_had_leads = session.scalar(
            select(exists().where(Lead.campaign_id == target.campaign_id))) or False

    def _create_stage(self, custom: list[str]) -> None:
        columns = ", ".join(f"c{i} text" for i in range(len(custom)))
        standard = ", ".join(f"{f} text" for f in STANDARD_FIELDS if f != "email")
        # varchar like leads.email_key, so lookups by (campaign_id, email_key) can use the unique index.
        self.session.execute(text(
            "CREATE TEMPORARY TABLE IF NOT EXISTS lead_stage (line bigint, email text, email_key varchar(320), "
            "reply_token text, "
            f"{standard}{', ' + columns if columns else ''}) ON COMMIT DROP"
        ))
        # For this transaction only: JIT compiling costs more than it saves on these statements, and the
        # anti-join's hash of one chunk's keys should stay in memory.
        self.session.execute(text("SET LOCAL jit = off"))
        self.session.execute(text(f"SET LOCAL work_mem = '{STAGE_WORK_MEM}'"))
        self.custom = custom

    def _copy(self, rows: pd.DataFrame, custom: list[str]) -> None:
        ordered = rows[["email", "email_key", *[f for f in STANDARD_FIELDS if f != "email"], *custom]]
        # Tokens made here, not in SQL: gen_random_uuid() per row cost PostgreSQL more than the COPY did.
        ordered.insert(2, "reply_token", reply_tokens(self.target.import_id, rows.index))
        table = pa.Table.from_pandas(ordered.reset_index(names="line"), preserve_index=False)
        buffer = io.BytesIO()
        # Every value quoted: an unquoted empty cell is NULL to COPY, and a bare `\.` would end the data.
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        driver = self.session.connection().connection.driver_connection
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute("TRUNCATE lead_stage")
            with cursor.copy("COPY lead_stage FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buffer.getbuffer())
            # True row counts and the key's distinct values, so the planner picks hash joins; sampling only the
            # key column costs a tenth of a full ANALYZE of every staged column.
            cursor.execute("ANALYZE lead_stage (email_key)")

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
        return text(f"""
            INSERT INTO leads (campaign_id, email, email_key, {", ".join(standard)}, custom_fields, status,
                               reply_token, import_id, created_at)
            SELECT CAST(:campaign_id AS integer), s.email, s.email_key,
                   {", ".join(f"s.{f}" for f in standard)}, {custom_json},
                   CAST(:status AS text), s.reply_token, CAST(:import_id AS integer), CAST(:now AS timestamptz)
            FROM lead_stage s
            WHERE NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.owner_id = :owner_id AND x.email = s.email_key)
              {self._NOT_IN_CAMPAIGN if self.campaign_had_leads else ""}
        """), params

    # One index probe per staged row. OFFSET 0 keeps the planner from turning this into a hash join, which
    # would read every lead of the campaign again for each chunk, this import's own included.
    _NOT_IN_CAMPAIGN = """AND NOT EXISTS (SELECT 1 FROM leads l WHERE l.campaign_id = :campaign_id
                                                 AND l.email_key = s.email_key OFFSET 0)"""

    # A staged row that did not land was suppressed or already in the campaign from an earlier import. The
    # file holds each address once, so a lead with the address and another import's id refused the row.
    _REFUSED = text("""
        SELECT s.line, s.email,
               CASE WHEN x.email IS NOT NULL THEN CAST(:suppressed AS text) ELSE CAST(:already AS text) END
        FROM lead_stage s
        LEFT JOIN suppressions x ON x.owner_id = :owner_id AND x.email = s.email_key
        WHERE x.email IS NOT NULL OR EXISTS (
            SELECT 1 FROM leads l WHERE l.campaign_id = :campaign_id AND l.email_key = s.email_key
                                    AND l.import_id IS DISTINCT FROM :import_id)
        ORDER BY s.line
    """)

    def store(self, rows: pd.DataFrame) -> StoreResult:
        custom = custom_columns(rows)
        if self.custom != custom:
            self.session.execute(text("DROP TABLE IF EXISTS lead_stage"))
            self._create_stage(custom)
        self._copy(rows, custom)
        statement, params = self._insert_statement(custom)
        scope = {"campaign_id": self.target.campaign_id, "owner_id": self.target.owner_id,
                 "import_id": self.target.import_id}
        stored = self.session.execute(statement, {
            **params, **scope, "now": self.target.now, "status": LeadStatus.PENDING.value,
        }).rowcount
        if stored == len(rows):  # the usual case: every row landed, nothing to explain
            return StoreResult(stored, [])
        refused = self.session.execute(self._REFUSED, {**scope, "suppressed": SUPPRESSED,
                                                       "already": ALREADY_IN_CAMPAIGN}).all()
        return StoreResult(stored, [(int(line), email, reason) for line, email, reason in refused])
