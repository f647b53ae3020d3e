"""Lead ingestion: one path for CSV files (bucket and upload), JSON rows and copies between campaigns.

Every row ends in exactly one place: stored, or rejected with its line number and a reason.
Reading files is `lead_file`, the row rules are `lead_schema`, storing is `lead_store`, the report
of refused rows is `rejects`; this module runs an import through them, chunk by chunk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.jobs import schedule_first_jobs
from outreach_pipeline.core.key_hashes import HashedKeys, key_hashes
from outreach_pipeline.core.lead_file import RecordChunk, collector_paused, open_lead_file, rows_table
from outreach_pipeline.core.lead_fields import lead_fields
from outreach_pipeline.core.lead_schema import (
    LEAD_ROW_FRAME_SCHEMA,
    STANDARD_FIELDS,
    canonical_header,
    custom_field_name,
    failure_reasons,
)
from outreach_pipeline.core.lead_store import PreparedRows, StoreTarget, lead_store_for
from outreach_pipeline.core.placeholders import AI_OPENER, campaign_template_texts, find_placeholders
from outreach_pipeline.core.prefetch import prefetched
from outreach_pipeline.core.rejects import LocalRejects, RejectsTarget, RejectsWriter, spreadsheet_safe
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    ImportStatus,
    Lead,
    LeadImport,
    LeadStatus,
)

__all__ = ["ImportReport", "RejectedRow", "add_leads", "copy_leads", "import_leads_csv", "lead_fields",
           "list_leads", "normalise_email", "spreadsheet_safe"]

# Up to four chunks are alive at once (one read, two waiting, one stored), each with several copies of its
# rows on the way (records, frame, checked frame, COPY data): at 25,000 rows the peak reached 570-620 MB on
# a million-row file; at 10,000 about 380-400 MB, for the same time.
CHUNK_ROWS = 20_000
REJECTS_KEPT_IN_REPORT = 100
# Arrow-backed strings: stripping, lower-casing and the schema's regexes run in C++, not row by row.
_TEXT_TYPE = pyarrow.large_string()  # what pandas' Arrow strings hold
_NULL_TEXT = pyarrow.scalar(None, _TEXT_TYPE)
_AT = pyarrow.scalar("@", _TEXT_TYPE)
DUPLICATE_IN_FILE = "duplicate in file"
TOO_MANY_COLUMNS = "too many columns"
NO_EMAIL_COLUMN = (
    "No email column found. Name one of the columns 'email', 'Email Address', 'E-mail' or 'Work Email'."
)
# Internal column beside the row's fields; canonical header names never start with '_' so never clash.
_KEY = "email_key"


@dataclass
class RejectedRow:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    import_id: int | None = None
    rows_read: int = 0
    stored: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_rejects: list[RejectedRow] = field(default_factory=list)
    rejects_path: str | None = None


def normalise_email(raw: str) -> str:
    """Trim and lower-case the domain; the local part keeps its case (some servers care)."""
    local, at, domain = raw.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else raw.strip()


# --- from records to frames -----------------------------------------------------------------------


def column_plan(headers: list[str]) -> list[tuple[int, str]]:
    """(position, field name) of each kept column: our fields by their usual spellings, the rest custom."""
    plan: list[tuple[int, str]] = []
    taken = {_KEY}
    for index, header in enumerate(headers):
        name = canonical_header(header) if header.strip() else f"column_{index + 1}"
        if name in taken and name in STANDARD_FIELDS:
            # The first column of a spelling is the field (Apollo has "Company" and "Company Name for Emails");
            # the others keep their data as custom fields under their own names.
            name = custom_field_name(header)
        if name in taken:
            name = f"{name}_{index + 1}"
        taken.add(name)
        plan.append((index, name))
    if "email" not in taken:
        raise InvalidInputError(NO_EMAIL_COLUMN)
    return plan


def _cleaned(array: pyarrow.Array) -> pyarrow.Array:
    """Trimmed, and NA where nothing is left, in Arrow (C++), not cell by cell in Python."""
    trimmed = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.equal(trimmed, ""), _NULL_TEXT, trimmed)


def _text(values: Sequence[str | None]) -> pd.arrays.ArrowStringArray:
    """Trimmed strings, NA for empty cells."""
    return pd.arrays.ArrowStringArray(_cleaned(pyarrow.array(values, type=_TEXT_TYPE)))


def _normalised_emails(emails: pd.arrays.ArrowStringArray) -> pd.arrays.ArrowStringArray:
    """`normalise_email` for a whole column: the domain (after the last '@') lower-cased, the rest kept.

    Split with a literal '@' rather than a regex with groups (several times faster); what the regex
    `^(?P<local>.*)@(?P<domain>[^@]*)$` left alone stays alone: no '@', or a line break before the last '@'.
    """
    array = pyarrow.array(emails)
    has_at = pc.match_substring(array, "@")
    # Every address in two at its last '@' ("@" stands in for those without one, which are kept as they are).
    halves = pc.split_pattern(pc.if_else(has_at, array, _AT), "@", max_splits=1, reverse=True)
    local, domain = pc.list_element(halves, 0), pc.list_element(halves, 1)
    joined = pc.binary_join_element_wise(local, pc.utf8_lower(domain), _AT)
    kept = pc.or_kleene(pc.invert(has_at), pc.match_substring(local, "\n"))
    return pd.arrays.ArrowStringArray(pc.if_else(kept, array, joined))


def _frame(rows: list[list[str]], lines: list[int], plan: list[tuple[int, str]]) -> pd.DataFrame:
    """A frame of trimmed strings (NA for empty cells) indexed by each record's first file line."""
    width = len(rows[0]) if rows else max(i for i, _ in plan) + 1
    return _table_frame(rows_table(rows, width), lines, plan)


