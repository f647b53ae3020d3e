"""The bucket sensor: one run per file version; the run key carries the path and the version
(size and mtime in a local folder, the ETag on S3), so a re-upload with new content runs again."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from outreach_pipeline.assets.leads import lead_files
from outreach_pipeline.jobs import ingest_leads_job
from outreach_pipeline.resources import LeadsBucketResource


@sensor(job=ingest_leads_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING,
        description="Watches <bucket>/<campaign_id>/*.csv and ingests each file version once.")
def leads_bucket_sensor(context: SensorEvaluationContext, bucket: LeadsBucketResource) -> SensorResult | SkipReason:
    files = bucket.bucket().list_new_files()
    if not files:
        return SkipReason(f"no lead files waiting in {bucket.path}")
    known = set(context.instance.get_dynamic_partitions(lead_files.name))
    new_keys = sorted({f.key for f in files} - known)
    return SensorResult(
        run_requests=[RunRequest(run_key=f"{f.key}@{f.version}", partition_key=f.key) for f in files],
        dynamic_partitions_requests=[lead_files.build_add_request(new_keys)] if new_keys else [],
    )
