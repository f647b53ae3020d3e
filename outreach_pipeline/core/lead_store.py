"""Storing validated lead rows: skip addresses already in the campaign or suppressed, insert the rest.

Two ways to one result. PostgreSQL gets the fast path: imports into one campaign take turns (an advisory
lock), so the campaign's addresses and the owner's suppressions are read once, each chunk is checked
against them, and the rest goes into `leads` through one `COPY`, rows prepared in Arrow (reply tokens,
custom fields as JSON). SQLite (the embedded default) gets the portable one: look up, then `executemany`.
Rows arrive as a frame indexed by their file line, with `email_key` (the lower-cased address) beside them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import TextClause, select, text
from sqlalchemy.orm import Session

from outreach_pipeline.core.key_hashes import HashedKeys, key_hashes
from outreach_pipeline.core.lead_schema import STANDARD_FIELDS, large_text_buffers
from outreach_pipeline.db.dialect import insert_ignoring_conflicts, is_postgresql
from outreach_pipeline.db.locks import lock_campaign
from outreach_pipeline.db.models import Lead, LeadStatus, Suppression

ALREADY_IN_CAMPAIGN = "already in campaign"
SUPPRESSED = "suppressed"
LOOKUP_BATCH = 5000
KEYS_READ_PER_BATCH = 50_000  # addresses fetched at a time when a PostgreSQL import reads them once
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


@dataclass(frozen=True)
class PreparedRows:
    """Checked rows, with whatever a store works out for them before it writes."""

    rows: pd.DataFrame
    table: pa.Table | None = None  # PostgreSQL: every row as it will be COPYed
    data: memoryview | None = None  # and the COPY's data for all of them (binary format)
    refused: list[tuple[int, str, str]] = field(default_factory=list)  # and those already there or suppressed


def reply_token_bytes(import_id: int, lines: Iterable[int]) -> np.ndarray:
    """One token per line, 16 bytes (a row each): the import and the line (4 bytes each), then 64 random bits that
    make it unguessable. The ordered prefix makes an import's tokens ascend, so the unique index takes them like
    appends, not as a million random inserts. Built in numpy with the randomness from one call: building a million
    tokens in Python took a twentieth of an import's CPU."""
    numbers = np.fromiter(lines, dtype=np.int64) & _UINT32
    tokens = np.empty((len(numbers), 16), dtype=np.uint8)
    tokens[:, :4] = np.frombuffer((import_id & _UINT32).to_bytes(4, "big"), dtype=np.uint8)
    tokens[:, 4:8] = numbers.astype(">u4").view(np.uint8).reshape(-1, 4)
    tokens[:, 8:] = np.frombuffer(secrets.token_bytes(8 * len(numbers)), dtype=np.uint8).reshape(-1, 8)
    return tokens


def reply_tokens(import_id: int, lines: Iterable[int]) -> list[str]:
    """The same tokens as 32 hex digits, the form `Lead.reply_token` holds."""
    digits = reply_token_bytes(import_id, lines).tobytes().hex()
    return [digits[start : start + 32] for start in range(0, len(digits), 32)]


_UINT32 = 0xFFFFFFFF


class LeadStore(Protocol):
    def prepare(self, rows: pd.DataFrame) -> PreparedRows:
        """Work that writes nothing, so it can run a chunk ahead, on the reading thread."""
        ...

    def store(self, prepared: PreparedRows) -> StoreResult: ...

    def finish(self) -> None:
        """After the last chunk, before the transaction commits."""
        ...

    def close(self, error: BaseException | None = None) -> None:
        """Release what the store holds; after `finish`, or instead of it when the import fails with `error`."""
        ...


def lead_store_for(session: Session, target: StoreTarget) -> LeadStore:
    """The store for the session's database. Locks the campaign row until commit: leads carry no foreign key
    (a per-row parent lookup costs more than the insert), so this one lock keeps the campaign from being
    deleted under the import, and its status from changing before the import commits. The campaign is read
    again under the lock (the session's own object, refreshed): a launch that committed while the import
    waited must be seen, or the new leads would get no first email."""
    lock_campaign(session, target.campaign_id)
    return PostgresLeadStore(session, target) if is_postgresql(session) else PortableLeadStore(session, target)


