"""The campaign row lock that status changes, send claims, imports and the bounce guard take turns on."""

from __future__ import annotations

from sqlalchemy.orm import Session

from outreach_pipeline.db.models import Campaign


def lock_campaign(session: Session, campaign_id: int) -> Campaign | None:
    """The campaign, read again under its row lock, held until commit (PostgreSQL; SQLite takes no row locks).

    FOR NO KEY UPDATE: it serialises everything that checks a campaign's status or budget and then acts,
    while rows that only point at the campaign (jobs, send counts) are inserted without waiting on it; a
    plain FOR UPDATE made a claimer and a sender recording its sends deadlock. Read again: a change
    committed while we waited for the lock counts, and the session's own object is refreshed in place.
    """
    return session.get(Campaign, campaign_id, with_for_update={"key_share": True}, populate_existing=True)