def _table_frame(table: pyarrow.Table, lines: list[int] | np.ndarray, plan: list[tuple[int, str]]) -> pd.DataFrame:
    """The frame of a table with a string column per header cell (pyarrow's, or `rows_table`'s)."""
    # Cleaned as one array, column after column: three calls into Arrow, not three per column.
    cells = _cleaned(pyarrow.concat_arrays([column for chunked in table.columns for column in chunked.chunks]))
    rows = table.num_rows
    return _columns_frame([cells.slice(i * rows, rows) for i in range(table.num_columns)], lines, plan)


def _columns_frame(columns: list[pyarrow.Array | pyarrow.ChunkedArray], lines: list[int] | np.ndarray,
                   plan: list[tuple[int, str]]) -> pd.DataFrame:
    """The frame of cleaned columns (one per header cell), without the rows that have no text at all."""
    blank = _blank_rows(columns)
    if blank is not None:  # rows of empty cells (",,,," from spreadsheets) are layout, not leads
        kept = pyarrow.array(~blank)
        columns = [column.filter(kept) for column in columns]
        lines = np.asarray(lines, dtype=np.int64)[~blank]
    data = {name: pd.arrays.ArrowStringArray(columns[i]) for i, name in plan}
    data["email"] = _normalised_emails(data["email"])
    for name in STANDARD_FIELDS:  # every store and the schema see all our fields, present or not
        data.setdefault(name, _text([None] * len(lines)))
    # From an int64 array: pandas infers the dtype of a list of ints one by one, several times slower.
    # (No lines at all make an empty index of objects, as they always did.)
    index = pd.Index(np.asarray(lines, dtype=np.int64) if len(lines) else [], name="line")
    return pd.DataFrame(data, index=index)


def _blank_rows(columns: list[pyarrow.Array | pyarrow.ChunkedArray]) -> np.ndarray | None:
    """Which rows have no cell with text in it (a mask), or None when every row has some."""
    if not columns or any(column.null_count == 0 for column in columns):
        return None
    empty = np.logical_and.reduce([column.is_null().to_numpy(zero_copy_only=False) for column in columns])
    return empty if empty.any() else None


