"""A campaign whose hard-bounce rate passes a threshold pauses itself: a bad list burns the sender's domain."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import Exists, exists, func, select
from sqlalchemy.orm import Session

from outreach_pipeline.core.campaigns import campaign_counts, pause_campaign
from outreach_pipeline.core.events import HARD_BOUNCE_TYPES, SOFT_BOUNCE_TYPES, bounces_of
from outreach_pipeline.db.locks import lock_campaign
from outreach_pipeline.db.models import Campaign, CampaignStatus, JobStatus, Lead, LeadStatus, WebhookEvent


@dataclass(frozen=True)
class BounceRate:
    campaign_id: int
    sent: int
    bounced: int

    @property
    def rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0


def bounce_rate(session: Session, campaign_id: int) -> BounceRate:
    """Leads BOUNCED over emails sent (a lead's first email is where a dead address shows), from the counters.
    An upper bound of the hard-bounce rate: a lead soft-bouncing too often is BOUNCED too."""
    counts = campaign_counts(session, campaign_id)
    sent = sum(c.n for c in counts if c.kind == "job" and c.status == JobStatus.SENT.value)
    bounced = sum(c.n for c in counts if c.kind == "lead" and c.status == LeadStatus.BOUNCED.value)
    return BounceRate(campaign_id, sent, bounced)


def soft_bounced_leads(session: Session, campaign_id: int) -> int:
    """The campaign's BOUNCED leads that only ever soft-bounced (stopped after SOFT_BOUNCE_LIMIT of them): a
    mailbox full or a server down, not a dead address. A scan of the campaign's leads, so read only for a
    campaign the counters put over the threshold."""
    def any_bounce(types: set[str]) -> Exists:
        return exists().where(WebhookEvent.lead_id == Lead.id, bounces_of(types))

    return session.scalar(select(func.count()).select_from(Lead).where(
        Lead.campaign_id == campaign_id, Lead.status == LeadStatus.BOUNCED,
        any_bounce(SOFT_BOUNCE_TYPES), ~any_bounce(HARD_BOUNCE_TYPES))) or 0


def pause_bouncing_campaigns(session: Session, max_rate: float, min_sent: int) -> list[BounceRate]:
    """Pause every ACTIVE campaign whose hard bounces pass `max_rate` once it has sent `min_sent`; returns the
    ones paused. The counters decide most campaigns; only one over the line has its soft bounces taken off."""
    paused: list[BounceRate] = []
    for campaign in session.scalars(select(Campaign).where(Campaign.status == CampaignStatus.ACTIVE)).all():
        rate = bounce_rate(session, campaign.id)
        if rate.sent < min_sent or rate.rate <= max_rate:
            continue
        rate = replace(rate, bounced=rate.bounced - soft_bounced_leads(session, campaign.id))
        if rate.rate > max_rate:
            # Read again under the campaign's lock: its owner may have paused or completed it meanwhile.
            locked = lock_campaign(session, campaign.id)
            if locked is None or locked.status != CampaignStatus.ACTIVE:
                continue
            campaign = locked
            pause_campaign(session, campaign, reason=(
                f"Paused automatically: {rate.bounced} of {rate.sent} emails hard-bounced "
                f"({rate.rate:.1%}, above {max_rate:.0%}). Clean the lead list, then resume."))
            paused.append(rate)
    return paused
