"""The code location as Dagster loads it, and Dagster's own storage on PostgreSQL (dagster-postgres).

- `dagster definitions validate` accepts the workspace;
- `defs` wires the sensor, the schedule built from the partitioned send job and the three assets;
- the send job's tag is the one `dagster_home/dagster.yaml` limits to one concurrent run;
- with `dagster_home/dagster.postgres.yaml`, runs, events and dynamic partitions land in PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    SensorResult,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from psycopg import sql
from sqlalchemy.engine import make_url

from outreach_pipeline.assets.leads import lead_file_import, lead_files
from outreach_pipeline.assets.sends import SEND_TAG, send_partitions
from outreach_pipeline.core.auth import request_magic_link, verify_magic_link
from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.definitions import defs
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.sensors import leads_bucket_sensor
from tests.fixtures import PROVIDER_FIXTURES, latest_outbox_token, make_settings

REPO = Path(__file__).resolve().parents[1]
DAGSTER_HOME = REPO / "dagster_home"
LEADS = PROVIDER_FIXTURES / "leads"


def _dagster_home_copy(directory: Path, source: str = "dagster.yaml") -> Path:
    """A DAGSTER_HOME holding only the given config as dagster.yaml (never the repo's own run history)."""
    home = directory / "dagster_home"
    home.mkdir()
    shutil.copy(DAGSTER_HOME / source, home / "dagster.yaml")
    return home


# --- the code location ---------------------------------------------------------------------------------


def test_dagster_definitions_validate_accepts_the_workspace(tmp_path: Path) -> None:
    home = _dagster_home_copy(tmp_path)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # The definitions read the app settings: keep any local data out of the repo.
        "DATA_DIR": str(tmp_path / "data"),
    }
    dagster = Path(sys.executable).with_name("dagster")

    completed = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    output = completed.stdout + completed.stderr
    assert "Validation successful for code location outreach." in output
    assert "All code locations passed validation." in output


def test_defs_wire_the_sensors_the_send_schedule_and_the_assets() -> None:
    repository = defs.get_repository_def()

    assert sorted(key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()) == [
        "campaign_templates", "email_sends", "lead_file_import", "lead_openers"]
    assert [(s.name, s.job_name, s.default_status, s.minimum_interval_seconds) for s in repository.sensor_defs] == [
        ("leads_bucket_sensor", "ingest_leads_job", DefaultSensorStatus.RUNNING, 15),
        ("opener_batches_sensor", "lead_openers_job", DefaultSensorStatus.RUNNING, 60)]
    (schedule,) = repository.schedule_defs
    assert (schedule.name, schedule.job_name, schedule.cron_schedule, schedule.execution_timezone,
            schedule.default_status) == (
        "send_emails_job_schedule", "send_emails_job", "*/5 * * * *", "UTC", DefaultScheduleStatus.RUNNING)
    # The schedule's job is the partitioned send job over email_sends.
    send_job = defs.resolve_job_def("send_emails_job")
    assert send_job.partitions_def is not None
    assert send_job.partitions_def == defs.resolve_assets_def("email_sends").partitions_def
    assert sorted(repository.job_names) == sorted(
        ["__ASSET_JOB", "generate_templates_job", "ingest_leads_job", "lead_openers_job", "send_emails_job"])


def test_send_runs_carry_the_tag_that_dagster_yaml_limits_to_one_concurrent_run(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = yaml.safe_load((DAGSTER_HOME / "dagster.yaml").read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    send_job = defs.resolve_job_def("send_emails_job")

    assert limits == [{"key": SEND_TAG, "value": "true", "limit": 1}]
    assert send_job.tags == {SEND_TAG: "true"}
    assert [(limit["key"], limit["value"]) for limit in limits] == list(send_job.tags.items())
    # The production config limits it the same way.
    postgres_config = yaml.safe_load((DAGSTER_HOME / "dagster.postgres.yaml").read_text())
    assert postgres_config["concurrency"]["runs"]["tag_concurrency_limits"] == limits

    # The instance the daemon loads from that DAGSTER_HOME queues runs with that limit.
    instance = DagsterInstance.from_config(str(_dagster_home_copy(tmp_path)))
    try:
        run_queue = instance.get_concurrency_config().run_queue_config
        assert run_queue is not None
        assert run_queue.tag_concurrency_limits == limits
    finally:
        instance.dispose()

    # And a run of the send job for a window carries the tag (the app database is empty: nothing is due).
    settings = make_settings(tmp_path, sqlite_url)
    partition = send_partitions.get_last_partition_key()
    assert partition is not None
    with instance_for_test() as test_instance:
        result = send_job.execute_in_process(instance=test_instance, partition_key=partition,
                                             resources=resources_from_settings(settings))
        assert result.success
        run = test_instance.get_run_by_id(result.run_id)
        assert run is not None
        assert (run.tags[SEND_TAG], run.tags["dagster/partition"]) == ("true", partition)


# --- Dagster's storage on PostgreSQL -------------------------------------------------------------------


@pytest.fixture
def dagster_storage_db(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for Dagster's own storage on the test server; dropped afterwards."""
    name = "dagster_storage_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.postgres
def test_runs_and_materializations_are_stored_in_postgresql(
    tmp_path: Path, postgres_server_url: str, postgres_url: str, dagster_storage_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_url(postgres_server_url)
    monkeypatch.setenv("DAGSTER_PG_HOST", server.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(server.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", server.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", server.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", dagster_storage_db)
    home = _dagster_home_copy(tmp_path, "dagster.postgres.yaml")

    # The app database is PostgreSQL too, as in production; a campaign receives one lead file.
    settings = make_settings(tmp_path, postgres_url)
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    outbox = tmp_path / "sign-in-outbox"
    try:
        with session_scope(sessions) as session:
            request_magic_link(session, FileOutbox(outbox), "operator@company.example",
                               frontend_url=settings.frontend_url, from_email=settings.from_email)
        with session_scope(sessions) as session:
            owner = verify_magic_link(session, latest_outbox_token(outbox))
            campaign_id = create_campaign(session, owner.id, CampaignCreate(name="Freight analytics")).id
    finally:
        engine.dispose()
    folder = Path(settings.leads_bucket) / str(campaign_id)
    folder.mkdir(parents=True)
    shutil.copy(LEADS / "hubspot_export.csv", folder / "hubspot.csv")
    key = f"{campaign_id}/hubspot.csv"
    resources = resources_from_settings(settings)

    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        with build_sensor_context(instance=instance, resources=resources) as context:
            sensed = leads_bucket_sensor(context)
        assert isinstance(sensed, SensorResult)
        (add,) = sensed.dynamic_partitions_requests
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))

        result = materialize([lead_file_import], partition_key=key, instance=instance, resources=resources)

        assert result.success
        assert result.asset_materializations_for_node("lead_file_import")[0].metadata["stored"].value == 4
        latest = instance.get_latest_materialization_event(AssetKey("lead_file_import"))
        assert latest is not None and latest.run_id == result.run_id
    finally:
        instance.dispose()

    storage_url = server.set(database=dagster_storage_db).render_as_string(hide_password=False)
    with psycopg.connect(storage_url) as connection:
        runs = connection.execute("SELECT run_id, status, pipeline_name FROM runs").fetchall()
        materializations = connection.execute(
            "SELECT run_id, asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        ).fetchall()
        partitions = connection.execute(
            "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s", (lead_files.name,)
        ).fetchall()
    assert runs == [(result.run_id, "SUCCESS", "__ephemeral_asset_job__")]
    assert materializations == [(result.run_id, '["lead_file_import"]', key)]
    assert partitions == [(key,)]
