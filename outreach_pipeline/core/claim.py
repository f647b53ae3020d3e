"""Taking due jobs to send: the sending window, the daily caps and the gap, then one atomic claim.

Order per run: jobs outside their window are moved to its next opening (so they are not claimed
and not counted again), then each claim takes, from the first active campaign with due jobs that has
something to give, what its budget allows, follow-ups before first emails. On PostgreSQL the campaign
row (and its sender's cap row) is locked for the claim transaction so concurrent senders never both
spend the same budget, and the jobs themselves are taken with FOR UPDATE SKIP LOCKED so they never
take the same job.

Two clocks: `now` schedules (windows, daily caps, the gap) and may be any moment a run is asked to act at;
`claimed_at` is the wall clock when the claim was made, which the lease is measured from, and doubles as
the claim's token: a sender renews its claim just before sending and sends only what is still its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.schedule_window import SendingWindow, local_day_start, next_opening, zone_or_utc
from outreach_pipeline.db.dialect import among, insert_ignoring_conflicts, is_postgresql
from outreach_pipeline.db.locks import lock_campaign
from outreach_pipeline.db.models import (
    Campaign,
    CampaignStatus,
    EmailJob,
    JobStatus,
    Lead,
    SendCount,
    SenderLimit,
    SenderPacing,
    job_status_is,
)

_ALWAYS_OPEN = and_(Campaign.window_start_hour == 0, Campaign.window_end_hour >= 24,
                    Campaign.send_days == "0123456")


def window_of(campaign: Campaign, lead_timezone: str | None = None) -> SendingWindow:
    """The campaign's window, read in the lead's own timezone when the lead has one."""
    return SendingWindow(lead_timezone or campaign.timezone, campaign.window_start_hour,
                         campaign.window_end_hour, campaign.send_days)


def defer_closed_windows(session: Session, due_before: datetime, now: datetime) -> int:
    """Move due jobs whose window is closed at `now` to its next opening; returns how many moved."""
    groups = session.execute(
        select(EmailJob.campaign_id, Lead.timezone).distinct()
        .join(Lead, Lead.id == EmailJob.lead_id).join(Campaign, Campaign.id == EmailJob.campaign_id)
        .where(job_status_is(JobStatus.PENDING), EmailJob.due_at <= due_before,
               Campaign.status == CampaignStatus.ACTIVE, ~_ALWAYS_OPEN)
    ).all()
    moved = 0
    for campaign_id, lead_timezone in groups:
        campaign = session.get_one(Campaign, campaign_id)
        opening = next_opening(window_of(campaign, lead_timezone), now)
        if opening == now:
            continue
        same_zone = Lead.timezone.is_(None) if lead_timezone is None else Lead.timezone == lead_timezone
        leads = select(Lead.id).where(Lead.campaign_id == campaign_id, same_zone)
        moved += session.execute(
            update(EmailJob).where(EmailJob.campaign_id == campaign_id, job_status_is(JobStatus.PENDING),
                                   EmailJob.due_at <= due_before, EmailJob.lead_id.in_(leads))
            .values(due_at=opening).execution_options(synchronize_session=False)
        ).rowcount or 0
    return moved


CampaignScope = Callable[[Any], ColumnElement[bool]]  # a campaign_id column -> the campaigns that count


def _used_today(session: Session, since: datetime, campaigns: CampaignScope) -> int:
    """Emails sent since `since` or in flight: what today's budget has already spent. Sent ones are summed
    from the quarter-hour SendCounts (a day's few dozen rows however much it sent); the in-flight ones are
    counted on their partial index, which holds only jobs SENDING. Both in one round trip."""
    sent = select(func.coalesce(func.sum(SendCount.sent), 0)).where(
        SendCount.quarter >= since, campaigns(SendCount.campaign_id))
    sending = select(func.count()).select_from(EmailJob).where(
        job_status_is(JobStatus.SENDING), campaigns(EmailJob.campaign_id))
    return session.connection().scalar(select(sent.scalar_subquery() + sending.scalar_subquery())) or 0


def sender_address(campaign: Campaign, default_from: str) -> str:
    """The address the campaign's mail goes out from, lowercased: its own, else the configured default From
    (which may carry a display name); "" only when neither is set."""
    return (campaign.sender_email or parseaddr(default_from)[1]).lower()


def _campaigns_sending_from(sender: str, default_from: str) -> CampaignScope:
    """Campaigns whose mail goes out from `sender`, those using the default From included."""
    default = parseaddr(default_from)[1]
    used = func.coalesce(func.nullif(Campaign.sender_email, ""), literal(default))
    return lambda campaign_id: campaign_id.in_(select(Campaign.id).where(func.lower(used) == sender))


def remaining_today(session: Session, campaign: Campaign, now: datetime, default_from: str = "") -> int:
    """The campaign's daily cap, and its sender address's cap, minus what each has used today (local day)."""
    since = local_day_start(zone_or_utc(campaign.timezone), now)
    left = campaign.daily_cap - _used_today(session, since, lambda campaign_id: campaign_id == campaign.id)
    sender = sender_address(campaign, default_from)
    # Locked on PostgreSQL until the claim commits (SQLite takes no row locks): claims of campaigns sharing
    # the address take turns with its budget. Taken under the campaign's own lock, in the savepoint that
    # claim_due_jobs releases when the campaign gives nothing: a claim holds one campaign's locks at most.
    cap = session.connection().scalar(
        select(SenderLimit.daily_cap).where(SenderLimit.email == sender).with_for_update()) if sender else None
    if cap is not None:
        left = min(left, cap - _used_today(session, since, _campaigns_sending_from(sender, default_from)))
    return max(left, 0)


def _sender_pacing(session: Session, campaign: Campaign, sender: str) -> SenderPacing:
    """The sender address's pacing row, made on first use; locked for this claim on PostgreSQL, so two
    campaigns sending from one address never both take its next slot."""
    key = sender or f"campaign:{campaign.id}"
    session.execute(insert_ignoring_conflicts(session, SenderPacing, ["email"]), [{"email": key}])
    # populate_existing: read next_send_at as it is once the lock is ours, not as first loaded.
    query = select(SenderPacing).where(SenderPacing.email == key).execution_options(populate_existing=True)
    return session.scalars(query.with_for_update() if is_postgresql(session) else query).one()


def _claim_step(session: Session, campaign_id: int, due_before: datetime, claimed_at: datetime, follow_ups: bool,
                limit: int) -> list[int]:
    step = EmailJob.step_number > 1 if follow_ups else EmailJob.step_number == 1
    due = (select(EmailJob.id)
           .where(EmailJob.campaign_id == campaign_id, job_status_is(JobStatus.PENDING), step,
                  EmailJob.due_at <= due_before)
           .order_by(EmailJob.due_at, EmailJob.id).limit(limit))
    if is_postgresql(session):
        due = due.with_for_update(skip_locked=True)
    # A MATERIALIZED CTE runs the LIMITed, SKIP LOCKED select exactly once: as `id IN (subquery)`
    # PostgreSQL may re-run the subquery per row and take more rows than the limit (seen: 4 for 2).
    chosen = due.cte("due").prefix_with("MATERIALIZED", dialect="postgresql")
    # On the connection: the ORM would match every returned id against the session, which holds no job.
    return list(session.connection().scalars(
        update(EmailJob)
        .where(EmailJob.id == chosen.c.id, job_status_is(JobStatus.PENDING))
        .values(status=JobStatus.SENDING, attempts=EmailJob.attempts + 1, claimed_at=claimed_at)
        .returning(EmailJob.id)
    ).all())


def claim_for_campaign(session: Session, campaign: Campaign, due_before: datetime, now: datetime, limit: int,
                       claimed_at: datetime, default_from: str = "") -> list[int]:
    """Claim up to `limit` due jobs of one campaign within its budget, follow-ups first, stamped `claimed_at`.
    The caller holds the campaign's row lock (claim_due_jobs)."""
    sender = sender_address(campaign, default_from)
    budget = min(limit, remaining_today(session, campaign, now, default_from))
    pacing = _sender_pacing(session, campaign, sender) if campaign.send_gap_seconds > 0 else None
    if pacing is not None:
        if pacing.next_send_at is not None and pacing.next_send_at > now:
            return []
        budget = min(budget, 1)  # one email, then a random pause of gap..2*gap before the address's next
    if budget <= 0:
        return []
    claimed = _claim_step(session, campaign.id, due_before, claimed_at, True, budget)
    if len(claimed) < budget:
        claimed += _claim_step(session, campaign.id, due_before, claimed_at, False, budget - len(claimed))
    if claimed and pacing is not None:
        pacing.next_send_at = now + timedelta(seconds=campaign.send_gap_seconds * (1 + random.random()))
    return sorted(claimed)


def campaigns_with_due_jobs(session: Session, due_before: datetime) -> list[int]:
    return list(session.connection().scalars(
        select(Campaign.id).where(Campaign.status == CampaignStatus.ACTIVE, select(EmailJob.id).where(
            EmailJob.campaign_id == Campaign.id, job_status_is(JobStatus.PENDING),
            EmailJob.due_at <= due_before).exists()).order_by(Campaign.id)
    ).all())


def claim_due_jobs(session: Session, due_before: datetime, limit: int, now: datetime, claimed_at: datetime,
                   default_from: str = "", spent: set[int] | None = None) -> list[int]:
    """Mark up to `limit` due, in-window, within-budget jobs of the first campaign that has some SENDING,
    claimed at `claimed_at` (the wall clock, which the lease runs from), and return their ids; [] when no
    campaign has any. `default_from` is the From of campaigns without one. `spent` (a run's, across its
    claims) holds the campaigns found with nothing to give: they are skipped, so a run's every claim does
    not try each again."""
    postgresql = is_postgresql(session)
    for campaign_id in campaigns_with_due_jobs(session, due_before):
        if spent is not None and campaign_id in spent:
            continue
        # One campaign a claim, each tried in a savepoint: rolling back one that gives nothing (its budget
        # spent, its sender's gap not over) releases its row lock and its sender's. So a claim never holds
        # two campaigns' locks, and two claims whose campaigns share a sender cannot wait on each other.
        # SQLite has no row locks (and one writer at a time): no savepoint needed.
        savepoint = session.begin_nested() if postgresql else None
        # Loaded and locked in one statement (db/locks.py): claims of one campaign take turns with its budget,
        # and a pause committed while we waited for the lock holds.
        campaign = lock_campaign(session, campaign_id)
        claimed = (claim_for_campaign(session, campaign, due_before, now, limit, claimed_at, default_from)
                   if campaign is not None and campaign.status == CampaignStatus.ACTIVE else [])
        if claimed:
            if savepoint is not None:
                savepoint.commit()
            return claimed
        if spent is not None:
            # Nothing to give, and nothing will be within the run: its budget is spent, its sender's gap runs
            # past the run's `now`, it is no longer ACTIVE, or its due jobs went to another claim.
            spent.add(campaign_id)
        if savepoint is not None:
            savepoint.rollback()
    return []


def renew_claim(session: Session, job_ids: list[int], claimed_at: datetime, renewed_at: datetime) -> list[int]:
    """Restart the lease of jobs claimed at `claimed_at` that are still this claim's, and return those.

    A batch may wait after its claim (queued behind others): by then a reconciler may have taken a job back
    as abandoned and another run claimed it again. Only jobs still SENDING under this very claim are ours
    to send; the reconciler locks a job before settling it, so the two never both win."""
    return sorted(session.connection().scalars(
        update(EmailJob)
        .where(among(session, EmailJob.id, job_ids), job_status_is(JobStatus.SENDING),
               EmailJob.claimed_at == claimed_at)
        .values(claimed_at=renewed_at).returning(EmailJob.id)
    ).all())
