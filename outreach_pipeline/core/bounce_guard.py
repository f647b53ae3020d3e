"""A campaign whose hard-bounce rate passes a threshold pauses itself: a bad list burns the sender's domain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.core.campaigns import campaign_counts, pause_campaign
from outreach_pipeline.db.models import Campaign, CampaignStatus, JobStatus, LeadStatus


@dataclass(frozen=True)
class BounceRate:
    campaign_id: int
    sent: int
    bounced: int

    @property
    def rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0


def bounce_rate(session: Session, campaign_id: int) -> BounceRate:
    """Leads BOUNCED over emails sent (a lead's first email is where a dead address shows), from the counters."""
    counts = campaign_counts(session, campaign_id)
    sent = sum(c.n for c in counts if c.kind == "job" and c.status == JobStatus.SENT.value)
    bounced = sum(c.n for c in counts if c.kind == "lead" and c.status == LeadStatus.BOUNCED.value)
    return BounceRate(campaign_id, sent, bounced)


def pause_bouncing_campaigns(session: Session, max_rate: float, min_sent: int) -> list[BounceRate]:
    """Pause every ACTIVE campaign over `max_rate` once it has sent `min_sent`; returns the ones paused."""
    paused: list[BounceRate] = []
    for campaign in session.scalars(select(Campaign).where(Campaign.status == CampaignStatus.ACTIVE)).all():
        rate = bounce_rate(session, campaign.id)
        if rate.sent >= min_sent and rate.rate > max_rate:
            pause_campaign(session, campaign, reason=(
                f"Paused automatically: {rate.bounced} of {rate.sent} emails hard-bounced "
                f"({rate.rate:.1%}, above {max_rate:.0%}). Clean the lead list, then resume."))
            paused.append(rate)
    return paused
