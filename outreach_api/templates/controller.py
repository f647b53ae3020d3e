"""Templates of a campaign: write by hand, generate one step or all, rewrite with an instruction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, get, patch, post
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from outreach_api.context import Services
from outreach_api.security import CurrentUser
from outreach_pipeline.core import templates as core
from outreach_pipeline.core.campaigns import get_campaign

Req = Request[CurrentUser, Any, Any]


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    step_number: int
    variant: str
    subject: str
    body: str
    source: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    updated_at: datetime


class GenerateIn(BaseModel):
    step_number: int = Field(ge=1, le=10)
    overwrite: bool = True


class GenerateAllIn(BaseModel):
    overwrite: bool = False


class RewriteIn(BaseModel):
    instruction: str = Field(min_length=1, max_length=500)


def _out(templates: list[Any]) -> list[TemplateOut]:
    return [TemplateOut.model_validate(t) for t in templates]


class TemplateController(Controller):
    path = "/api/campaigns/{campaign_id:int}/templates"
    tags = ["templates"]

    @post("/", sync_to_thread=True)
    def create(self, campaign_id: int, data: core.TemplateInput, request: Req, db: Session) -> TemplateOut:
        """Save a hand-written template (replaces the step's template of the same variant)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        return TemplateOut.model_validate(core.save_template(db, campaign, data))

    @get("/", sync_to_thread=True)
    def list(self, campaign_id: int, request: Req, db: Session) -> list[TemplateOut]:
        return _out(core.list_templates(db, get_campaign(db, request.user.id, campaign_id)))

    @patch("/{template_id:int}", sync_to_thread=True)
    def edit(self, campaign_id: int, template_id: int, data: core.TemplateEdit, request: Req, db: Session) -> TemplateOut:
        campaign = get_campaign(db, request.user.id, campaign_id)
        template = core.get_template(db, campaign, template_id)
        return TemplateOut.model_validate(core.edit_template(db, campaign, template, data))

    @post("/generate", sync_to_thread=True)
    def generate(self, campaign_id: int, data: GenerateIn, request: Req, db: Session, services: Services) -> list[TemplateOut]:
        """Write one step's template with the configured writer."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        report = core.generate_templates(db, campaign, services.writer, [data.step_number], overwrite=data.overwrite)
        return _out(report.templates)

    @post("/generate-all", sync_to_thread=True)
    def generate_all(
        self, campaign_id: int, request: Req, db: Session, services: Services, data: GenerateAllIn | None = None
    ) -> list[TemplateOut]:
        """Write every step's template (only missing ones unless overwrite is true)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        overwrite = data.overwrite if data else False
        core.generate_templates(db, campaign, services.writer, overwrite=overwrite)
        return _out(core.list_templates(db, campaign))

    @post("/{template_id:int}/rewrite", status_code=200, sync_to_thread=True)
    def rewrite(
        self, campaign_id: int, template_id: int, data: RewriteIn, request: Req, db: Session, services: Services
    ) -> TemplateOut:
        campaign = get_campaign(db, request.user.id, campaign_id)
        template = core.get_template(db, campaign, template_id)
        return TemplateOut.model_validate(core.rewrite_template(db, campaign, template, services.writer, data.instruction))
