"""Templates of a campaign: write by hand, generate one step or all (with A/B variants), rewrite with an
instruction; per-lead openers; variant reply stats and what generation cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, get, patch, post
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from outreach_api.context import Services
from outreach_api.security import CurrentUser
from outreach_pipeline.core import openers
from outreach_pipeline.core import templates as core
from outreach_pipeline.core.campaigns import get_campaign
from outreach_pipeline.core.generation_stats import GenerationUsage, Prices, VariantStats, generation_usage, variant_stats

Req = Request[CurrentUser, Any, Any]


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    step_number: int
    variant: str
    subject: str
    body: str
    html_body: str | None
    source: str
    model: str | None
    prompt_version: str | None
    prompt_tokens: int
    completion_tokens: int
    warnings: list[str]
    created_at: datetime
    updated_at: datetime


class GenerateIn(BaseModel):
    step_number: int = Field(ge=1, le=10)
    overwrite: bool = True
    variants: int = Field(1, ge=1, le=core.MAX_VARIANTS, description="A/B variants to write (A, B, ...).")
    use_ai_opener: bool = Field(False, description="Open the first email with the per-lead {{ai_opener}} line.")
    fresh: bool = Field(False, description="Ask the model again instead of reusing a cached answer.")


class GenerateAllIn(BaseModel):
    overwrite: bool = False
    variants: int = Field(1, ge=1, le=core.MAX_VARIANTS)
    use_ai_opener: bool = False
    fresh: bool = False


class RewriteIn(BaseModel):
    instruction: str = Field(min_length=1, max_length=500)


class OpenersOut(BaseModel):
    leads: int
    written: int
    cache_hits: int
    failed: int
    model_requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: dict[int, str]
    missing: list[str]  # what launch would report about openers after this run


def _out(templates: list[Any]) -> list[TemplateOut]:
    return [TemplateOut.model_validate(t) for t in templates]


def _prices(services: Services) -> Prices:
    return Prices(services.settings.llm_input_price_per_mtok, services.settings.llm_output_price_per_mtok)


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
        """Write one step's template (and its A/B variants) with the configured writer."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        report = core.generate_templates(db, campaign, services.writer, [data.step_number], overwrite=data.overwrite,
                                         variants=data.variants, use_ai_opener=data.use_ai_opener,
                                         use_cache=not data.fresh)
        return _out(report.templates)

    @post("/generate-all", sync_to_thread=True)
    def generate_all(
        self, campaign_id: int, request: Req, db: Session, services: Services, data: GenerateAllIn | None = None
    ) -> list[TemplateOut]:
        """Write every step's template (only missing ones unless overwrite is true)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        data = data or GenerateAllIn()
        core.generate_templates(db, campaign, services.writer, overwrite=data.overwrite, variants=data.variants,
                                use_ai_opener=data.use_ai_opener, use_cache=not data.fresh)
        return _out(core.list_templates(db, campaign))

    @post("/{template_id:int}/rewrite", status_code=200, sync_to_thread=True)
    def rewrite(
        self, campaign_id: int, template_id: int, data: RewriteIn, request: Req, db: Session, services: Services
    ) -> TemplateOut:
        campaign = get_campaign(db, request.user.id, campaign_id)
        template = core.get_template(db, campaign, template_id)
        return TemplateOut.model_validate(core.rewrite_template(db, campaign, template, services.writer, data.instruction))

    @post("/openers", status_code=200, sync_to_thread=True)
    def generate_openers(self, campaign_id: int, request: Req, db: Session, services: Services) -> OpenersOut:
        """Write the {{ai_opener}} line of every waiting lead that has none yet (failed ones again)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        # The batch commits as it goes, in its own sessions: release this request's read first.
        db.commit()
        report = openers.generate_openers(services.sessions, services.writer, campaign.id,
                                          concurrency=services.settings.llm_concurrency)
        return OpenersOut(leads=report.leads, written=report.written, cache_hits=report.cache_hits,
                          failed=report.failed, model_requests=report.model_requests,
                          prompt_tokens=report.prompt_tokens, completion_tokens=report.completion_tokens,
                          errors=report.errors, missing=openers.missing_opener_problems(db, campaign))

    @get("/variant-stats", sync_to_thread=True)
    def variants(self, campaign_id: int, request: Req, db: Session) -> list[VariantStats]:
        """Sent emails and replies per step and variant."""
        return variant_stats(db, get_campaign(db, request.user.id, campaign_id))

    @get("/usage", sync_to_thread=True)
    def usage(self, campaign_id: int, request: Req, db: Session, services: Services) -> GenerationUsage:
        """Tokens spent generating this campaign's templates and openers, and the estimated cost."""
        return generation_usage(db, get_campaign(db, request.user.id, campaign_id), _prices(services))