def custom_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c not in STANDARD_FIELDS and c != "email_key"]


def refusals(rows: pd.DataFrame, existing: set[str], suppressed: set[str]
             ) -> tuple[np.ndarray | None, list[tuple[int, str, str]]]:
    """`refused_rows` for the addresses (`email_key`s) the campaign holds and the owner suppressed."""
    if not existing and not suppressed:
        return None, []
    keys = rows["email_key"]
    return refused_rows(rows, keys.isin(suppressed).to_numpy(dtype=bool), keys.isin(existing).to_numpy(dtype=bool))


def refused_rows(rows: pd.DataFrame, suppressed: np.ndarray, existing: np.ndarray
                 ) -> tuple[np.ndarray | None, list[tuple[int, str, str]]]:
    """Which rows are refused (a mask, None when none is) and why, as (line, email, reason), from masks of the
    rows the owner suppressed and the campaign already holds. Suppression wins over a duplicate: the address
    must never be mailed, whichever campaign holds it."""
    hit = suppressed | existing
    if not hit.any():
        return None, []
    return hit, [(int(line), email, SUPPRESSED if is_suppressed else ALREADY_IN_CAMPAIGN)
                 for line, email, is_suppressed in zip(rows.index[hit], rows["email"][hit], suppressed[hit],
                                                      strict=True)]


def split_refused(rows: pd.DataFrame, existing: set[str], suppressed: set[str]
                  ) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    """The rows that may land, and the others as (line, email, reason)."""
    hit, refused = refusals(rows, existing, suppressed)
    return (rows if hit is None else rows[~hit]), refused


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

    def prepare(self, rows: pd.DataFrame) -> PreparedRows:
        return PreparedRows(rows)

    def finish(self) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        pass

    def store(self, prepared: PreparedRows) -> StoreResult:
        rows = prepared.rows
        keys = list(rows["email_key"])
        existing = self._found(Lead.email_key, Lead.campaign_id == self.target.campaign_id, keys)
        suppressed = self._found(Suppression.email, Suppression.owner_id == self.target.owner_id, keys)
        fresh, refused = split_refused(rows, existing, suppressed)
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


# --- PostgreSQL: check each chunk against the addresses read once, then COPY the rest into leads ---------


_TEXT_COLUMNS = ("email", "email_key", *[f for f in STANDARD_FIELDS if f != "email"])
# What the COPY sends; status (PENDING) and created_at (the transaction's time) are the columns' defaults.
LEAD_COLUMNS = ("campaign_id", *_TEXT_COLUMNS, "custom_fields", "reply_token", "import_id")
# While it is 'on' in a transaction, the leads insert trigger does not count rows (migration 0013): the import
# counts its rows into campaign_counts itself, with one row, instead of PostgreSQL counting them one by one.
LEADS_COUNTED_SETTING = "outreach.leads_counted"
# What JSON must escape in a string that passed the schema (no control characters but tab and line breaks).
_JSON_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


def custom_fields_json(rows: pd.DataFrame, custom: list[str]) -> pa.Array:
    """Each row's custom fields as a JSON object without its empty cells, built column-wise in Arrow.

    Keys are canonical field names ([a-z0-9_]), so only the values need escaping.
    """
    if not custom:
        return pa.repeat(pa.scalar("{}", pa.large_string()), len(rows))
    members = []
    for name in custom:
        value = _escaped(pa.array(rows[name], pa.large_string()))
        # A null value makes a null member, which the join below leaves out.
        members.append(pc.binary_join_element_wise(_text(f',"{name}":"'), value, _text('"'), _text("")))
    joined = pc.binary_join_element_wise(_text("{"), *members, _text("}"), _text(""), null_handling="replace",
                                         null_replacement="")
    # The first member's leading comma goes: one replacement near the start of each row.
    return pc.replace_substring(joined, "{,", "{", max_replacements=1)


def _escaped(value: pa.Array, escapes: tuple[tuple[str, str], ...] = _JSON_ESCAPES) -> pa.Array:
    """A large-string column with `escapes` applied: only those its bytes need (one scan of the bytes, where
    each replacement is a pass that copies the column)."""
    text = _bytes(value)
    for raw, escaped in escapes:
        if (text == ord(raw)).any():
            value = pc.replace_substring(value, raw, escaped)
    return value


