"""Campaign shapes on the wire (requests reuse the core's CampaignCreate/CampaignUpdate)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from outreach_pipeline.core.campaigns import CampaignStats
from outreach_pipeline.db.models import Campaign, CampaignStatus


class StepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    number: int
    delay_days: int
    subject_hint: str
    thread: bool


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    status: CampaignStatus
    pitch: str
    tone: str
    sender_name: str
    sender_email: str
    timezone: str
    window_start_hour: int
    window_end_hour: int
    send_days: str
    daily_cap: int
    send_gap_seconds: int
    postal_address: str | None
    steps: list[StepOut]
    created_at: datetime
    launched_at: datetime | None
    completed_at: datetime | None


class CampaignDetail(CampaignOut):
    stats: CampaignStats


class CampaignPage(BaseModel):
    items: list[CampaignOut]
    total: int
    limit: int
    offset: int


class LaunchOut(BaseModel):
    campaign: CampaignOut
    queued_emails: int


class CompleteOut(BaseModel):
    campaign: CampaignOut
    skipped_emails: int  # pending emails that will not be sent


def campaign_out(campaign: Campaign) -> CampaignOut:
    return CampaignOut.model_validate(campaign)