@dataclass
class _Batch:
    frame: pd.DataFrame
    too_wide: list[tuple[int, str, str]]  # records refused before validation: (line, email, reason)


def _file_batches(stream: BinaryIO, chunk_rows: int) -> Iterator[_Batch]:
    lead_file = open_lead_file(stream, chunk_rows, is_header=_names_an_email_column)
    plan = column_plan(lead_file.headers)
    email_at = next(i for i, name in plan if name == "email")
    while batch := _next_batch(lead_file.chunks, plan, email_at):
        yield batch


def _names_an_email_column(cells: list[str]) -> bool:
    return any(canonical_header(cell) == "email" for cell in cells if cell.strip())


def _next_batch(chunks: Iterator[RecordChunk], plan: list[tuple[int, str]], email_at: int) -> _Batch | None:
    """The next chunk of the file as a frame, or None at the end. Its records (a Python list each) are made
    and freed while the garbage collector is paused, so the collector never walks them."""
    with collector_paused():
        chunk = next(chunks, None)
        if chunk is None:
            return None
        if chunk.table is not None:
            frame = _table_frame(chunk.table, np.asarray(chunk.lines), plan)
        else:
            frame = _frame(chunk.rows, chunk.lines, plan)
        batch = _Batch(frame, _too_wide(chunk, email_at))
        chunk.rows.clear()  # the reader holds on to the chunk until it reads the next one
        return batch


def _too_wide(chunk: RecordChunk, email_at: int) -> list[tuple[int, str, str]]:
    return [(line, normalise_email(cells[email_at]), TOO_MANY_COLUMNS) for line, cells in chunk.too_wide]


def _records_batch(records: list[dict[str, Any]]) -> _Batch:
    """JSON objects as one batch; "line" is the position, from 1."""
    headers = list(dict.fromkeys(key for record in records for key in record))
    rows = [["" if record.get(h) is None else _valid_text(str(record[h])) for h in headers] for record in records]
    return _Batch(_frame(rows, list(range(1, len(rows) + 1)), column_plan([_valid_text(h) for h in headers])), [])


