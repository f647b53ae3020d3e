"""Asset checks on each lead file import, shown beside the partition in the Dagster UI.

- `lead_file_reject_rate` warns when too many rows of a file failed validation (a wrong column, a broken
  export): rows refused because they are already in the campaign, suppressed or repeated in the file
  are the rules working, not a bad file, and do not count.
- `campaign_size_limit` warns when an import leaves its campaign with more leads than a campaign should hold.

Both read what the import recorded (its materialization metadata, the campaign's leads in the app
database), so they judge exactly the partition they run for. Thresholds are run config.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetRecordsFilter,
    Config,
    asset_check,
)
from sqlalchemy import func, select

from outreach_pipeline.assets.leads import lead_file_import, lead_files
from outreach_pipeline.bucket import campaign_of
from outreach_pipeline.core.lead_store import ALREADY_IN_CAMPAIGN, SUPPRESSED
from outreach_pipeline.core.leads import DUPLICATE_IN_FILE
from outreach_pipeline.db.models import Lead
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.resources import DatabaseResource

# Reasons that mean "the rules worked", not "the file is bad".
EXPECTED_REASONS = frozenset({ALREADY_IN_CAMPAIGN, SUPPRESSED, DUPLICATE_IN_FILE})


class RejectRateConfig(Config):
    max_invalid_share: float = 0.2


class CampaignSizeConfig(Config):
    max_campaign_leads: int = 100_000


def _import_metadata(context: AssetCheckExecutionContext) -> dict[str, object]:
    """The metadata of this partition's latest materialization (the one this run just made)."""
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=lead_file_import.key, asset_partitions=[context.partition_key]), limit=1
    )
    if not result.records:
        return {}
    materialization = result.records[0].asset_materialization
    return {k: v.value for k, v in materialization.metadata.items()} if materialization else {}


@asset_check(asset=lead_file_import, partitions_def=lead_files,
             description="Warns when more than max_invalid_share of a file's rows failed validation.")
def lead_file_reject_rate(context: AssetCheckExecutionContext, config: RejectRateConfig) -> AssetCheckResult:
    metadata = _import_metadata(context)
    rows = int(metadata.get("rows_read") or 0)
    reasons = dict(metadata.get("rejected_by_reason") or {})  # type: ignore[call-overload]
    invalid = {reason: count for reason, count in reasons.items() if reason not in EXPECTED_REASONS}
    share = sum(invalid.values()) / rows if rows else 0.0
    return AssetCheckResult(
        passed=share <= config.max_invalid_share,
        severity=AssetCheckSeverity.WARN,
        description=f"{sum(invalid.values())} of {rows} rows failed validation ({share:.1%}; "
                    f"threshold {config.max_invalid_share:.0%})",
        metadata={"invalid_share": round(share, 4), "rows_read": rows, "invalid_by_reason": invalid,
                  "threshold": config.max_invalid_share},
    )


@asset_check(asset=lead_file_import, partitions_def=lead_files,
             description="Warns when the import leaves its campaign with more than max_campaign_leads leads.")
def campaign_size_limit(
    context: AssetCheckExecutionContext, config: CampaignSizeConfig, database: DatabaseResource
) -> AssetCheckResult:
    campaign_id = campaign_of(context.partition_key)
    with session_scope(database.session_factory()) as session:
        leads = session.scalar(select(func.count()).select_from(Lead).where(Lead.campaign_id == campaign_id)) or 0
    return AssetCheckResult(
        passed=leads <= config.max_campaign_leads,
        severity=AssetCheckSeverity.WARN,
        description=f"campaign {campaign_id} holds {leads} leads (limit {config.max_campaign_leads})",
        metadata={"campaign_id": campaign_id, "campaign_leads": leads, "limit": config.max_campaign_leads},
    )
