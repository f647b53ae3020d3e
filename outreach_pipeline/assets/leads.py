"""Lead files from the bucket, one dynamic partition per file (`<campaign_id>/<name>`)."""

import time

from typing import Any

from dagster import (
    AssetExecutionContext,
    DagsterType,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    TypeCheck,
    TypeCheckContext,
    asset,
)
from dagster_pandera import pandera_schema_to_dagster_type

from outreach_pipeline.bucket import campaign_of
from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.lead_schema import LEAD_ROW_SCHEMA
from outreach_pipeline.core.leads import ImportReport, import_leads_csv
from outreach_pipeline.db.models import Campaign
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.resources import LEAD_ROWS_IO, DatabaseResource, LeadsBucketResource

lead_files = DynamicPartitionsDefinition(name="lead_files")

LEAD_ROW_TYPE = pandera_schema_to_dagster_type(LEAD_ROW_SCHEMA)


def _stored_or_valid(context: TypeCheckContext, value: Any) -> TypeCheck:
    """The asset's output is nothing: a file is validated against LEAD_ROW_SCHEMA chunk by chunk as it is
    read (core/leads.py) and its rows go straight to the database, never held whole in memory. A frame, if
    one is ever given, is checked against the schema like any pandera type."""
    # A MaterializeResult without a value hands the type check Dagster's NoValueSentinel class.
    if value is None or (isinstance(value, type) and value.__name__ == "NoValueSentinel"):
        return TypeCheck(success=True, description="Rows validated against the LeadRow schema as they were read.")
    return LEAD_ROW_TYPE.type_check(context, value)


# The LeadRow schema as the asset's type, so the Dagster UI shows it (name, description, columns and checks).
LEAD_ROWS = DagsterType(
    type_check_fn=_stored_or_valid,
    name=LEAD_ROW_TYPE.unique_name,
    description=LEAD_ROW_TYPE.description,
    metadata=LEAD_ROW_TYPE.metadata,
)


@asset(
    partitions_def=lead_files,
    group_name="leads",
    description="Leads of one CSV file dropped in the bucket, validated against the LeadRow schema and stored.",
    dagster_type=LEAD_ROWS,
    io_manager_key=LEAD_ROWS_IO,  # nothing to store: the rows are in the database
    metadata={"dagster/column_schema": LEAD_ROW_TYPE.metadata["schema"].schema},
    kinds={"csv", "pandas"},
)
def lead_file_import(
    context: AssetExecutionContext, database: DatabaseResource, bucket: LeadsBucketResource
) -> MaterializeResult:
    key = context.partition_key
    files = bucket.bucket()
    started = time.monotonic()
    with session_scope(database.session_factory()) as session:
        campaign = session.get(Campaign, campaign_of(key))
        if campaign is None:
            raise Failure(f"{key}: there is no campaign {campaign_of(key)}; put the file under an existing campaign id.")
        try:
            with files.open(key) as stream:
                report = import_leads_csv(session, campaign, stream, source=f"bucket:{key}",
                                          rejects_path=files.rejects_target(key))
        except FileNotFoundError as error:
            raise Failure(f"{key}: the file is gone from the bucket ({error}).") from error
        except InvalidInputError as error:
            files.mark_processed(key)  # moved aside so the sensor does not offer it again
            raise Failure(f"{key}: {error.message}",
                          metadata={"import_id": (error.details or {}).get("import_id")}) from error
    files.mark_processed(key)
    context.log.info(f"{key}: {report.stored} stored, {report.rejected} rejected of {report.rows_read} rows")
    return MaterializeResult(metadata=import_metadata(report, campaign_of(key), time.monotonic() - started))


def import_metadata(report: ImportReport, campaign_id: int, seconds: float) -> dict[str, object]:
    """What the Dagster UI shows for an import; the asset checks read it back."""
    return {
        "campaign_id": campaign_id,
        "import_id": report.import_id,
        "rows_read": report.rows_read,
        "stored": report.stored,
        "rejected": report.rejected,
        "rejected_by_reason": MetadataValue.json(dict(report.reasons)),
        "rejects_report": MetadataValue.path(report.rejects_path) if report.rejects_path else None,
        "duration_s": round(seconds, 3),
    }
