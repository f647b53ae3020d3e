"""The leads bucket on S3, against a real S3-protocol server on loopback (moto in server mode).

The same sensor and asset as for the local folder, with `LEADS_BUCKET=s3://bucket/prefix`: boto3 speaks
HTTP to the server; nothing of ours is mocked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from outreach_pipeline.assets.leads import lead_file_import
from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign
from outreach_pipeline.core.leads import NO_EMAIL_COLUMN
from outreach_pipeline.db.models import ImportStatus, Lead, LeadImport, User
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope
from outreach_pipeline.resources import LeadsBucketResource, resources_from_settings
from outreach_pipeline.sensors import leads_bucket_sensor
from outreach_pipeline.settings import Settings
from tests.fixtures import PROVIDER_FIXTURES

SHARED = PROVIDER_FIXTURES / "leads"
HUBSPOT = (SHARED / "hubspot_export.csv").read_bytes()


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server accepts any credentials; these keep boto3 from looking for real ones.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as dagster_instance:
        yield dagster_instance


class S3Setup:
    def __init__(self, settings: Settings, s3_url: str) -> None:
        self.bucket = f"leads-{uuid.uuid4().hex[:8]}"
        self.client: Any = boto3.client("s3", endpoint_url=s3_url)
        self.client.create_bucket(Bucket=self.bucket)
        self.resources = {**resources_from_settings(settings),
                          "bucket": LeadsBucketResource(path=f"s3://{self.bucket}/inbox", endpoint_url=s3_url)}
        engine = create_db_engine(settings.database_url)
        self.sessions = make_session_factory(engine)
        with session_scope(self.sessions) as session:
            owner = User(email="operator@company.example")
            session.add(owner)
            session.flush()
            self.campaign_id = create_campaign(session, owner.id, CampaignCreate(name="S3 leads")).id

    def put(self, name: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=f"inbox/{self.campaign_id}/{name}", Body=data)
        return f"{self.campaign_id}/{name}"

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def sense(self, instance: DagsterInstance) -> SensorResult | SkipReason:
        with build_sensor_context(instance=instance, resources=self.resources) as context:
            result = leads_bucket_sensor(context)
        if isinstance(result, SensorResult):
            for add in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        return result

    def stored(self) -> list[str]:
        with session_scope(self.sessions) as session:
            return sorted(session.scalars(select(Lead.email)))


@pytest.fixture
def s3(settings: Settings, s3_url: str) -> Iterator[S3Setup]:
    setup = S3Setup(settings, s3_url)
    yield setup
    setup.sessions.kw["bind"].dispose()


def test_a_file_in_the_s3_bucket_is_sensed_by_etag_ingested_and_moved_aside(
    s3: S3Setup, instance: DagsterInstance
) -> None:
    key = s3.put("hubspot.csv", HUBSPOT)
    head = s3.client.head_object(Bucket=s3.bucket, Key=f"inbox/{key}")
    version = f"{head['ETag'].strip(chr(34))}-{int(head['LastModified'].timestamp())}"
    # Files already moved aside, and files outside campaign folders, are not waiting.
    s3.client.put_object(Bucket=s3.bucket, Key=f"inbox/{s3.campaign_id}/processed/old.csv", Body=HUBSPOT)
    s3.client.put_object(Bucket=s3.bucket, Key="inbox/readme.csv", Body=b"email\n")

    sensed = s3.sense(instance)

    assert isinstance(sensed, SensorResult)
    assert [(r.run_key, r.partition_key) for r in sensed.run_requests] == [(f"{key}@{version}", key)]
    result = materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("lead_file_import")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    rejects = f"inbox/{s3.campaign_id}/rejected/hubspot.rejects.csv"
    assert (metadata["rows_read"], metadata["stored"], metadata["rejected"], metadata["rejects_report"]) == (
        5, 4, 1, f"s3://{s3.bucket}/{rejects}")
    assert s3.stored() == ["elena.petrova@vostok-soft.com", "fatima.zahra@atlasbuild.ma", "info@acme-widgets.com",
                           "jwhitfield@meridianhealth.org"]
    assert s3.keys() == sorted([f"inbox/{s3.campaign_id}/processed/hubspot.csv",
                                f"inbox/{s3.campaign_id}/processed/old.csv", rejects, "inbox/readme.csv"])
    assert s3.read(f"inbox/{s3.campaign_id}/processed/hubspot.csv") == HUBSPOT
    assert s3.read(rejects).decode().splitlines() == ["line,email,reason", "5,chen.wei@@lotusfin.cn,invalid email"]
    with session_scope(s3.sessions) as session:
        assert session.scalars(select(LeadImport.rejects_path)).one() == f"s3://{s3.bucket}/{rejects}"

    nothing = s3.sense(instance)
    assert isinstance(nothing, SkipReason)

    # Re-running the partition reads the file from processed/ and stores no duplicate.
    again = materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources)
    (rerun,) = again.asset_materializations_for_node("lead_file_import")
    assert (rerun.metadata["stored"].value, rerun.metadata["rejected_by_reason"].value) == (
        0, {"already in campaign": 4, "invalid email": 1})
    assert len(s3.stored()) == 4


def test_a_reupload_with_new_content_gets_a_new_run_key_and_is_ingested_again(
    s3: S3Setup, instance: DagsterInstance
) -> None:
    key = s3.put("list.csv", b"email,first_name\nann@one.example,Ann\n")
    first = s3.sense(instance)
    assert isinstance(first, SensorResult)
    assert materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources).success

    s3.put("list.csv", b"email,first_name\nann@one.example,Ann\nbo@two.example,Bo\n")
    second = s3.sense(instance)

    assert isinstance(second, SensorResult)
    (request,) = second.run_requests
    assert request.partition_key == key and request.run_key != first.run_requests[0].run_key
    assert second.dynamic_partitions_requests == []
    result = materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources)
    (materialization,) = result.asset_materializations_for_node("lead_file_import")
    assert (materialization.metadata["stored"].value, materialization.metadata["rejected"].value) == (1, 1)
    assert s3.stored() == ["ann@one.example", "bo@two.example"]
    assert s3.read(f"inbox/{key.replace('/', '/processed/')}") == (
        b"email,first_name\nann@one.example,Ann\nbo@two.example,Bo\n")


def test_the_same_content_uploaded_again_is_imported_again_and_moved_aside_not_left_waiting(
    s3: S3Setup, instance: DagsterInstance
) -> None:
    content = b"email,first_name\nann@one.example,Ann\n"
    key = s3.put("same.csv", content)
    first = s3.sense(instance)
    assert isinstance(first, SensorResult)
    assert materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources).success
    time.sleep(1.1)  # S3 keeps upload times to the second

    s3.put("same.csv", content)  # same bytes, same ETag
    second = s3.sense(instance)

    assert isinstance(second, SensorResult)
    (request,) = second.run_requests
    assert request.partition_key == key and request.run_key != first.run_requests[0].run_key
    result = materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources)
    (materialization,) = result.asset_materializations_for_node("lead_file_import")
    assert materialization.metadata["rejected_by_reason"].value == {"already in campaign": 1}
    assert f"inbox/{key}" not in s3.keys()
    assert isinstance(s3.sense(instance), SkipReason)


def test_a_file_that_is_not_a_lead_list_fails_and_leaves_no_report_in_the_bucket(
    s3: S3Setup, instance: DagsterInstance
) -> None:
    key = s3.put("contacts.csv", b"First Name,Company\nAda,Acme\n")
    assert isinstance(s3.sense(instance), SensorResult)

    result = materialize([lead_file_import], partition_key=key, instance=instance, resources=s3.resources,
                         raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node("lead_file_import")
    assert failure is not None and failure.user_failure_data is not None
    assert failure.user_failure_data.description == f"{key}: {NO_EMAIL_COLUMN}"
    assert s3.stored() == []
    assert s3.keys() == [f"inbox/{s3.campaign_id}/processed/contacts.csv"]
    with session_scope(s3.sessions) as session:
        assert session.scalars(select(LeadImport.status)).one() == ImportStatus.FAILED
