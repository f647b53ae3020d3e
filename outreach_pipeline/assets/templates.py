"""Missing templates of draft and running campaigns, written in batch."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from sqlalchemy import select

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.templates import generate_templates
from outreach_pipeline.db.models import Campaign, CampaignStatus
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.resources import DatabaseResource, TemplateWriterResource

OPEN_STATUSES = (CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED)


@asset(group_name="templates", description="Writes a template for every step that lacks one.", kinds={"openai"})
def campaign_templates(
    context: AssetExecutionContext, database: DatabaseResource, writer: TemplateWriterResource
) -> MaterializeResult:
    template_writer = writer.writer()
    factory = database.session_factory()
    with session_scope(factory) as session:
        campaign_ids = list(session.scalars(select(Campaign.id).where(Campaign.status.in_(OPEN_STATUSES))))
    generated, prompt_tokens, completion_tokens, problems = 0, 0, 0, {}
    for campaign_id in campaign_ids:
        # One transaction per campaign: a model failure on one campaign keeps the others' work.
        try:
            with session_scope(factory) as session:
                report = generate_templates(session, session.get_one(Campaign, campaign_id), template_writer)
        except InvalidInputError as error:
            problems[str(campaign_id)] = [error.message, *(error.details or [])]
            context.log.warning(f"campaign {campaign_id}: {error.message} {error.details}")
            continue
        generated += len(report.templates)
        prompt_tokens += report.prompt_tokens
        completion_tokens += report.completion_tokens
    return MaterializeResult(metadata={
        "writer": template_writer.name,
        "campaigns_checked": len(campaign_ids),
        "templates_generated": generated,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "problems": MetadataValue.json(problems),
    })
