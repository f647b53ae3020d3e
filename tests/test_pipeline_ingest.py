"""The ingest door: the bucket sensor and the `lead_file_import` asset, on the real Dagster machinery.

A CSV dropped under `<bucket>/<campaign_id>/` is seen by `leads_bucket_sensor`, which asks for one run per
file version and for the file's dynamic partition; materialising `lead_file_import` for that partition stores
the clean rows in the app database, moves the file to `processed/` and writes the rejects to `rejected/`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    ExecuteInProcessResult,
    InputContext,
    IOManager,
    OutputContext,
    SensorResult,
    SkipReason,
    build_sensor_context,
    check_dagster_type,
    instance_for_test,
    materialize,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.assets.leads import lead_file_import, lead_files
from outreach_pipeline.core.auth import request_magic_link, verify_magic_link
from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign
from outreach_pipeline.core.lead_schema import LEAD_ROW_SCHEMA
from outreach_pipeline.db.models import ImportStatus, Lead, LeadImport
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.sensors import leads_bucket_sensor
from outreach_pipeline.settings import Settings
from tests.fixtures import PROVIDER_FIXTURES, latest_outbox_token

LEADS = PROVIDER_FIXTURES / "leads"

HUBSPOT_STORED = [
    "elena.petrova@vostok-soft.com",
    "fatima.zahra@atlasbuild.ma",
    "info@acme-widgets.com",
    "jwhitfield@meridianhealth.org",
]
APOLLO_STORED = [
    "SARAH@harborandpine.com",  # the local part keeps its case, the domain is lower-cased
    "dreyes@northwindfreight.com",
    "lucas@tropa.digital",
    "maya.okafor@brightloop.io",
    "priya@kestrellabs.ai",
    "t.becker@alpenhof-logistik.de",
]
NO_EMAIL_COLUMN = (
    "No email column found. Name one of the columns 'email', 'Email Address', 'E-mail' or 'Work Email'."
)


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    """One Dagster instance for the module; every test uses its own file names, so partitions never clash."""
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@dataclass
class Pipeline:
    settings: Settings
    sessions: sessionmaker[Session]
    resources: dict[str, Any]
    bucket: Path
    campaign_id: int

    def drop(self, fixture: str, name: str, campaign_id: int | None = None) -> tuple[str, Path]:
        """Copy a fixture CSV into the bucket under a campaign folder; returns its key and path."""
        folder = self.bucket / str(self.campaign_id if campaign_id is None else campaign_id)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(LEADS / fixture, folder / name)
        return f"{folder.name}/{name}", folder / name

    def sense(self, instance: DagsterInstance) -> SensorResult | SkipReason:
        with build_sensor_context(instance=instance, resources=self.resources) as context:
            return leads_bucket_sensor(context)

    def ingest(self, instance: DagsterInstance, key: str, raise_on_error: bool = True) -> ExecuteInProcessResult:
        return materialize([lead_file_import], partition_key=key, instance=instance, resources=self.resources,
                           raise_on_error=raise_on_error)

    def stored_emails(self) -> list[str]:
        with session_scope(self.sessions) as session:
            return sorted(session.scalars(select(Lead.email).where(Lead.campaign_id == self.campaign_id)))


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    """An operator (signed in by magic link) with one DRAFT campaign, and the resources Dagster gets."""
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    outbox = settings.data_dir / "sign-in-outbox"
    with session_scope(sessions) as session:
        request_magic_link(session, FileOutbox(outbox), "operator@company.example",
                           frontend_url=settings.frontend_url, from_email=settings.from_email)
    with session_scope(sessions) as session:
        owner = verify_magic_link(session, latest_outbox_token(outbox))
        campaign = create_campaign(session, owner.id, CampaignCreate(name="Freight analytics"))
        campaign_id = campaign.id
    try:
        yield Pipeline(settings, sessions, resources_from_settings(settings), Path(settings.leads_bucket),
                       campaign_id)
    finally:
        engine.dispose()


def _unique(name: str) -> str:
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}-{uuid.uuid4().hex[:8]}.{suffix}"


def _metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node("lead_file_import")
    return {key: value.value for key, value in materialization.metadata.items()}


def _failure_description(result: ExecuteInProcessResult) -> str:
    failure = result.failure_data_for_node("lead_file_import")
    assert failure is not None and failure.user_failure_data is not None
    return failure.user_failure_data.description or ""


def test_sensor_requests_a_run_per_file_version_and_the_asset_stores_the_file(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    name = _unique("hubspot.csv")
    key, path = pipeline.drop("hubspot_export.csv", name)
    stat = path.stat()

    result = pipeline.sense(instance)

    assert isinstance(result, SensorResult)
    assert [(r.run_key, r.partition_key) for r in result.run_requests] == [
        (f"{key}@{stat.st_size}-{stat.st_mtime_ns}", key)
    ]
    assert result.dynamic_partitions_requests == [
        AddDynamicPartitionsRequest(partitions_def_name="lead_files", partition_keys=[key])
    ]

    (add,) = result.dynamic_partitions_requests
    instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    assert key in instance.get_dynamic_partitions(lead_files.name)
    ingest = pipeline.ingest(instance, result.run_requests[0].partition_key)

    assert ingest.success
    rejects = pipeline.bucket / str(pipeline.campaign_id) / "rejected" / name.replace(".csv", ".rejects.csv")
    with session_scope(pipeline.sessions) as session:
        lead_import = session.scalars(select(LeadImport).where(LeadImport.campaign_id == pipeline.campaign_id)).one()
        assert (lead_import.status, lead_import.source, lead_import.rows_read, lead_import.accepted,
                lead_import.rejected, lead_import.rejects_path) == (
            ImportStatus.COMPLETED, f"bucket:{key}", 5, 4, 1, str(rejects))
        import_id = lead_import.id
    metadata = _metadata(ingest)
    assert {k: metadata[k] for k in ("campaign_id", "import_id", "rows_read", "stored", "rejected",
                                     "rejected_by_reason", "rejects_report")} == {
        "campaign_id": pipeline.campaign_id,
        "import_id": import_id,
        "rows_read": 5,
        "stored": 4,
        "rejected": 1,
        "rejected_by_reason": {"invalid email": 1},
        "rejects_report": str(rejects),
    }
    assert pipeline.stored_emails() == HUBSPOT_STORED

    # The materialization is recorded on the instance for this partition.
    latest = instance.get_latest_materialization_event(AssetKey("lead_file_import"))
    assert latest is not None and latest.asset_materialization is not None
    assert latest.asset_materialization.partition == key

    # The file moved aside, untouched; the rejects report names the line and the reason.
    assert not path.exists()
    processed = pipeline.bucket / str(pipeline.campaign_id) / "processed" / name
    assert processed.read_bytes() == (LEADS / "hubspot_export.csv").read_bytes()
    assert rejects.read_text(encoding="utf-8").splitlines() == [
        "line,email,reason",
        "5,chen.wei@@lotusfin.cn,invalid email",
    ]

    # Nothing is waiting any more.
    again = pipeline.sense(instance)
    assert isinstance(again, SkipReason)
    assert again.skip_message == f"no lead files waiting in {pipeline.bucket}"


def test_a_reupload_with_new_content_gets_a_new_run_key_and_stores_only_the_new_rows(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    name = _unique("hubspot.csv")
    key, path = pipeline.drop("hubspot_export.csv", name)
    first = pipeline.sense(instance)
    assert isinstance(first, SensorResult)
    instance.add_dynamic_partitions(lead_files.name, [key])
    assert _metadata(pipeline.ingest(instance, key))["stored"] == 4

    # The same file name again, one row longer (so a different size) and with a later mtime.
    content = (LEADS / "hubspot_export.csv").read_text(encoding="utf-8")
    path.write_text(content.rstrip("\n") + "\n506,Noor,Haddad,noor@cedarworks.io,Cedar Works,COO,,Lead,"
                    "2026-09-18 11:00\n", encoding="utf-8")
    first_mtime = (pipeline.bucket / str(pipeline.campaign_id) / "processed" / name).stat().st_mtime_ns
    later = first_mtime + 5_000_000_000
    os.utime(path, ns=(later, later))
    stat = path.stat()

    second = pipeline.sense(instance)

    assert isinstance(second, SensorResult)
    assert [(r.run_key, r.partition_key) for r in second.run_requests] == [
        (f"{key}@{stat.st_size}-{later}", key)
    ]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert second.dynamic_partitions_requests == []  # the partition exists already

    metadata = _metadata(pipeline.ingest(instance, key))
    assert (metadata["rows_read"], metadata["stored"], metadata["rejected"]) == (6, 1, 5)
    assert metadata["rejected_by_reason"] == {"already in campaign": 4, "invalid email": 1}
    assert pipeline.stored_emails() == sorted([*HUBSPOT_STORED, "noor@cedarworks.io"])
    assert not path.exists()
    assert (pipeline.bucket / str(pipeline.campaign_id) / "processed" / name).read_text(encoding="utf-8").endswith(
        "noor@cedarworks.io,Cedar Works,COO,,Lead,2026-09-18 11:00\n")


def test_a_new_version_without_rejects_takes_the_old_report_away_and_sweeps_abandoned_scratch_files(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    name = _unique("hubspot.csv")
    key, path = pipeline.drop("hubspot_export.csv", name)  # one invalid address: a report
    rejected = pipeline.bucket / str(pipeline.campaign_id) / "rejected"
    report = rejected / f"{name.rsplit('.', 1)[0]}.rejects.csv"
    instance.add_dynamic_partitions(lead_files.name, [key])
    assert _metadata(pipeline.ingest(instance, key))["rejects_report"] == str(report)
    # What a killed import leaves: its scratch report. An old one is swept, a fresh one may be another
    # import's, still writing.
    abandoned, fresh = rejected / f".{report.name}.dead0001.part", rejected / f".{report.name}.live0001.part"
    abandoned.write_text("line,email,reason\n")
    fresh.write_text("line,email,reason\n")
    two_hours_ago = abandoned.stat().st_mtime - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))

    path.write_text("email,first_name\nnew.lead@cedarworks.io,Noor\n", encoding="utf-8")  # nothing to reject
    later = report.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))
    metadata = _metadata(pipeline.ingest(instance, key))

    assert (metadata["stored"], metadata["rejected"], metadata["rejects_report"]) == (1, 0, None)
    assert not report.exists()  # the report said what the previous version lost, not this one
    assert not abandoned.exists()
    assert fresh.exists()


def test_rematerialising_a_processed_partition_stores_no_duplicates(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    key, _ = pipeline.drop("apollo_export.csv", _unique("apollo.csv"))
    instance.add_dynamic_partitions(lead_files.name, [key])
    first = _metadata(pipeline.ingest(instance, key))
    assert (first["rows_read"], first["stored"], first["rejected"]) == (8, 6, 2)
    assert first["rejected_by_reason"] == {"invalid email": 1, "duplicate in file": 1}
    assert pipeline.stored_emails() == sorted(APOLLO_STORED)

    # An operator re-runs the partition from the Dagster UI: the file is read again from processed/.
    again = _metadata(pipeline.ingest(instance, key))

    assert (again["rows_read"], again["stored"], again["rejected"]) == (8, 0, 8)
    assert again["rejected_by_reason"] == {"already in campaign": 6, "invalid email": 1, "duplicate in file": 1}
    assert pipeline.stored_emails() == sorted(APOLLO_STORED)
    with session_scope(pipeline.sessions) as session:
        imports = session.scalars(
            select(LeadImport).where(LeadImport.campaign_id == pipeline.campaign_id).order_by(LeadImport.id)
        ).all()
        assert [(i.status, i.accepted, i.rejected) for i in imports] == [
            (ImportStatus.COMPLETED, 6, 2), (ImportStatus.COMPLETED, 0, 8)]


def test_a_file_for_a_campaign_that_does_not_exist_fails_the_run_and_stores_nothing(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    missing = pipeline.campaign_id + 1000
    key, path = pipeline.drop("hubspot_export.csv", _unique("hubspot.csv"), campaign_id=missing)
    sensed = pipeline.sense(instance)
    assert isinstance(sensed, SensorResult)
    assert [r.partition_key for r in sensed.run_requests] == [key]
    instance.add_dynamic_partitions(lead_files.name, [key])

    result = pipeline.ingest(instance, key, raise_on_error=False)

    assert not result.success
    assert _failure_description(result) == (
        f"{key}: there is no campaign {missing}; put the file under an existing campaign id."
    )
    assert result.asset_materializations_for_node("lead_file_import") == []
    with session_scope(pipeline.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
        assert session.scalar(select(func.count()).select_from(LeadImport)) == 0
    # Left where it was, for the operator to move under the right campaign.
    assert path.is_file()
    assert not (pipeline.bucket / str(missing) / "processed").exists()


def test_a_file_without_an_email_column_fails_the_run_with_the_reason_and_stores_nothing(
    pipeline: Pipeline, instance: DagsterInstance
) -> None:
    name = _unique("contacts.csv")
    folder = pipeline.bucket / str(pipeline.campaign_id)
    folder.mkdir(parents=True)
    (folder / name).write_text("First Name,Company\nAda,Lovelace Ltd\nGrace,Hopper Systems\n", encoding="utf-8")
    key = f"{pipeline.campaign_id}/{name}"
    instance.add_dynamic_partitions(lead_files.name, [key])

    result = pipeline.ingest(instance, key, raise_on_error=False)

    assert not result.success
    assert _failure_description(result) == f"{key}: {NO_EMAIL_COLUMN}"
    assert result.asset_materializations_for_node("lead_file_import") == []
    assert pipeline.stored_emails() == []
    with session_scope(pipeline.sessions) as session:
        failed = session.scalars(select(LeadImport)).one()
        assert (failed.status, failed.error, failed.accepted, failed.source) == (
            ImportStatus.FAILED, NO_EMAIL_COLUMN, 0, f"bucket:{key}")
    failure = result.failure_data_for_node("lead_file_import")
    assert failure is not None and failure.user_failure_data is not None
    assert failure.user_failure_data.metadata["import_id"].value == failed.id
    # Moved aside so it is not retried; there are no row rejects to report.
    assert not (folder / name).exists()
    assert (folder / "processed" / name).is_file()
    assert not (folder / "rejected").exists()


def test_lead_file_import_shows_the_lead_row_column_schema() -> None:
    schema = lead_file_import.specs_by_key[AssetKey("lead_file_import")].metadata["dagster/column_schema"]

    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        ("email", "str", False),
        ("first_name", "str", True),
        ("last_name", "str", True),
        ("company", "str", True),
        ("title", "str", True),
        ("timezone", "str", True),
    ]
    assert [c.name for c in schema.columns] == list(LEAD_ROW_SCHEMA.columns)
    assert schema.columns[0].constraints.other == ["too long: email", "invalid email"]


def test_lead_file_import_has_the_lead_row_schema_as_its_type() -> None:
    """The Dagster UI shows an asset's output type: it is the pandera LeadRow schema, whose check holds."""
    dagster_type = lead_file_import.op.output_defs[0].dagster_type
    assert dagster_type.display_name == "LeadRow"
    assert dagster_type.metadata["schema"].schema.columns[0].name == "email"

    # What the asset returns: the rows went to the database, validated against the schema as read.
    assert check_dagster_type(dagster_type, None).success
    good = pd.DataFrame({"email": ["ada@one.example"], "first_name": ["Ada"], "last_name": [None],
                         "company": [None], "title": [None], "timezone": [None]})
    assert check_dagster_type(dagster_type, good).success
    assert not check_dagster_type(dagster_type, good.assign(email=["not an address"])).success
    assert not check_dagster_type(dagster_type, pd.DataFrame).success  # a class is not rows


def test_an_import_hands_dagster_no_rows_to_store(pipeline: Pipeline, instance: DagsterInstance) -> None:
    """The rows are in the database: nothing reaches an IO manager, whose default would pickle the output,
    and the output's type check, against the LeadRow type, passes."""
    handed: list[object] = []

    class Recording(IOManager):
        def handle_output(self, context: OutputContext, obj: object) -> None:
            handed.append(obj)

        def load_input(self, context: InputContext) -> object:
            raise AssertionError("nothing reads lead rows through Dagster")

    key, _ = pipeline.drop("hubspot_export.csv", _unique("hubspot.csv"))
    instance.add_dynamic_partitions(lead_files.name, [key])
    result = materialize([lead_file_import], partition_key=key, instance=instance,
                         resources={**pipeline.resources, "io_manager": Recording()})

    assert result.success and handed == []
    (output,) = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    assert output.event_specific_data.type_check_data.success  # type: ignore[union-attr]
