"""Email sends, partitioned in short time windows; each partition sends every job due by its end."""

from datetime import UTC, datetime

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, TimeWindowPartitionsDefinition, asset

from outreach_pipeline.core.delivery import dispatch_due
from outreach_pipeline.mail.message import MailerAccountError
from outreach_pipeline.resources import DatabaseResource, MailResource
from outreach_pipeline.settings import get_settings

SEND_TAG = "outreach/send"


def send_windows(minutes: int, start: str) -> TimeWindowPartitionsDefinition:
    return TimeWindowPartitionsDefinition(
        cron_schedule=f"*/{minutes} * * * *",
        start=datetime.fromisoformat(start).replace(tzinfo=UTC),
        fmt="%Y-%m-%d-%H:%M",
        timezone="UTC",
    )


_settings = get_settings()
send_partitions = send_windows(_settings.send_partition_minutes, _settings.send_partitions_start)


@asset(
    partitions_def=send_partitions,
    group_name="delivery",
    description="Sends the email jobs due by the end of this window (a backfill catches up missed windows).",
    kinds={"postmark"},
    op_tags={SEND_TAG: "true"},
)
def email_sends(context: AssetExecutionContext, database: DatabaseResource, mail: MailResource) -> MaterializeResult:
    window_end = context.partition_time_window.end
    # A past window sends what was due then; never anything due after the present moment.
    due_before = min(window_end, datetime.now(UTC))
    mailer = mail.mailer()
    try:
        report = dispatch_due(database.session_factory(), mailer, mail.sender_config(), due_before,
                              policy=mail.send_policy())
    except MailerAccountError as error:
        raise Failure(f"The mail provider refused the account; {error.sent} email(s) went out before "
                      f"that, every other job is still pending: {error}") from error
    context.log.info(f"window ending {window_end.isoformat()}: {report.as_metadata()}")
    return MaterializeResult(metadata={
        **report.as_metadata(),
        "mailer": mailer.name,
        "due_before": due_before.isoformat(),
        "reasons": MetadataValue.json(dict(report.reasons)),
        **({"sent_per_process": MetadataValue.json(report.sent_per_process)} if report.sent_per_process else {}),
    })
