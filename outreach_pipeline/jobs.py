"""Jobs and schedules over the assets."""

from dagster import AssetSelection, DefaultScheduleStatus, build_schedule_from_partitioned_job, define_asset_job

from outreach_pipeline.assets.leads import lead_file_import
from outreach_pipeline.assets.sends import SEND_TAG, email_sends
from outreach_pipeline.assets.templates import campaign_templates

ingest_leads_job = define_asset_job("ingest_leads_job", selection=AssetSelection.assets(lead_file_import))

# The run tag lets dagster.yaml allow one send run at a time; the database claim keeps
# concurrent senders safe anyway, the limit just keeps one provider connection busy.
send_emails_job = define_asset_job("send_emails_job", selection=AssetSelection.assets(email_sends),
                                   tags={SEND_TAG: "true"})

generate_templates_job = define_asset_job("generate_templates_job", selection=AssetSelection.assets(campaign_templates))

send_schedule = build_schedule_from_partitioned_job(send_emails_job, default_status=DefaultScheduleStatus.RUNNING)