def _bytes(value: pa.Array) -> np.ndarray:
    """The bytes of a large-string (or large-binary) array's values, one after the other (no copy)."""
    ends, data = large_text_buffers(value)
    return data[ends[0]:ends[-1]]


# COPY's binary format: a signature, then per row the number of fields and each field as its length (-1 for
# NULL) and bytes, all integers big-endian; a -1 field count ends the data. Nothing in a value is escaped.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
_TRAILER = b"\xff\xff"
_INT4 = np.dtype(">i4")


def _copy_data(table: pa.Table) -> memoryview:
    """The rows as binary COPY data (without the signature and trailer the COPY sends around them), built
    column-wise in Arrow with one join. PostgreSQL reads it with less work than the text format: no line
    splitting, no unescaping, no parsing of numbers and uuids."""
    fields: list[pa.Array | pa.Scalar] = [_binary(table.num_columns.to_bytes(2, "big"))]
    for name in table.column_names:
        fields += _binary_field(table.column(name).combine_chunks())
    return memoryview(_bytes(pc.binary_join_element_wise(*fields, _binary(b""))))


def _binary_field(values: pa.Array) -> list[pa.Array | pa.Scalar]:
    """A column as binary COPY fields: its lengths, then its values (integers as int4; text and bytes as they
    are, which is what json, varchar and uuid read). NULL is the length -1 and no bytes."""
    if pa.types.is_integer(values.type):
        assert values.null_count == 0, "integer columns are never NULL here"
        return [_binary((4).to_bytes(4, "big")), _fixed_width(values.to_numpy().astype(_INT4), 4)]
    if values.null_count == len(values):  # a column the file does not have: one scalar, not a column of NULLs
        return [_binary((-1).to_bytes(4, "big", signed=True)), _binary(b"")]
    lengths = pc.binary_length(values)
    values = values.cast(pa.large_binary())
    if values.null_count:  # the join's own NULL handling costs more than filling them in first
        lengths, values = pc.fill_null(lengths, -1), pc.fill_null(values, b"")
    return [_fixed_width(lengths.to_numpy().astype(_INT4), 4), values]


