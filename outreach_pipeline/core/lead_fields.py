"""The fields a lead has, without the import machinery: the send path and the launch checks need them,
and importing pandas and pandera for three names cost a spawned send process most of its start."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.db.models import Campaign, Lead

STANDARD_FIELDS: tuple[str, ...] = ("email", "first_name", "last_name", "company", "title", "timezone")

# Syntax only (no network): a local part, one '@', dot-separated labels, an alphabetic TLD.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def lead_fields(session: Session, campaign: Campaign, sample: int = 1000) -> list[str]:
    """Fields templates may use: the standard ones and custom fields seen among the campaign's leads."""
    custom: set[str] = set()
    for fields in session.scalars(select(Lead.custom_fields).where(Lead.campaign_id == campaign.id).limit(sample)):
        custom.update(fields or {})
    return [f for f in STANDARD_FIELDS if f != "timezone"] + sorted(custom)
