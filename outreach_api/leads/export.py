"""`GET /api/campaigns/{id}/leads/export`: the campaign's leads with their status, streamed as CSV.

Streamed in id order, a page of rows at a time on its own session, so a campaign of a million leads
never sits in memory. Cells that a spreadsheet would run as a formula are defused with a leading quote.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from litestar import Controller, Request, get
from litestar.response import Stream
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach_api.context import Services
from outreach_api.security import CurrentUser
from outreach_pipeline.core.campaigns import get_campaign
from outreach_pipeline.core.rejects import spreadsheet_safe
from outreach_pipeline.db.models import Lead, LeadStatus

COLUMNS = ("email", "first_name", "last_name", "company", "title", "status", "created_at", "replied_at")
PAGE = 1000


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return spreadsheet_safe(str(value))


def _line(values: tuple[Any, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def lead_rows(sessions: sessionmaker[Session], campaign_id: int, status: LeadStatus | None) -> Iterator[str]:
    """The header, then one CSV line per lead; keyset pages keep each query short."""
    yield _line(COLUMNS)
    after = 0
    while True:
        with sessions() as session:
            query = select(Lead.id, *(getattr(Lead, column) for column in COLUMNS)).where(
                Lead.campaign_id == campaign_id, Lead.id > after)
            if status is not None:
                query = query.where(Lead.status == status)
            rows = session.execute(query.order_by(Lead.id).limit(PAGE)).all()
        if not rows:
            return
        yield "".join(_line(tuple(_cell(value) for value in row[1:])) for row in rows)
        after = rows[-1][0]


class LeadExportController(Controller):
    path = "/api/campaigns/{campaign_id:int}/leads/export"
    tags = ["leads"]

    @get("/", sync_to_thread=True, media_type="text/csv")
    def export(
        self, campaign_id: int, request: Request[CurrentUser, Any, Any], db: Session, services: Services,
        status: LeadStatus | None = None,
    ) -> Stream:
        """Every lead of the campaign (optionally of one status) with its status, as a CSV download."""
        campaign = get_campaign(db, request.user.id, campaign_id)  # someone else's campaign is a 404
        return Stream(
            lead_rows(services.sessions, campaign.id, status),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="campaign-{campaign.id}-leads.csv"'},
        )
