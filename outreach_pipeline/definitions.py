"""Every asset, job, sensor, schedule and resource of the code location, listed explicitly."""

from __future__ import annotations

from dagster import Definitions

from outreach_pipeline.assets.leads import lead_file_import
from outreach_pipeline.assets.openers import lead_openers
from outreach_pipeline.assets.sends import email_sends
from outreach_pipeline.assets.templates import campaign_templates
from outreach_pipeline.checks import campaign_size_limit, lead_file_reject_rate
from outreach_pipeline.jobs import generate_templates_job, ingest_leads_job, send_emails_job, send_schedule
from outreach_pipeline.opener_batch_sensor import lead_openers_job, opener_batches_sensor
from outreach_pipeline.resources import resources_from_settings
from outreach_pipeline.send_checks import hard_bounce_rate
from outreach_pipeline.sensors import leads_bucket_sensor
from outreach_pipeline.settings import get_settings

defs = Definitions(
    assets=[lead_file_import, campaign_templates, lead_openers, email_sends],
    asset_checks=[lead_file_reject_rate, campaign_size_limit, hard_bounce_rate],
    jobs=[ingest_leads_job, send_emails_job, generate_templates_job, lead_openers_job],
    sensors=[leads_bucket_sensor, opener_batches_sensor],
    schedules=[send_schedule],
    resources=resources_from_settings(get_settings()),
)
