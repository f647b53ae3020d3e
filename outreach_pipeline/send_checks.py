"""Asset checks on `email_sends`: the hard-bounce guard, which pauses campaigns bouncing too much.

It runs after each send partition; the check turns red in the Dagster UI and the campaign's stats
carry the reason (`paused_reason`). Thresholds come from settings (BOUNCE_PAUSE_RATE, BOUNCE_PAUSE_MIN_SENT).
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from outreach_pipeline.assets.sends import email_sends
from outreach_pipeline.core.bounce_guard import pause_bouncing_campaigns
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.resources import DatabaseResource
from outreach_pipeline.settings import get_settings


@asset_check(asset=email_sends, description="Pauses any campaign whose hard-bounce rate passes the threshold.")
def hard_bounce_rate(context: AssetCheckExecutionContext, database: DatabaseResource) -> AssetCheckResult:
    settings = get_settings()
    with session_scope(database.session_factory()) as session:
        paused = pause_bouncing_campaigns(session, settings.bounce_pause_rate, settings.bounce_pause_min_sent)
    return AssetCheckResult(
        passed=not paused,
        severity=AssetCheckSeverity.WARN,
        description=("Campaigns paused for hard bounces: " + ", ".join(str(p.campaign_id) for p in paused))
        if paused else "No campaign above the hard-bounce threshold.",
        metadata={"paused": MetadataValue.json({str(p.campaign_id): {"sent": p.sent, "bounced": p.bounced}
                                                for p in paused})},
    )
