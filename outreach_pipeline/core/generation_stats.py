"""What generation cost a campaign, and how each A/B variant performs."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from outreach_pipeline.db.models import (
    Campaign,
    CampaignCount,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    Template,
    job_status_is,
)


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input_per_mtok: float = 0.15
    output_per_mtok: float = 0.60

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round((prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6, 6)


class GenerationUsage(BaseModel):
    template_prompt_tokens: int
    template_completion_tokens: int
    opener_prompt_tokens: int
    opener_completion_tokens: int
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float


class VariantStats(BaseModel):
    step_number: int
    variant: str
    template_id: int
    sent: int
    replied: int  # replies credited to this variant: it was the last email the lead got before replying
    reply_rate: float


# The counters (campaign_counts, kept by triggers on lead_openers: migration 0010) holding the tokens spent
# on a campaign's openers: a campaign of a million leads has a million openers, too many to sum per read.
OPENER_TOKEN_KINDS = ("oprompt", "ocompl")


def opener_tokens(session: Session, campaign_id: int) -> tuple[int, int]:
    """Prompt and completion tokens spent on the campaign's openers."""
    counts = CampaignCount.__table__.c
    # Cast: PostgreSQL sums a bigint into a numeric, which would come back as a Decimal.
    totals = dict(session.execute(select(counts.kind, cast(func.sum(counts.n), BigInteger))
                                  .where(counts.campaign_id == campaign_id, counts.kind.in_(OPENER_TOKEN_KINDS))
                                  .group_by(counts.kind)).tuples().all())
    prompt, completion = (int(totals.get(kind) or 0) for kind in OPENER_TOKEN_KINDS)
    return prompt, completion


def generation_usage(session: Session, campaign: Campaign, prices: Prices) -> GenerationUsage:
    """Tokens spent writing this campaign's templates and openers (cache hits cost none), and the estimate."""
    t_prompt, t_completion = session.execute(select(
        func.coalesce(func.sum(Template.prompt_tokens), 0), func.coalesce(func.sum(Template.completion_tokens), 0)
    ).where(Template.campaign_id == campaign.id)).one()
    o_prompt, o_completion = opener_tokens(session, campaign.id)
    prompt, completion = int(t_prompt) + int(o_prompt), int(t_completion) + int(o_completion)
    return GenerationUsage(
        template_prompt_tokens=int(t_prompt), template_completion_tokens=int(t_completion),
        opener_prompt_tokens=int(o_prompt), opener_completion_tokens=int(o_completion),
        prompt_tokens=prompt, completion_tokens=completion, estimated_cost_usd=prices.cost(prompt, completion),
    )


def variant_stats(session: Session, campaign: Campaign) -> list[VariantStats]:
    """Sent emails and replies per template (step and variant) of a campaign, from the jobs' template_id."""
    templates = session.scalars(select(Template).where(Template.campaign_id == campaign.id)
                                .order_by(Template.step_number, Template.variant)).all()
    sent: dict[int, int] = {t.id: 0 for t in templates}
    last_sent: dict[int, tuple[int, int]] = {}  # lead id -> (step, template id) of its latest sent email
    rows = session.execute(
        select(EmailJob.lead_id, EmailJob.step_number, EmailJob.template_id, Lead.status)
        .join(Lead, Lead.id == EmailJob.lead_id)
        .where(EmailJob.campaign_id == campaign.id, job_status_is(JobStatus.SENT),
               EmailJob.template_id.is_not(None))
    )
    replied_leads: set[int] = set()
    for lead_id, step, template_id, lead_status in rows:
        sent[template_id] = sent.get(template_id, 0) + 1
        if lead_id not in last_sent or step > last_sent[lead_id][0]:
            last_sent[lead_id] = (step, template_id)
        if lead_status == LeadStatus.REPLIED:
            replied_leads.add(lead_id)
    replied: dict[int, int] = {}
    for lead_id in replied_leads:
        template_id = last_sent[lead_id][1]
        replied[template_id] = replied.get(template_id, 0) + 1
    return [VariantStats(step_number=t.step_number, variant=t.variant, template_id=t.id, sent=sent[t.id],
                         replied=replied.get(t.id, 0),
                         reply_rate=round(replied.get(t.id, 0) / sent[t.id], 4) if sent[t.id] else 0.0)
            for t in templates]
