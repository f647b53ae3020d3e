"""Lead ingestion: one path for CSV files (bucket and upload), JSON rows and copies between campaigns.

Every row ends in exactly one place: stored, or rejected with its line number and a reason.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pandera.pandas as pa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.jobs import schedule_first_jobs
from outreach_pipeline.core.lead_schema import (
    LEAD_ROW_SCHEMA,
    STANDARD_FIELDS,
    canonical_header,
    failure_reasons,
)
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.dialect import insert_ignoring_conflicts
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    ImportStatus,
    Lead,
    LeadImport,
    LeadStatus,
    Suppression,
)

CHUNK_ROWS = 50_000
REJECTS_KEPT_IN_REPORT = 100
SNIFF_BYTES = 64 * 1024
# Cells starting with these run as formulas in spreadsheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


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


def new_reply_token() -> str:
    return secrets.token_hex(12)


def normalise_email(raw: str) -> str:
    """Trim and lower-case the domain; the local part keeps its case (some servers care)."""
    local, at, domain = raw.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else raw.strip()


def spreadsheet_safe(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


# --- reading files ---------------------------------------------------------------------------


def _detect_encoding(sample: bytes) -> str:
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(sample) - 4:  # not just a character cut by the sample's end
            return "cp1252"
    return "utf-8-sig"


def _detect_delimiter(text_sample: str) -> str:
    try:
        return csv.Sniffer().sniff(text_sample.split("\n", 1)[0], delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_lead_chunks(stream: BinaryIO, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Read a CSV in chunks of strings with our canonical column names."""
    sample = stream.read(SNIFF_BYTES)
    stream.seek(0)
    if not sample.strip():
        raise InvalidInputError("The file is empty.")
    if b"\x00" in sample and not sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInputError("This is not a CSV file (it contains binary data).")
    encoding = _detect_encoding(sample)
    delimiter = _detect_delimiter(sample.decode(encoding, errors="replace"))
    try:
        reader = pd.read_csv(
            stream, sep=delimiter, encoding=encoding, dtype=str, keep_default_na=False,
            chunksize=chunk_rows, skip_blank_lines=True, on_bad_lines="warn",
        )
        for chunk in reader:
            yield chunk
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise InvalidInputError(f"The file could not be read as CSV: {error}") from error


def _canonical_frame(raw: pd.DataFrame) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}
    for header in raw.columns:
        name = canonical_header(header)
        if str(header).startswith("Unnamed:") and (raw[header].str.strip() == "").all():
            continue  # trailing empty columns that spreadsheets add
        if name in columns:
            if name == "email" or name in STANDARD_FIELDS:
                continue  # the first column of a spelling wins (Apollo has "Company" and "Company Name ...")
            name = f"{name}_{len(columns)}"
        columns[name] = raw[header]
    if "email" not in columns:
        raise InvalidInputError(
            "No email column found. Name one of the columns 'email', 'Email Address', 'E-mail' or 'Work Email'."
        )
    return pd.DataFrame(columns)


# --- storing rows ----------------------------------------------------------------------------


