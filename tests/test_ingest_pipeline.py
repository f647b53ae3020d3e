"""The ingest pipeline beyond one file: asset checks, metadata, and a crash in the middle of an import.

The checks run inside the real `ingest_leads_job` (the job the bucket sensor starts), resolved from a
Definitions object wired like `definitions.py`, on a real Dagster instance.
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, DagsterInstance, Definitions, ExecuteInProcessResult, instance_for_test
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.assets.leads import lead_file_import, lead_files
from outreach_pipeline.checks import campaign_size_limit, lead_file_reject_rate
from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign
from outreach_pipeline.core.lead_schema import STANDARD_FIELDS
from outreach_pipeline.core import lead_store
from outreach_pipeline.core.lead_store import StoreTarget, lead_store_for
from outreach_pipeline.core.leads import add_leads, import_leads_csv
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import Campaign, ImportStatus, Lead, LeadImport, Suppression, User
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.jobs import ingest_leads_job
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.settings import Settings
from tests.fixtures import PROVIDER_FIXTURES

DATA = Path(__file__).parent / "data" / "ingest"
SHARED = PROVIDER_FIXTURES / "leads"


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(settings.database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def campaign_id(sessions: sessionmaker[Session]) -> int:
    with session_scope(sessions) as session:
        owner = User(email=f"operator-{uuid.uuid4().hex[:6]}@company.example")
        session.add(owner)
        session.flush()
        return create_campaign(session, owner.id, CampaignCreate(name="Freight analytics")).id


def _drop(settings: Settings, campaign_id: int, source: Path, instance: DagsterInstance) -> str:
    folder = Path(settings.leads_bucket) / str(campaign_id)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{source.stem}-{uuid.uuid4().hex[:8]}{source.suffix}"
    shutil.copy(source, folder / name)
    key = f"{campaign_id}/{name}"
    instance.add_dynamic_partitions(lead_files.name, [key])
    return key


def _run_job(settings: Settings, instance: DagsterInstance, key: str,
             check_config: dict[str, dict[str, Any]] | None = None) -> ExecuteInProcessResult:
    defs = Definitions(assets=[lead_file_import], asset_checks=[lead_file_reject_rate, campaign_size_limit],
                       jobs=[ingest_leads_job], resources=resources_from_settings(settings))
    ops = {check.node_def.name: {"config": config}
           for check, config in zip((lead_file_reject_rate, campaign_size_limit),
                                    ((check_config or {}).get("reject_rate", {}),
                                     (check_config or {}).get("campaign_size", {})), strict=True)}
    return defs.resolve_job_def("ingest_leads_job").execute_in_process(
        partition_key=key, instance=instance, run_config={"ops": ops})


def _checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_the_ingest_job_runs_both_checks_and_passes_a_clean_file(
    settings: Settings, instance: DagsterInstance, campaign_id: int
) -> None:
    key = _drop(settings, campaign_id, SHARED / "apollo_export.csv", instance)

    result = _run_job(settings, instance, key)

    assert result.success
    (materialization,) = result.asset_materializations_for_node("lead_file_import")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["rows_read"], metadata["stored"], metadata["rejected"]) == (8, 6, 2)
    assert metadata["rejected_by_reason"] == {"invalid email": 1, "duplicate in file": 1}
    assert isinstance(metadata["duration_s"], float) and 0 <= metadata["duration_s"] < 60
    checks = _checks(result)
    assert set(checks) == {"lead_file_reject_rate", "campaign_size_limit"}
    rate = checks["lead_file_reject_rate"]
    # One bad address in 8 rows; the duplicate is the rules working and does not count.
    assert (rate.passed, rate.metadata["invalid_share"].value, rate.metadata["invalid_by_reason"].value) == (
        True, 0.125, {"invalid email": 1})
    assert rate.target_materialization_data is not None
    size = checks["campaign_size_limit"]
    assert (size.passed, size.metadata["campaign_leads"].value, size.metadata["limit"].value) == (True, 6, 100_000)


def test_the_reject_rate_check_warns_on_a_file_that_is_mostly_bad(
    settings: Settings, instance: DagsterInstance, campaign_id: int, tmp_path: Path
) -> None:
    bad = tmp_path / "mostly-bad.csv"
    bad.write_text("email,first_name\nann@good.example,Ann\nnot-an-address,Bo\n@nobody.example,Cy\n"
                   ",Di\nbo@good.example,Bo\n", encoding="utf-8")
    key = _drop(settings, campaign_id, bad, instance)

    result = _run_job(settings, instance, key, {"reject_rate": {"max_invalid_share": 0.5}})

    assert result.success  # a check warns; the import itself stored what it could
    rate = _checks(result)["lead_file_reject_rate"]
    assert (rate.passed, rate.severity) == (False, AssetCheckSeverity.WARN)
    assert rate.metadata["invalid_share"].value == 0.6
    assert rate.metadata["invalid_by_reason"].value == {"invalid email": 2, "missing email": 1}
    assert rate.description == "3 of 5 rows failed validation (60.0%; threshold 50%)"
    assert _checks(result)["campaign_size_limit"].passed


def test_the_size_check_warns_when_an_import_pushes_the_campaign_over_its_limit(
    settings: Settings, instance: DagsterInstance, campaign_id: int
) -> None:
    first = _drop(settings, campaign_id, SHARED / "hubspot_export.csv", instance)
    under = _checks(_run_job(settings, instance, first, {"campaign_size": {"max_campaign_leads": 5}}))
    assert (under["campaign_size_limit"].passed, under["campaign_size_limit"].metadata["campaign_leads"].value) == (
        True, 4)

    second = _drop(settings, campaign_id, SHARED / "apollo_export.csv", instance)
    over = _checks(_run_job(settings, instance, second, {"campaign_size": {"max_campaign_leads": 5}}))

    size = over["campaign_size_limit"]
    assert (size.passed, size.severity) == (False, AssetCheckSeverity.WARN)
    assert size.description == f"campaign {campaign_id} holds 10 leads (limit 5)"


class _ReadStream(io.BytesIO):
    """A file whose every way of reading goes through `read`, which subclasses change."""

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: Any) -> int:
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


class FailingStream(_ReadStream):
    """A file whose reading fails part-way through the rows, as a disk or network read can."""

    def __init__(self, data: bytes, fail_after_second_pass_bytes: int) -> None:
        super().__init__(data)
        self.size = len(data)
        self.budget = self.size + fail_after_second_pass_bytes  # the encoding scan reads the file once first
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        block = super().read(size)
        self.consumed += len(block)
        if self.consumed > self.budget:
            raise OSError("connection reset while reading the lead file")
        return block


def test_a_crash_in_the_middle_of_an_import_stores_nothing_and_a_rerun_stores_each_lead_once(
    sessions: sessionmaker[Session], campaign_id: int, tmp_path: Path
) -> None:
    rows = "".join(f"lead{n}@crash.example,Lead {n}\n" for n in range(3000))
    data = f"email,first_name\n{rows}".encode()
    rejects = tmp_path / "rejected" / "crash.rejects.csv"

    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        # Chunks of 500 rows: several chunks are already inserted (in the open transaction) when reading fails.
        with pytest.raises(OSError, match="connection reset"):
            import_leads_csv(session, campaign, FailingStream(data, len(data) // 2), "bucket:crash",
                             rejects_path=rejects, chunk_rows=500)
    with session_scope(sessions) as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
        assert session.scalar(select(func.count()).select_from(LeadImport)) == 0
    assert not rejects.parent.exists() or list(rejects.parent.iterdir()) == []

    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        rerun = import_leads_csv(session, campaign, io.BytesIO(data + b"LEAD7@CRASH.EXAMPLE,Again\n"),
                                 "bucket:crash", rejects_path=rejects, chunk_rows=500)
    assert (rerun.rows_read, rerun.stored, rerun.rejected, dict(rerun.reasons)) == (
        3001, 3000, 1, {"duplicate in file": 1})
    with session_scope(sessions) as session:
        again = import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data),
                                 "bucket:crash", chunk_rows=500)
        assert (again.stored, dict(again.reasons)) == (0, {"already in campaign": 3000})
        assert session.scalar(select(func.count()).select_from(Lead)) == 3000
        assert session.scalar(select(func.count(func.distinct(Lead.email_key)))) == 3000
        assert [i.status for i in session.scalars(select(LeadImport).order_by(LeadImport.id))] == [
            ImportStatus.COMPLETED, ImportStatus.COMPLETED]
    assert rejects.read_text(encoding="utf-8").splitlines() == [
        "line,email,reason", "3002,LEAD7@crash.example,duplicate in file"]


class SlowStream(_ReadStream):
    """A file that arrives slowly, a few KB at a time, as from a slow disk or network."""

    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.01)
        return super().read(min(size, 8192) if size is not None and size >= 0 else 8192)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_import_outlasting_the_statement_timeout_still_lands(sessions: sessionmaker[Session],
                                                                 campaign_id: int) -> None:
    """The import's single COPY lasts as long as the file takes to read: a statement timeout meant for
    queries must not end it. The timeout is lifted for the import's transaction only."""
    rows = "".join(f"lead{n}@slow.example,Lead {n}\n" for n in range(4000))
    with session_scope(sessions) as session:
        session.execute(text("SET statement_timeout = '100ms'"))  # for the connection, as a role setting would
        started = time.perf_counter()
        report = import_leads_csv(session, session.get_one(Campaign, campaign_id),
                                  SlowStream(f"email,first_name\n{rows}".encode()), "slow", chunk_rows=500)
        assert time.perf_counter() - started > 0.3  # several times the timeout
        assert report.stored == 4000
        assert session.scalar(text("SHOW statement_timeout")) == "100ms"  # back once the import committed
        session.execute(text("RESET statement_timeout"))


