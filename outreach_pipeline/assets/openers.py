"""Per-lead opening lines of the campaigns whose templates use {{ai_opener}}, written in batch before launch."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from outreach_pipeline.assets.templates import campaign_templates
from outreach_pipeline.core.generation_stats import generation_usage
from outreach_pipeline.core.opener_batches import collect_opener_batches, submit_opener_batch
from outreach_pipeline.core.openers import OpenerReport, campaigns_needing_openers, generate_openers
from outreach_pipeline.db.models import Campaign
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.llm.openai_writer import OpenAIWriter
from outreach_pipeline.resources import DatabaseResource, TemplateWriterResource


@asset(group_name="templates", deps=[campaign_templates], kinds={"openai"},
       description="Writes the {{ai_opener}} line of every waiting lead that has none (failed ones again).")
def lead_openers(
    context: AssetExecutionContext, database: DatabaseResource, writer: TemplateWriterResource
) -> MaterializeResult:
    template_writer = writer.writer()
    factory = database.session_factory()
    with session_scope(factory) as session:
        campaign_ids = campaigns_needing_openers(session)
    total = OpenerReport()
    use_batches = writer.batch_api and isinstance(template_writer, OpenAIWriter)
    submitted = collected = 0
    if use_batches:
        assert isinstance(template_writer, OpenAIWriter)
        # Finished Batch API jobs first: their leads are then READY (or FAILED and submitted again).
        report, collected = collect_opener_batches(factory, template_writer)
        total.add(report)
    for campaign_id in campaign_ids:
        if use_batches:
            assert isinstance(template_writer, OpenAIWriter)
            report, batch_id = submit_opener_batch(factory, template_writer, campaign_id)
            submitted += batch_id is not None
        else:
            report = generate_openers(factory, template_writer, campaign_id, concurrency=writer.concurrency)
        context.log.info(f"campaign {campaign_id}: {report.written}/{report.leads} openers written, "
                         f"{report.cache_hits} from cache, {report.failed} failed")
        total.add(report)
    prices = writer.prices()
    with session_scope(factory) as session:
        # All AI generation of each campaign so far (templates and openers), for the cost per campaign.
        usage = {str(cid): generation_usage(session, session.get_one(Campaign, cid), prices).model_dump()
                 for cid in campaign_ids}
    return MaterializeResult(metadata={
        "writer": template_writer.name,
        "campaigns": len(campaign_ids),
        "leads_needing_openers": total.leads,
        "openers_written": total.written,
        "cache_hits": total.cache_hits,
        "failed": total.failed,
        "model_requests": total.model_requests,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "estimated_cost_usd": prices.cost(total.prompt_tokens, total.completion_tokens),
        "usage_by_campaign": MetadataValue.json(usage),
        "errors": MetadataValue.json({str(k): v for k, v in total.errors.items()}),
        "batch_api": use_batches,
        "batches_submitted": submitted,
        "batches_collected": collected,
    })
