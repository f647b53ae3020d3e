"""Missing templates of draft and running campaigns, written in batch.

Campaigns are written concurrently (up to the writer's concurrency limit), each in its own transaction;
within a campaign steps go in order, since each follow-up is written knowing the earlier ones.
"""

from concurrent.futures import ThreadPoolExecutor

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.templates import GenerationReport, generate_templates
from outreach_pipeline.db.models import Campaign, CampaignStatus
from outreach_pipeline.db.session import is_sqlite, session_scope
from outreach_pipeline.llm.brief import TemplateWriter, WriterUnavailableError
from outreach_pipeline.resources import DatabaseResource, TemplateWriterResource

OPEN_STATUSES = (CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED)


def _write_campaign(factory: sessionmaker[Session], writer: TemplateWriter, campaign_id: int) -> GenerationReport:
    # One transaction per campaign: a model failure on one campaign keeps the others' work.
    with session_scope(factory) as session:
        return generate_templates(session, session.get_one(Campaign, campaign_id), writer)


@asset(group_name="templates", description="Writes a template for every step that lacks one.", kinds={"openai"})
def campaign_templates(
    context: AssetExecutionContext, database: DatabaseResource, writer: TemplateWriterResource
) -> MaterializeResult:
    template_writer = writer.writer()
    factory = database.session_factory()
    with session_scope(factory) as session:
        campaign_ids = list(session.scalars(select(Campaign.id).where(Campaign.status.in_(OPEN_STATUSES))))
    generated, prompt_tokens, completion_tokens, problems = 0, 0, 0, {}
    # SQLite has one writer at a time and a campaign's transaction spans its model calls: one campaign at a
    # time there, or the others would wait on its lock (or fail to upgrade a stale read).
    workers = 1 if is_sqlite(database.url) else max(1, min(writer.concurrency, len(campaign_ids)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {cid: pool.submit(_write_campaign, factory, template_writer, cid) for cid in campaign_ids}
    for campaign_id, future in futures.items():
        try:
            report = future.result()
        except InvalidInputError as error:
            problems[str(campaign_id)] = [error.message, *(error.details or [])]
            context.log.warning(f"campaign {campaign_id}: {error.message} {error.details}")
            continue
        except WriterUnavailableError as error:  # this campaign waits for the next run; the others keep theirs
            problems[str(campaign_id)] = [f"The model did not answer: {error}"]
            context.log.warning(f"campaign {campaign_id}: the model did not answer: {error}")
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