def test_repeats_are_found_across_many_chunks(sessions: sessionmaker[Session], campaign_id: int) -> None:
    """Addresses of earlier chunks are kept as hashes in sorted runs, merged now and then: a repeat is
    found whichever run holds the first one."""
    rows = [f"lead{n}@many.example" for n in range(2000)]
    repeats = [rows[n].upper() for n in (0, 150, 999, 1990)] + ["lead5@MANY.example"]
    data = ("email\n" + "\n".join(rows[:1000] + repeats[:2] + rows[1000:] + repeats[2:]) + "\n").encode()
    with session_scope(sessions) as session:
        report = import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "bucket:many",
                                  chunk_rows=100)  # 21 chunks: several merges of the runs
    assert (report.rows_read, report.stored, dict(report.reasons)) == (2005, 2000, {"duplicate in file": 5})


def test_a_blank_line_where_a_chunk_ends_is_skipped(sessions: sessionmaker[Session], campaign_id: int) -> None:
    data = b"email,name\na@x.example,A\nb@x.example,B\n\nc@x.example,C\n\n"  # blank lines 4 and 6
    with session_scope(sessions) as session:
        report = import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "api:blank",
                                  chunk_rows=2)  # the first chunk's last record read is the blank line 4
    assert (report.rows_read, report.stored, report.rejected) == (3, 3, 0)


