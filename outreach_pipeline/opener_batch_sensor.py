"""Picks up finished Batch API jobs: when OpenAI says a submitted batch is done, run `lead_openers`,
which stores its answers (and submits whatever is still missing)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from outreach_pipeline.assets.openers import lead_openers
from outreach_pipeline.core.opener_batches import pending_batches
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.llm.batch import FINISHED, batch_status
from outreach_pipeline.llm.openai_writer import OpenAIWriter
from outreach_pipeline.resources import DatabaseResource, TemplateWriterResource

lead_openers_job = define_asset_job("lead_openers_job", selection=AssetSelection.assets(lead_openers))


@sensor(job=lead_openers_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def opener_batches_sensor(
    context: SensorEvaluationContext, database: DatabaseResource, writer: TemplateWriterResource
) -> Iterator[RunRequest | SkipReason]:
    with session_scope(database.session_factory()) as session:
        pending = pending_batches(session)
    template_writer = writer.writer()
    if not pending or not isinstance(template_writer, OpenAIWriter):
        yield SkipReason("no Batch API job is waiting")
        return
    done = [b.provider_batch_id for b in pending if batch_status(template_writer.client, b.provider_batch_id) in FINISHED]
    if not done:
        yield SkipReason(f"{len(pending)} batch(es) still running")
        return
    # One run for the batches finished now; the key keeps a sensor tick from asking twice for the same ones.
    key = hashlib.sha256(",".join(sorted(done)).encode()).hexdigest()[:32]
    yield RunRequest(run_key=f"batches-{key}", tags={"outreach/batches": ",".join(done)[:200]})