class _LeadWriter:
    """Validates, de-duplicates and stores frames of rows for one campaign, counting every row."""

    def __init__(self, session: Session, campaign: Campaign, lead_import: LeadImport, rejects: Path | None) -> None:
        self.session = session
        self.campaign = campaign
        self.lead_import = lead_import
        self.report = ImportReport(import_id=lead_import.id)
        self.seen: set[str] = set()
        self.rejects_path = rejects
        self._rejects_file: io.TextIOWrapper | None = None
        self._rejects_writer: Any = None

    def add_frame(self, frame: pd.DataFrame, first_line: int) -> None:
        frame = frame.copy()
        frame.index = range(first_line, first_line + len(frame))
        self.report.rows_read += len(frame)
        for column in frame.columns:
            frame[column] = frame[column].astype("string").str.strip().replace("", pd.NA)
        frame["email"] = frame["email"].map(lambda v: normalise_email(v) if isinstance(v, str) else v)

        reasons = self._schema_reasons(frame)
        valid = frame.drop(index=list(reasons))
        for line in list(reasons):
            self._reject(line, frame.at[line, "email"], reasons[line])

        keys = valid["email"].str.lower()
        in_file = keys.duplicated(keep="first") | keys.isin(self.seen)
        for line in valid.index[in_file]:
            self._reject(line, valid.at[line, "email"], "duplicate in file")
        valid, keys = valid[~in_file], keys[~in_file]
        self.seen.update(keys)

        existing = self._existing_keys(list(keys))
        suppressed = self._suppressed(list(keys))
        for line, key in keys.items():
            if key in existing:
                self._reject(line, valid.at[line, "email"], "already in campaign")
            elif key in suppressed:
                self._reject(line, valid.at[line, "email"], "suppressed")
        keep = ~keys.isin(existing | suppressed)
        self._insert(valid[keep], keys[keep])

    def _schema_reasons(self, frame: pd.DataFrame) -> dict[int, str]:
        try:
            LEAD_ROW_SCHEMA.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as errors:
            return failure_reasons(errors.failure_cases)
        return {}

    def _existing_keys(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(keys, 5000):
            found.update(self.session.scalars(
                select(Lead.email_key).where(Lead.campaign_id == self.campaign.id, Lead.email_key.in_(batch))
            ))
        return found

    def _suppressed(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(keys, 5000):
            found.update(self.session.scalars(
                select(Suppression.email).where(
                    Suppression.owner_id == self.campaign.owner_id, Suppression.email.in_(batch)
                )
            ))
        return found

    def _insert(self, rows: pd.DataFrame, keys: pd.Series) -> None:
        if rows.empty:
            return
        custom_columns = [c for c in rows.columns if c not in STANDARD_FIELDS]
        records = []
        for (_, row), key in zip(rows.iterrows(), keys, strict=True):
            custom = {c: row[c] for c in custom_columns if not pd.isna(row[c])}
            records.append({
                "campaign_id": self.campaign.id,
                "email": row["email"],
                "email_key": key,
                **{f: (None if pd.isna(row.get(f, pd.NA)) else row[f]) for f in STANDARD_FIELDS if f != "email"},
                "custom_fields": custom,
                "status": LeadStatus.PENDING,
                "reply_token": new_reply_token(),
                "import_id": self.lead_import.id,
                "created_at": utcnow(),
            })
        statement = insert_ignoring_conflicts(self.session, Lead, ["campaign_id", "email_key"])
        # RETURNING counts what really landed: a concurrent import may have stored some addresses first.
        stored = len(self.session.connection().execute(statement.returning(Lead.__table__.c.id), records).all())
        self.report.stored += stored
        lost = len(records) - stored
        if lost:
            self.report.rejected += lost
            self.report.reasons["already in campaign"] += lost

    def _reject(self, line: int, email: Any, reason: str) -> None:
        email_text = "" if email is None or pd.isna(email) else str(email)
        self.report.rejected += 1
        self.report.reasons[reason] += 1
        if len(self.report.first_rejects) < REJECTS_KEPT_IN_REPORT:
            self.report.first_rejects.append(RejectedRow(line, email_text, reason))
        if self.rejects_path is not None:
            if self._rejects_writer is None:
                self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
                self._rejects_file = open(self.rejects_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
                self._rejects_writer = csv.writer(self._rejects_file)
                self._rejects_writer.writerow(["line", "email", "reason"])
                self.report.rejects_path = str(self.rejects_path)
            self._rejects_writer.writerow([line, spreadsheet_safe(email_text), reason])

    def close(self) -> None:
        if self._rejects_file is not None:
            self._rejects_file.close()


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_import(
    session: Session,
    campaign: Campaign,
    source: str,
    frames: Iterable[tuple[pd.DataFrame, int]],
    rejects_path: Path | None,
    now: datetime,
) -> ImportReport:
    """Store frames for a campaign in one transaction; a failed import leaves only its FAILED record."""
    lead_import = LeadImport(campaign_id=campaign.id, source=source, started_at=now)
    session.add(lead_import)
    session.flush()
    writer = _LeadWriter(session, campaign, lead_import, rejects_path)
    try:
        for frame, first_line in frames:
            writer.add_frame(frame, first_line)
        if writer.report.rows_read == 0:
            raise InvalidInputError("The file has a header but no rows.")
    except InvalidInputError as error:
        writer.close()
        session.rollback()
        failed = LeadImport(campaign_id=campaign.id, source=source, status=ImportStatus.FAILED,
                            error=error.message, started_at=now, finished_at=utcnow())
        session.add(failed)
        session.commit()
        error.details = {"import_id": failed.id}
        raise
    writer.close()
    report = writer.report
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
    rejects_path: Path | None = None,
    now: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportReport:
    """Ingest a CSV file of leads into a campaign. Commits; raises InvalidInputError for a file that is not a lead list."""

    def frames() -> Iterator[tuple[pd.DataFrame, int]]:
        line = 2  # line 1 is the header
        for chunk in read_lead_chunks(stream, chunk_rows):
            yield _canonical_frame(chunk), line
            line += len(chunk)

    return _run_import(session, campaign, source, frames(), rejects_path, now or utcnow())


def add_leads(session: Session, campaign: Campaign, rows: list[dict[str, Any]], now: datetime | None = None) -> ImportReport:
    """Store leads given as JSON objects, through the same checks as a file ("line" = position, from 1)."""
    if not rows:
        raise InvalidInputError("No leads given.")
    frame = _canonical_frame(pd.DataFrame([{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows]))
    return _run_import(session, campaign, "api", [(frame, 1)], None, now or utcnow())


def copy_leads(session: Session, target: Campaign, source_campaign: Campaign, now: datetime | None = None) -> ImportReport:
    """Copy another campaign's leads (not their progress) through the same dedupe and suppression rules."""
    leads = session.scalars(select(Lead).where(Lead.campaign_id == source_campaign.id).order_by(Lead.id)).all()
    rows = [
        {"email": lead.email, **{f: getattr(lead, f) for f in STANDARD_FIELDS if f != "email"}, **lead.custom_fields}
        for lead in leads
    ]
    if not rows:
        raise InvalidInputError("The source campaign has no leads.")
    frame = _canonical_frame(pd.DataFrame(rows).fillna("").astype(str))
    return _run_import(session, target, f"campaign:{source_campaign.id}", [(frame, 1)], None, now or utcnow())


def list_leads(
    session: Session, campaign: Campaign, status: LeadStatus | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[Lead], int]:
    query = select(Lead).where(Lead.campaign_id == campaign.id)
    if status is not None:
        query = query.where(Lead.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    leads = session.scalars(query.order_by(Lead.id).limit(limit).offset(offset)).all()
    return list(leads), total


def lead_fields(session: Session, campaign: Campaign, sample: int = 1000) -> list[str]:
    """Fields templates may use: the standard ones and custom fields seen among the campaign's leads."""
    custom: set[str] = set()
    for fields in session.scalars(select(Lead.custom_fields).where(Lead.campaign_id == campaign.id).limit(sample)):
        custom.update(fields or {})
    return [f for f in STANDARD_FIELDS if f != "timezone"] + sorted(custom)