def test_an_address_both_in_the_campaign_and_suppressed_is_reported_as_suppressed(
    sessions: sessionmaker[Session], campaign_id: int
) -> None:
    data = b"email\nann@one.example\nbo@two.example\n"
    with session_scope(sessions) as session:
        assert import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "api").stored == 2
    with session_scope(sessions) as session:
        owner_id = session.get_one(Campaign, campaign_id).owner_id
        session.add(Suppression(owner_id=owner_id, email="ann@one.example", reason="unsubscribe"))

    with session_scope(sessions) as session:
        again = import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "api")

    # The stronger fact wins: the address must never be mailed, whichever campaign holds it.
    assert [(r.line, r.email, r.reason) for r in again.first_rejects] == [
        (2, "ann@one.example", "suppressed"), (3, "bo@two.example", "already in campaign")]


def test_a_campaign_s_addresses_and_suppressions_read_in_many_batches_refuse_each_their_own(
    sessions: sessionmaker[Session], campaign_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads what the campaign holds and what its owner suppressed once, a batch at a time, into
    sorted runs of hashes that merge as they grow: every one of them must refuse its address, and no other."""
    monkeypatch.setattr(lead_store, "KEYS_READ_PER_BATCH", 3)  # 40 addresses: 14 batches, runs merged
    held = [f"held{n}@many.example" for n in range(40)]
    with session_scope(sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert add_leads(session, campaign, [{"email": email} for email in held]).stored == 40
        session.add_all(Suppression(owner_id=campaign.owner_id, email=f"gone{n}@many.example", reason="unsubscribe")
                        for n in range(20))

    fresh = [f"new{n}@many.example" for n in range(30)]
    emails = [held[n].upper() for n in range(0, 40, 3)] + [f"gone{n}@many.example" for n in range(0, 20, 2)] + fresh
    with session_scope(sessions) as session:
        report = import_leads_csv(session, session.get_one(Campaign, campaign_id),
                                  io.BytesIO(("email\n" + "\n".join(emails) + "\n").encode()), "api", chunk_rows=7)
    assert (report.stored, dict(report.reasons)) == (30, {"already in campaign": 14, "suppressed": 10})
    with session_scope(sessions) as session:
        stored = set(session.scalars(select(Lead.email_key).where(Lead.import_id == report.import_id)))
    assert stored == set(fresh)


def test_json_leads_with_lone_surrogates_are_refused_or_stored_never_crash(
    sessions: sessionmaker[Session], campaign_id: int
) -> None:
    """JSON can carry a lone surrogate (\\ud800) that no database text column can hold."""
    with session_scope(sessions) as session:
        report = add_leads(session, session.get_one(Campaign, campaign_id), [
            {"email": "\ud800"}, {"email": "ann@one.example", "note": "caf\ud800", "\ud800": "x"}])

    assert [(r.line, r.reason) for r in report.first_rejects] == [(1, "invalid email")]
    with session_scope(sessions) as session:
        lead = session.scalars(select(Lead)).one()
        assert (lead.email, lead.custom_fields) == ("ann@one.example", {"note": "caf?", "column": "x"})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_imports_of_one_address_at_once_store_it_once_and_the_second_says_why(
    sessions: sessionmaker[Session], campaign_id: int
) -> None:
    """Imports into one campaign take turns: the second waits for the first to commit, then finds its rows."""
    data = b"email,first name\nann@one.example,Ann\nbo@two.example,Bo\ncy@three.example,Cy\n"
    first = sessions()
    try:
        # The first import's rows are written but not yet committed when the second import starts.
        campaign = first.get_one(Campaign, campaign_id)
        held = LeadImport(campaign_id=campaign_id, source="first")
        first.add(held)
        first.flush()
        store = lead_store_for(first, StoreTarget(campaign_id, campaign.owner_id, held.id, utcnow()))
        rows = pd.DataFrame({"email": ["ann@one.example", "bo@two.example"], "first_name": ["Ann", "Bo"]},
                            index=pd.Index([2, 3], name="line"))
        for field in STANDARD_FIELDS:
            rows[field] = rows.get(field, pd.Series([None, None], index=rows.index, dtype=object))
        assert store.store(store.prepare(rows.assign(email_key=rows["email"]))).stored == 2
        store.finish()

        def second_import() -> Any:
            with session_scope(sessions) as session:
                return import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "second")

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(second_import)
            time.sleep(0.5)
            assert not pending.done()  # waiting for the first import
            first.commit()
            report = pending.result(timeout=30)
    finally:
        first.close()

    assert report.stored == 1
    assert [(r.line, r.email, r.reason) for r in report.first_rejects] == [
        (2, "ann@one.example", "already in campaign"), (3, "bo@two.example", "already in campaign")]
    with session_scope(sessions) as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 3


def test_custom_fields_keep_their_values_and_drop_empty_cells_on_both_databases(
    sessions: sessionmaker[Session], campaign_id: int
) -> None:
    # Values that look like the JSON the PostgreSQL path builds and strips must come back as written.
    data = ('email,city,note,website\n'
            'ann@one.example,Austin,"she said ""x"":null, twice",http://one.example/a\n'
            'bo@two.example,,"two\nlines",\n'
            'cy@three.example,,,\n').encode()
    with session_scope(sessions) as session:
        assert import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "api").stored == 3
    with session_scope(sessions) as session:
        fields = dict(session.execute(select(Lead.email, Lead.custom_fields)).tuples().all())
    assert fields == {
        "ann@one.example": {"city": "Austin", "note": 'she said "x":null, twice', "website": "http://one.example/a"},
        "bo@two.example": {"note": "two\nlines"},
        "cy@three.example": {},
    }


def test_backslashes_tabs_and_copy_markers_come_back_as_written_on_both_databases(
    sessions: sessionmaker[Session], campaign_id: int
) -> None:
    """PostgreSQL gets the rows in COPY's text format, where a backslash starts an escape, \\N is NULL and
    a line holding only \\. ends the data: values holding them must land unchanged."""
    data = ('email,first_name,company,note,path\n'
            'ann@one.example,\\N,Back\\slash & Co,"a\ttab \\t and \\n",C:\\temp\\new\n'
            'bo@two.example,Bo,\\.,\\.,"\\"""\n').encode()
    with session_scope(sessions) as session:
        assert import_leads_csv(session, session.get_one(Campaign, campaign_id), io.BytesIO(data), "api").stored == 2
    with session_scope(sessions) as session:
        leads = {lead.email: lead for lead in session.scalars(select(Lead))}
        assert (leads["ann@one.example"].first_name, leads["ann@one.example"].company) == ("\\N", "Back\\slash & Co")
        assert leads["ann@one.example"].custom_fields == {"note": "a\ttab \\t and \\n", "path": "C:\\temp\\new"}
        assert (leads["bo@two.example"].company, leads["bo@two.example"].custom_fields) == (
            "\\.", {"note": "\\.", "path": '\\"'})
        assert leads["bo@two.example"].last_name is None  # a missing value is NULL, not the text \N
