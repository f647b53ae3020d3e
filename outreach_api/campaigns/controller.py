"""Campaign control: create, list, read with stats, edit drafts, launch, pause, resume, complete, duplicate.

Status changes read the campaign with its row locked (see core.get_campaign), so concurrent ones queue.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, patch, post
from litestar.params import Parameter
from sqlalchemy.orm import Session

from outreach_api.campaigns.schemas import (
    CampaignDetail,
    CampaignOut,
    CampaignPage,
    CompleteOut,
    LaunchOut,
    campaign_out,
)
from outreach_api.context import Services
from outreach_api.security import CurrentUser
from outreach_pipeline.core import campaigns as core
from outreach_pipeline.core.generation_stats import Prices
from outreach_pipeline.db.models import CampaignStatus

Req = Request[CurrentUser, Any, Any]
MAX_OFFSET = 10_000_000  # deeper than any real list; keeps the number inside what the database takes


class CampaignController(Controller):
    path = "/api/campaigns"
    tags = ["campaigns"]

    @post("/", sync_to_thread=True)
    def create(self, data: core.CampaignCreate, request: Req, db: Session) -> CampaignOut:
        return campaign_out(core.create_campaign(db, request.user.id, data))

    @get("/", sync_to_thread=True)
    def list(
        self, request: Req, db: Session, status: CampaignStatus | None = None,
        limit: int = Parameter(default=50, ge=1, le=500), offset: int = Parameter(default=0, ge=0, le=MAX_OFFSET),
    ) -> CampaignPage:
        items, total = core.list_campaigns(db, request.user.id, status, limit, offset)
        return CampaignPage(items=[campaign_out(c) for c in items], total=total, limit=limit, offset=offset)

    @get("/{campaign_id:int}", sync_to_thread=True)
    def detail(self, campaign_id: int, request: Req, db: Session, services: Services) -> CampaignDetail:
        campaign = core.get_campaign(db, request.user.id, campaign_id)
        settings = services.settings
        prices = Prices(settings.llm_input_price_per_mtok, settings.llm_output_price_per_mtok)
        return CampaignDetail(**campaign_out(campaign).model_dump(), stats=core.campaign_stats(db, campaign, prices))

    @patch("/{campaign_id:int}", sync_to_thread=True)
    def update(self, campaign_id: int, data: core.CampaignUpdate, request: Req, db: Session) -> CampaignOut:
        campaign = core.get_campaign(db, request.user.id, campaign_id, lock=True)
        return campaign_out(core.update_campaign(db, campaign, data))

    @post("/{campaign_id:int}/launch", status_code=200, sync_to_thread=True)
    def launch(self, campaign_id: int, request: Req, db: Session, services: Services) -> LaunchOut:
        campaign = core.get_campaign(db, request.user.id, campaign_id, lock=True)
        queued = core.launch_campaign(db, campaign, default_from=services.settings.from_email)
        return LaunchOut(campaign=campaign_out(campaign), queued_emails=queued)

    @post("/{campaign_id:int}/pause", status_code=200, sync_to_thread=True)
    def pause(self, campaign_id: int, request: Req, db: Session) -> CampaignOut:
        campaign = core.get_campaign(db, request.user.id, campaign_id, lock=True)
        core.pause_campaign(db, campaign)
        return campaign_out(campaign)

    @post("/{campaign_id:int}/resume", status_code=200, sync_to_thread=True)
    def resume(self, campaign_id: int, request: Req, db: Session) -> CampaignOut:
        campaign = core.get_campaign(db, request.user.id, campaign_id, lock=True)
        core.resume_campaign(db, campaign)
        return campaign_out(campaign)

    @post("/{campaign_id:int}/complete", status_code=200, sync_to_thread=True)
    def complete(self, campaign_id: int, request: Req, db: Session) -> CompleteOut:
        """End an ACTIVE or PAUSED campaign now: its pending emails are skipped, never sent."""
        campaign = core.get_campaign(db, request.user.id, campaign_id, lock=True)
        skipped = core.complete_campaign(db, campaign)
        return CompleteOut(campaign=campaign_out(campaign), skipped_emails=skipped)

    @post("/{campaign_id:int}/duplicate", sync_to_thread=True)
    def duplicate(self, campaign_id: int, request: Req, db: Session) -> CampaignOut:
        campaign = core.get_campaign(db, request.user.id, campaign_id)
        return campaign_out(core.duplicate_campaign(db, campaign))