def _valid_text(value: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which no text column can hold: they become "?"."""
    return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value


# --- one import ---------------------------------------------------------------------------------------


@dataclass
class _Checked:
    """A batch after the row rules: the rows to store (with their key) and those refused already."""

    rows_read: int
    fresh: pd.DataFrame
    refused: list[tuple[int, Any, str]]


class _RowChecker:
    """Validates a batch and drops repeats of addresses seen earlier in the file. Touches no database,
    so it can run a chunk ahead of the store, in another thread."""

    def __init__(self) -> None:
        self.seen = HashedKeys()

    def check(self, batch: _Batch) -> _Checked:
        frame = batch.frame
        refused = list(batch.too_wide)
        reasons = _schema_reasons(frame)
        emails = frame["email"]
        kept = np.ones(len(frame), dtype=bool)
        if reasons:
            refused += [(line, emails.at[line], reason) for line, reason in reasons.items()]
            kept = ~frame.index.isin(list(reasons))
            emails = emails[kept]

        keys = emails.str.lower()
        hashes = key_hashes(keys)
        repeated = keys.duplicated(keep="first").to_numpy(dtype=bool) | self.seen.contains(hashes)
        if repeated.any():
            refused += [(line, email, DUPLICATE_IN_FILE) for line, email in emails[repeated].items()]
            keys, hashes = keys[~repeated], hashes[~repeated]
            kept[kept] = ~repeated
        self.seen.add(hashes)
        # The frame is filtered once, for both reasons (each filter copies every column); `assign` copies too.
        valid = frame if kept.all() else frame[kept]
        return _Checked(len(frame) + len(batch.too_wide), valid.assign(**{_KEY: keys.array}), refused)


class _LeadWriter:
    """Stores checked batches for one campaign and accounts for every row: stored, or refused with a reason."""

    def __init__(self, session: Session, campaign: Campaign, lead_import: LeadImport, rejects: RejectsWriter,
                 now: datetime) -> None:
        self.report = ImportReport(import_id=lead_import.id)
        self.rejects = rejects
        self.store = lead_store_for(session, StoreTarget(campaign.id, campaign.owner_id, lead_import.id, now))

    def prepare(self, checked: _Checked) -> tuple[_Checked, PreparedRows]:
        """What needs no database: runs on the reading thread, a chunk ahead of `add`."""
        return checked, self.store.prepare(checked.fresh)

    def add(self, checked: _Checked, prepared: PreparedRows) -> None:
        self.report.rows_read += checked.rows_read
        result = self.store.store(prepared)
        self.report.stored += result.stored
        self._refuse(checked.refused + result.refused)

    def _refuse(self, refused: list[tuple[int, Any, str]]) -> None:
        rows = sorted((int(line), "" if email is None or pd.isna(email) else str(email), reason)
                      for line, email, reason in refused)
        self.report.rejected += len(rows)
        self.report.reasons.update(reason for _, _, reason in rows)
        room = REJECTS_KEPT_IN_REPORT - len(self.report.first_rejects)
        self.report.first_rejects += [RejectedRow(*row) for row in rows[:max(room, 0)]]
        self.rejects.write(rows)


def _abandon(writer: _LeadWriter | None, report_file: RejectsWriter, error: BaseException) -> None:
    """A failed import: its store abandons what it holds open (a COPY), its report goes."""
    if writer is not None:
        writer.store.close(error)
    report_file.discard()


def _schema_reasons(frame: pd.DataFrame) -> dict[int, str]:
    try:
        LEAD_ROW_FRAME_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return failure_reasons(errors.failure_cases)
    return {}


def _fail(session: Session, campaign: Campaign, source: str, now: datetime, error: InvalidInputError) -> None:
    """Keep only a FAILED import record, with the message, and point the error at it."""
    session.rollback()
    failed = LeadImport(campaign_id=campaign.id, source=source, status=ImportStatus.FAILED,
                        error=error.message, started_at=now, finished_at=utcnow())
    session.add(failed)
    session.commit()
    error.details = {"import_id": failed.id}


# --- leads joining a running campaign ----------------------------------------------------------------
# A DRAFT's leads are checked against its templates at launch. A lead joining an ACTIVE or PAUSED campaign
# is checked here instead: without a field a template needs it would fail at send ("template field missing").

_RUNNING = (CampaignStatus.ACTIVE, CampaignStatus.PAUSED)
_NOT_LEAD_FIELDS = frozenset({"email", "sender_name", AI_OPENER})  # always there, or not the lead's to give


def _fields_templates_need(session: Session, campaign: Campaign) -> list[str]:
    """The lead fields a running campaign's templates use without a fallback (none for other statuses)."""
    if campaign.status not in _RUNNING:
        return []
    return sorted({p.name for text in campaign_template_texts(session, campaign.id) for p in find_placeholders(text)
                   if p.fallback is None} - _NOT_LEAD_FIELDS)


def _refuse_missing_fields(checked: _Checked, needed: list[str]) -> _Checked:
    """The rows lacking a needed field move from those to store to those refused, the fields named."""
    rows = checked.fresh
    if not needed or rows.empty:
        return checked
    absent = pd.DataFrame({name: rows[name].isna() if name in rows else True for name in needed}, index=rows.index)
    lacking = absent.any(axis=1).to_numpy(dtype=bool)
    if not lacking.any():
        return checked
    reasons = ["missing field: " + ", ".join(absent.columns[flags]) for flags in absent.to_numpy(dtype=bool)[lacking]]
    refused = list(zip(rows.index[lacking], rows["email"].to_numpy()[lacking], reasons, strict=True))
    return _Checked(checked.rows_read, rows[~lacking], checked.refused + refused)


def _run_import(
    session: Session,
    campaign: Campaign,
    source: str,
    batches: Iterable[_Batch],
    rejects: RejectsTarget | None,
    now: datetime,
) -> ImportReport:
    """Store batches for a campaign in one transaction: a failed or crashed import leaves no lead behind."""
    lead_import = LeadImport(campaign_id=campaign.id, source=source, started_at=now)
    session.add(lead_import)
    session.flush()
    report_file = RejectsWriter(rejects)
    writer: _LeadWriter | None = None
    try:
        writer = _LeadWriter(session, campaign, lead_import, report_file, now)
        checker = _RowChecker()
        needed = _fields_templates_need(session, campaign)
        # closing(): a store error ends the reading thread now, not when the generator is collected.
        ahead = (writer.prepare(_refuse_missing_fields(checker.check(batch), needed)) for batch in batches)
        with closing(prefetched(ahead, name="lead-rows")) as checked_batches:
            for checked, prepared in checked_batches:
                writer.add(checked, prepared)
        if writer.report.rows_read == 0:
            raise InvalidInputError("The file has a header but no rows.")
        writer.store.finish()
        report = writer.report
        report.rejects_path = report_file.publish()
    except InvalidInputError as error:
        _abandon(writer, report_file, error)
        _fail(session, campaign, source, now, error)
        raise
    except BaseException as error:
        _abandon(writer, report_file, error)
        session.rollback()
        raise
    lead_import.status = ImportStatus.COMPLETED
    lead_import.rows_read, lead_import.accepted, lead_import.rejected = report.rows_read, report.stored, report.rejected
    lead_import.rejects_path = report.rejects_path
    lead_import.finished_at = utcnow()
    if campaign.status == CampaignStatus.ACTIVE:
        schedule_first_jobs(session, campaign, now)
    session.commit()
    return report


def import_leads_csv(
    session: Session,
    campaign: Campaign,
    stream: BinaryIO,
    source: str,
    rejects_path: Path | RejectsTarget | None = None,
    now: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportReport:
    """Ingest a CSV file of leads into a campaign. Commits; raises InvalidInputError for a file that is not a lead list.

    The stream must be seekable: the encoding is decided from the whole file before any row is read.
    """
    rejects = LocalRejects(rejects_path) if isinstance(rejects_path, Path) else rejects_path
    return _run_import(session, campaign, source, _file_batches(stream, chunk_rows), rejects, now or utcnow())


def add_leads(session: Session, campaign: Campaign, rows: list[dict[str, Any]], now: datetime | None = None) -> ImportReport:
    """Store leads given as JSON objects, through the same checks as a file ("line" = position, from 1)."""
    if not rows:
        raise InvalidInputError("No leads given.")
    return _run_import(session, campaign, "api", [_records_batch(rows)], None, now or utcnow())


def copy_leads(session: Session, target: Campaign, source_campaign: Campaign, now: datetime | None = None) -> ImportReport:
    """Copy another campaign's leads (not their progress) through the same dedupe and suppression rules."""
    leads = session.scalars(select(Lead).where(Lead.campaign_id == source_campaign.id).order_by(Lead.id)).all()
    rows = [
        {"email": lead.email, **{f: getattr(lead, f) for f in STANDARD_FIELDS if f != "email"}, **lead.custom_fields}
        for lead in leads
    ]
    if not rows:
        raise InvalidInputError("The source campaign has no leads.")
    return _run_import(session, target, f"campaign:{source_campaign.id}", [_records_batch(rows)], None,
                       now or utcnow())


def list_leads(
    session: Session, campaign: Campaign, status: LeadStatus | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[Lead], int]:
    query = select(Lead).where(Lead.campaign_id == campaign.id)
    if status is not None:
        query = query.where(Lead.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    leads = session.scalars(query.order_by(Lead.id).limit(limit).offset(offset)).all()
    return list(leads), total