def _fixed_width(values: np.ndarray, width: int) -> pa.Array:
    """Each element's bytes as one binary value (no copy)."""
    offsets = np.arange(0, width * (len(values) + 1), width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def _binary(value: bytes) -> pa.Scalar:
    return pa.scalar(value, pa.large_binary())


def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


class PostgresLeadStore:
    """Imports into one campaign take turns. The campaign's addresses and the owner's suppressions are read
    once, under the turn, as hashes the reading thread checks each chunk against; the import's connection
    then does nothing but one COPY that takes every chunk."""

    def __init__(self, session: Session, target: StoreTarget) -> None:
        self.session = session
        self.target = target
        # Taking turns lets each import see every address already in the campaign and COPY the rest
        # plainly: an INSERT ... ON CONFLICT DO NOTHING from a staging table cost twice as much per row.
        session.execute(text("SELECT pg_advisory_xact_lock(:space, :campaign_id)"),
                        {"space": IMPORT_LOCK_SPACE, "campaign_id": target.campaign_id})
        # Read now, not chunk by chunk: statements between chunks left PostgreSQL idle while they came and
        # went. Other imports into the campaign wait for this one; a suppression that lands during the import
        # is not seen here, and sending checks every address again anyway.
        self.in_campaign = _hashed(session, _IN_CAMPAIGN, campaign_id=target.campaign_id)
        self.suppressed = _hashed(session, _SUPPRESSED, owner_id=target.owner_id)
        self._copying = ExitStack()  # the COPY, open from the first stored row to `finish`
        self._copy: Any = None
        self._stored = 0

    def prepare(self, rows: pd.DataFrame) -> PreparedRows:
        """The rows that may land, as the COPY's data, and the others with their reasons: on the reading
        thread, while the previous chunk is stored."""
        table = self._table(rows)
        hashes = key_hashes(rows["email_key"])
        hit, refused = refused_rows(rows, self.suppressed.contains(hashes), self.in_campaign.contains(hashes))
        if hit is not None:
            table = table.filter(pa.array(~hit))
        return PreparedRows(rows, table, _copy_data(table), refused)

    def _table(self, rows: pd.DataFrame) -> pa.Table:
        n = len(rows)
        columns = {
            "campaign_id": pa.repeat(pa.scalar(self.target.campaign_id, pa.int64()), n),
            **{f: pa.array(rows[f], pa.large_string()) for f in _TEXT_COLUMNS},
            "custom_fields": custom_fields_json(rows, custom_columns(rows)),
            # Made here, not in SQL: gen_random_uuid() per row cost PostgreSQL more than the COPY itself.
            "reply_token": _fixed_width(reply_token_bytes(self.target.import_id, rows.index), 16),
            "import_id": pa.repeat(pa.scalar(self.target.import_id, pa.int64()), n),
        }
        return pa.table([columns[c] for c in LEAD_COLUMNS], names=list(LEAD_COLUMNS))

    def store(self, prepared: PreparedRows) -> StoreResult:
        table, data = prepared.table, prepared.data
        assert table is not None and data is not None, "prepared by another store"
        if table.num_rows:
            self._copy_writer().write(data)
            self._stored += table.num_rows
        return StoreResult(table.num_rows, prepared.refused)

    def _copy_writer(self) -> Any:
        """The import's COPY, started with the insert trigger's counting switched off (`finish` counts).
        It runs as long as the file takes to read and check, so the transaction lifts any statement timeout
        for it: a timeout meant for queries would otherwise end every import longer than itself."""
        if self._copy is None:
            connection = self.session.connection()
            connection.execute(_COUNTING_OFF)
            connection.execute(_NO_STATEMENT_TIMEOUT)
            driver = connection.connection.driver_connection
            cursor = self._copying.enter_context(driver.cursor())  # type: ignore[union-attr]
            self._copy = self._copying.enter_context(
                cursor.copy(f"COPY leads ({', '.join(LEAD_COLUMNS)}) FROM STDIN (FORMAT binary)"))
            self._copy.write(_SIGNATURE)
        return self._copy

    def finish(self) -> None:
        """End the COPY (PostgreSQL checks the last rows here) and count the rows it stored, in one row."""
        if self._copy is not None:
            self._copy.write(_TRAILER)
            self._copy = None
            self._copying.close()
            self.session.execute(_COUNTED, {"campaign_id": self.target.campaign_id, "n": self._stored})

    def close(self, error: BaseException | None = None) -> None:
        """Abandon a COPY still open: the import failed with `error`."""
        if self._copy is not None:
            self._copy = None
            failed = error or RuntimeError("the import ended before its last chunk")
            self._copying.__exit__(type(failed), failed, failed.__traceback__)


def _hashed(session: Session, statement: TextClause, **params: Any) -> HashedKeys:
    """The addresses a query returns, as hashes, streamed in batches (a campaign may hold millions)."""
    keys = HashedKeys()
    result = session.execute(statement.execution_options(stream_results=True), params)  # a server-side cursor
    for batch in result.scalars().partitions(KEYS_READ_PER_BATCH):
        keys.add(key_hashes(batch))
    return keys


_IN_CAMPAIGN = text("SELECT email_key FROM leads WHERE campaign_id = :campaign_id")
_SUPPRESSED = text("SELECT email FROM suppressions WHERE owner_id = :owner_id")
_NO_STATEMENT_TIMEOUT = text("SET LOCAL statement_timeout = 0")
_COUNTING_OFF = text(f"SELECT set_config('{LEADS_COUNTED_SETTING}', 'on', true)")
# The rows just copied, as the trigger would have counted them (all PENDING), and the trigger counting again.
_COUNTED = text(f"""
    WITH counting_on AS (SELECT set_config('{LEADS_COUNTED_SETTING}', '', true))
    INSERT INTO campaign_counts (campaign_id, kind, step_number, template_id, status, delivered, n)
    SELECT :campaign_id, 'lead', 0, 0, '{LeadStatus.PENDING.value}', false, :n FROM counting_on
""")
