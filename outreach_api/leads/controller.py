"""Leads of a campaign: add as JSON, import a CSV upload, copy from another campaign, list."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.status_codes import HTTP_400_BAD_REQUEST
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from outreach_api.context import Services
from outreach_api.errors import problem
from outreach_api.security import CurrentUser
from outreach_pipeline.core.campaigns import get_campaign
from outreach_pipeline.core.leads import ImportReport, add_leads, copy_leads, import_leads_csv, list_leads
from outreach_pipeline.db.models import LeadStatus

Req = Request[CurrentUser, Any, Any]
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # larger lists go through the bucket


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra keys become custom fields
    email: str = Field(max_length=320)
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    company: str | None = Field(None, max_length=300)
    title: str | None = Field(None, max_length=300)
    timezone: str | None = Field(None, max_length=64)


class LeadsIn(BaseModel):
    leads: list[LeadIn] = Field(min_length=1, max_length=10_000)


class CopyIn(BaseModel):
    source_campaign_id: int


class RejectOut(BaseModel):
    line: int
    email: str
    reason: str


class ImportOut(BaseModel):
    import_id: int | None
    rows_read: int
    stored: int
    rejected: int
    rejected_by_reason: dict[str, int]
    first_rejects: list[RejectOut]


class LeadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    title: str | None
    timezone: str | None
    custom_fields: dict[str, Any]
    status: LeadStatus
    created_at: datetime
    replied_at: datetime | None


class LeadPage(BaseModel):
    items: list[LeadOut]
    total: int
    limit: int
    offset: int


def import_out(report: ImportReport) -> ImportOut:
    return ImportOut(
        import_id=report.import_id, rows_read=report.rows_read, stored=report.stored, rejected=report.rejected,
        rejected_by_reason=dict(report.reasons),
        first_rejects=[RejectOut(line=r.line, email=r.email, reason=r.reason) for r in report.first_rejects],
    )


async def require_one_file(request: Request[Any, Any, Any]) -> None:
    """A multipart upload must carry one file part: without one Litestar's extractor fails with a 500.

    Checked on the raw form (parsed once, then reused by the extractor) rather than with a form model,
    so the OpenAPI document keeps describing the body as a file upload.
    """
    if request.content_type[0] != RequestEncodingType.MULTI_PART:
        return  # other bodies get Litestar's own 400
    form = await request.form()
    files = [key for key in form if len(form.getall(key)) == 1 and isinstance(form.get(key), UploadFile)]
    if form and not files:
        raise problem(HTTP_400_BAD_REQUEST, "The upload has no file part: send the CSV as one multipart "
                      "field with a filename (e.g. -F file=@leads.csv).")


class LeadController(Controller):
    path = "/api/campaigns/{campaign_id:int}/leads"
    tags = ["leads"]

    @post("/", sync_to_thread=True)
    def add(self, campaign_id: int, data: LeadsIn, request: Req, db: Session) -> ImportOut:
        """Add leads as JSON; they pass the same checks as a CSV row ("line" is the position, from 1)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        rows = [lead.model_dump(exclude_none=True) for lead in data.leads]
        return import_out(add_leads(db, campaign, rows))

    @get("/", sync_to_thread=True)
    def list(
        self, campaign_id: int, request: Req, db: Session, status: LeadStatus | None = None,
        limit: int = Parameter(default=100, ge=1, le=1000), offset: int = Parameter(default=0, ge=0),
    ) -> LeadPage:
        campaign = get_campaign(db, request.user.id, campaign_id)
        leads, total = list_leads(db, campaign, status, limit, offset)
        return LeadPage(items=[LeadOut.model_validate(lead) for lead in leads], total=total, limit=limit,
                        offset=offset)

    @post("/import", sync_to_thread=True, request_max_body_size=MAX_UPLOAD_BYTES, before_request=require_one_file)
    def import_csv(
        self, campaign_id: int, data: Annotated[UploadFile, Body(media_type=RequestEncodingType.MULTI_PART)],
        request: Req, db: Session, services: Services,
    ) -> ImportOut:
        """Import a CSV upload (up to 20 MB; drop larger files in the bucket)."""
        campaign = get_campaign(db, request.user.id, campaign_id)
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", data.filename or "upload.csv")[:100]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        rejects = services.settings.data_dir / "imports" / str(campaign.id) / f"{stamp}-{safe_name}.rejects.csv"
        report = import_leads_csv(db, campaign, data.file, source=f"upload:{safe_name}", rejects_path=rejects)
        return import_out(report)

    @post("/copy", sync_to_thread=True)
    def copy(self, campaign_id: int, data: CopyIn, request: Req, db: Session) -> ImportOut:
        """Copy leads from another of your campaigns (same dedupe and suppression rules)."""
        target = get_campaign(db, request.user.id, campaign_id)
        source = get_campaign(db, request.user.id, data.source_campaign_id)
        return import_out(copy_leads(db, target, source))
