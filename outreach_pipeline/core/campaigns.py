"""Campaigns: settings, the status machine DRAFT -> ACTIVE <-> PAUSED -> COMPLETED, and stats."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any
from zoneinfo import available_timezones

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from sqlalchemy import BigInteger, and_, cast, delete, func, insert, select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from outreach_pipeline.core.generation_stats import (
    GenerationUsage,
    Prices,
    generation_usage,
)
from outreach_pipeline.core.jobs import schedule_first_jobs
from outreach_pipeline.core.lead_fields import EMAIL_PATTERN, lead_fields
from outreach_pipeline.core.openers import missing_opener_problems
from outreach_pipeline.core.pacing import spread_overdue_jobs
from outreach_pipeline.core.placeholders import AI_OPENER, find_placeholders, template_text
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.locks import lock_campaign
from outreach_pipeline.db.models import (
    Campaign,
    CampaignCount,
    CampaignStatus,
    CampaignStep,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    Template,
    job_status_is,
    lead_custom_field,
)
from outreach_pipeline.settings import Settings


_EMAIL = re.compile(EMAIL_PATTERN)


class StepSpec(BaseModel):
    delay_days: int = Field(0, ge=0, le=365, description="Days after the previous step (ignored for step 1).")
    subject_hint: str = Field("", max_length=300)
    thread: bool = Field(True, description="Send as a reply to the first email (ignored for step 1).")


class CampaignSettings(BaseModel):
    """Fields shared by create and update; every one optional on update."""

    pitch: str | None = Field(None, max_length=5000)
    tone: str | None = Field(None, max_length=100)
    sender_name: str | None = Field(None, max_length=200)
    sender_email: str | None = Field(None, max_length=320, description="Empty: the configured default From.")
    timezone: str | None = None
    window_start_hour: int | None = Field(None, ge=0, le=23)
    window_end_hour: int | None = Field(None, ge=1, le=24)
    send_days: str | None = Field(None, pattern=r"^[0-6]{1,7}$", description="Weekdays to send on, Monday=0.")
    daily_cap: int | None = Field(None, ge=1, le=100_000)
    send_gap_seconds: int | None = Field(None, ge=0, le=86_400, description=(
        "Seconds between two sends from the sender address, drawn at random in [gap, 2*gap]; 0 sends back to back."))
    postal_address: str | None = Field(None, max_length=500, description="Printed under every email (CAN-SPAM).")
    steps: list[StepSpec] | None = Field(None, min_length=1, max_length=10)

    @field_validator("sender_email")
    @classmethod
    def _plain_address(cls, value: str | None) -> str | None:
        # The rule lead addresses pass: a looser one let "ada,ops@x.example" through, and Postmark then
        # refused every message of the campaign. Empty means the configured default From.
        if value and not _EMAIL.fullmatch(value):
            raise ValueError(f"invalid email {value!r}: a plain address like ada@example.com, no display name")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in available_timezones():
            raise ValueError(f"unknown timezone {value!r} (use an IANA name like 'Europe/Berlin')")
        return value

    @field_validator("window_end_hour")
    @classmethod
    def _window_order(cls, end: int | None, info: ValidationInfo) -> int | None:
        # On the end hour rather than the model, so the error names a field.
        start = info.data.get("window_start_hour")
        if start is not None and end is not None and start >= end:
            raise ValueError("window_start_hour must be before window_end_hour")
        return end


class CampaignCreate(CampaignSettings):
    name: str = Field(min_length=1, max_length=200)


class CampaignUpdate(CampaignSettings):
    name: str | None = Field(None, min_length=1, max_length=200)


class CampaignStats(BaseModel):
    leads_total: int
    leads_by_status: dict[str, int]
    jobs_by_step: dict[int, dict[str, int]]
    # step -> A/B variant -> job status counts; jobs not rendered yet are under "unassigned".
    jobs_by_variant: dict[int, dict[str, dict[str, int]]] = Field(default_factory=dict)
    sent: int
    delivered: int
    replied: int
    bounced: int
    unsubscribed: int
    # Rates of contacted leads (delivery: of emails sent); opens and clicks are not counted yet.
    reply_rate: float
    bounce_rate: float
    delivery_rate: float
    unsubscribe_rate: float
    # Set when the engine paused the campaign itself (hard-bounce rate), with the figures.
    paused_reason: str | None = None
    # Model tokens spent on the campaign's templates and openers, with their estimated cost.
    generation: GenerationUsage | None = None


# --- reading ---------------------------------------------------------------------------------


MAX_ROW_ID = 2**31 - 1  # ids are INTEGER columns: a larger one names no row (PostgreSQL would refuse it)


def get_campaign(session: Session, owner_id: int, campaign_id: int, *, lock: bool = False) -> Campaign:
    """The owner's campaign. `lock` holds its row until commit (db/locks.py), so status changes that check
    then change the status run one at a time: two launches at once are one launch and a 409."""
    if not 0 < campaign_id <= MAX_ROW_ID:
        raise NotFoundError(f"Campaign {campaign_id} not found.")
    campaign = lock_campaign(session, campaign_id) if lock else session.get(Campaign, campaign_id)
    if campaign is None or campaign.owner_id != owner_id:
        raise NotFoundError(f"Campaign {campaign_id} not found.")
    return campaign


def list_campaigns(
    session: Session, owner_id: int, status: CampaignStatus | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[Campaign], int]:
    query = select(Campaign).where(Campaign.owner_id == owner_id)
    if status is not None:
        query = query.where(Campaign.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Campaign.id.desc()).limit(limit).offset(offset))), total


def campaign_stats(session: Session, campaign: Campaign, prices: Prices | None = None) -> CampaignStats:
    """Read from the trigger-kept counters (`campaign_counts`): a few rows whatever the campaign's size."""
    leads_by_status = {s.value: 0 for s in LeadStatus}
    jobs_by_step: dict[int, dict[str, int]] = {s.number: _no_jobs() for s in campaign.steps}
    jobs_by_variant: dict[int, dict[str, dict[str, int]]] = {}
    variants = {template_id: variant for template_id, variant in session.execute(
        select(Template.id, Template.variant).where(Template.campaign_id == campaign.id))}
    delivered = 0
    for count in campaign_counts(session, campaign.id):
        if count.kind == "lead":
            leads_by_status[count.status] = leads_by_status.get(count.status, 0) + count.n
        if count.kind != "job":  # leads, and the openers' tokens (read by generation_usage)
            continue
        jobs_by_step.setdefault(count.step_number, _no_jobs())[count.status] += count.n
        variant = variants.get(count.template_id, UNRENDERED)
        jobs_by_variant.setdefault(count.step_number, {}).setdefault(variant, _no_jobs())[count.status] += count.n
        delivered += count.n if count.delivered else 0
    sent = sum(step[JobStatus.SENT.value] for step in jobs_by_step.values())
    contacted = sum(leads_by_status[s.value] for s in LeadStatus if s not in (LeadStatus.PENDING, LeadStatus.FAILED))
    replied, bounced = leads_by_status[LeadStatus.REPLIED.value], leads_by_status[LeadStatus.BOUNCED.value]
    unsubscribed = leads_by_status[LeadStatus.UNSUBSCRIBED.value]
    return CampaignStats(
        leads_total=sum(leads_by_status.values()),
        leads_by_status=leads_by_status,
        jobs_by_step=jobs_by_step,
        jobs_by_variant=jobs_by_variant,
        sent=sent,
        delivered=delivered,
        replied=replied,
        bounced=bounced,
        unsubscribed=unsubscribed,
        reply_rate=_rate(replied, contacted),
        bounce_rate=_rate(bounced, contacted),
        delivery_rate=_rate(delivered, sent),
        unsubscribe_rate=_rate(unsubscribed, contacted),
        paused_reason=campaign.paused_reason,
        generation=generation_usage(session, campaign, prices or Prices()),
    )


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _no_jobs() -> dict[str, int]:
    return {j.value: 0 for j in JobStatus}


UNRENDERED = "unassigned"  # the variant of jobs not sent yet: the A/B choice is made when a job is rendered
FOLD_ABOVE = 64  # delta rows of one campaign before a read folds them into one row per key
COUNT_KEY = ("kind", "step_number", "template_id", "status", "delivered")


@dataclass(frozen=True)
class Count:
    kind: str  # lead | job | oprompt | ocompl (tokens spent on openers)
    step_number: int
    template_id: int
    status: str
    delivered: bool
    n: int


def campaign_counts(session: Session, campaign_id: int) -> list[Count]:
    """The campaign's lead and job counts by key, summed from the deltas the triggers appended."""
    counts = CampaignCount.__table__.c
    key = [counts[name] for name in COUNT_KEY]
    # Cast: PostgreSQL sums a bigint into a numeric, which would come back as a Decimal.
    rows = session.execute(select(*key, cast(func.sum(counts.n), BigInteger), func.count())
                           .where(counts.campaign_id == campaign_id)
                           .group_by(*key)).all()
    if sum(row[-1] for row in rows) > FOLD_ABOVE:
        fold_campaign_counts(session, campaign_id)
    return [Count(*row[:-1]) for row in rows if row[-2]]


def fold_campaign_counts(session: Session, campaign_id: int) -> None:
    """Replace a campaign's deltas by one row per key (keys summing to 0 go): the reads stay a few rows.

    DELETE ... RETURNING takes exactly the rows it removes, in one snapshot: a delta a concurrent
    transaction commits meanwhile is neither lost nor counted twice, and no row is ever updated in place,
    so writers never queue behind a fold or one another.
    """
    table = CampaignCount.__table__
    removed = session.execute(delete(table).where(table.c.campaign_id == campaign_id)
                              .returning(*(table.c[name] for name in COUNT_KEY), table.c.n))
    totals: Counter[tuple[Any, ...]] = Counter()
    for *key, n in removed:
        totals[tuple(key)] += n
    folded = [{"campaign_id": campaign_id, **dict(zip(COUNT_KEY, key, strict=True)), "n": n}
              for key, n in totals.items() if n]
    if folded:
        session.execute(insert(table), folded)


# --- changing --------------------------------------------------------------------------------


def _apply(campaign: Campaign, data: CampaignSettings) -> None:
    values = data.model_dump(exclude_unset=True, exclude_none=True, exclude={"steps"})
    for key, value in values.items():
        setattr(campaign, key, value)
    if data.steps is not None:
        campaign.steps = [
            CampaignStep(number=n, delay_days=0 if n == 1 else s.delay_days, subject_hint=s.subject_hint,
                         thread=s.thread)
            for n, s in enumerate(data.steps, start=1)
        ]
    if campaign.window_start_hour >= campaign.window_end_hour:
        # Named after the hour this change set (the other one is the campaign's), as a validation error is.
        key = "window_end_hour" if data.window_end_hour is not None else "window_start_hour"
        message = "window_start_hour must be before window_end_hour."
        raise InvalidInputError(message, details=[{"key": key, "message": message, "source": "body"}])


def create_campaign(session: Session, owner_id: int, data: CampaignCreate) -> Campaign:
    campaign = Campaign(owner_id=owner_id, name=data.name, status=CampaignStatus.DRAFT, steps=[])
    for column in ("pitch", "tone", "sender_name", "sender_email", "timezone",
                   "window_start_hour", "window_end_hour", "send_days", "daily_cap", "send_gap_seconds"):
        if getattr(campaign, column) is None:
            setattr(campaign, column, Campaign.__table__.c[column].default.arg)  # type: ignore[union-attr]
    _apply(campaign, data)
    if not campaign.steps:
        campaign.steps = [CampaignStep(number=1, delay_days=0)]
    session.add(campaign)
    session.flush()
    return campaign


def update_campaign(session: Session, campaign: Campaign, data: CampaignUpdate) -> Campaign:
    if campaign.status != CampaignStatus.DRAFT:
        raise ConflictError(f"Only a DRAFT campaign can be edited; this one is {campaign.status.value}. "
                            "Duplicate it to change its settings.")
    if data.steps is not None:
        # Steps are replaced whole: drop the old rows before the new numbers take their place.
        campaign.steps.clear()
        session.flush()
    _apply(campaign, data)
    session.flush()
    return campaign


NO_SENDER = "The campaign has no sender address: set its sender_email (no real FROM_EMAIL is configured)."
# Settings' shipped From address (so a laptop runs with no setup): no mailbox, so never a sender.
PLACEHOLDER_FROM = parseaddr(Settings.model_fields["from_email"].default)[1]


def is_real_from(address: str) -> bool:
    """Whether a configured From address is a real one, not empty nor the shipped placeholder."""
    plain = parseaddr(address)[1].strip().lower()
    return bool(plain) and plain != PLACEHOLDER_FROM


def launch_problems(session: Session, campaign: Campaign, default_from: str | None = None) -> list[str]:
    """Everything that would stop a launch, all at once. `default_from` is the configured From address a
    campaign without sender_email sends from; None leaves the sender unchecked (the caller has no config)."""
    problems: list[str] = []
    if not campaign.steps:
        problems.append("The campaign has no steps.")
    if default_from is not None and not (campaign.sender_email or "").strip() and not is_real_from(default_from):
        problems.append(NO_SENDER)
    if not session.scalar(select(func.count()).where(Lead.campaign_id == campaign.id, Lead.status == LeadStatus.PENDING)):
        problems.append("The campaign has no leads waiting to be contacted.")
    templates = session.scalars(select(Template).where(Template.campaign_id == campaign.id)).all()
    have = {t.step_number for t in templates}
    for step in campaign.steps:
        if step.number not in have:
            problems.append(f"Step {step.number} has no template.")
    fields = lead_fields(session, campaign)
    for template in templates:
        problems += placeholder_problems(session, campaign, template.step_number,
                                         template_text(template.subject, template.body, template.html_body), fields)
    problems.extend(missing_opener_problems(session, campaign))
    return problems


def placeholder_problems(session: Session, campaign: Campaign, step_number: int, text: str,
                         fields: list[str] | None = None) -> list[str]:
    """Placeholders without a fallback in a step's template (`text`: subject and body) that a lead still to
    receive the step could not fill. Run by launch, and when a template of a running campaign is saved."""
    known = set(fields if fields is not None else lead_fields(session, campaign))
    problems: list[str] = []
    for placeholder in find_placeholders(text):
        if placeholder.fallback is not None or placeholder.name == AI_OPENER:
            continue  # openers are checked per lead (missing_opener_problems)
        if placeholder.name not in known:
            problems.append(f"Template for step {step_number} uses {{{{{placeholder.name}}}}}, "
                            "which the leads do not have; add a fallback like {{name|...}}.")
        elif placeholder.name != "email":
            lacking, examples = _leads_without(session, campaign, placeholder.name, step_number)
            if lacking:
                problems.append(f"Template for step {step_number} uses {{{{{placeholder.name}}}}} "
                                f"but {lacking} lead(s) have no {placeholder.name} (e.g. "
                                f"{', '.join(examples)}); add a fallback like {{{{{placeholder.name}|there}}}}.")
    return problems


NULLABLE_LEAD_COLUMNS = ("first_name", "last_name", "company", "title")
EXAMPLE_LEADS = 5


def _leads_without(session: Session, campaign: Campaign, field: str, step_number: int) -> tuple[int, list[str]]:
    """How many leads still to receive a step have no value for a standard column or custom field, and a few
    of their addresses. Still to receive: waiting, or contacted without that step gone out (PENDING or none)."""
    value = (getattr(Lead, field) if field in NULLABLE_LEAD_COLUMNS
             else lead_custom_field(field, session.get_bind().dialect))
    step_done = select(EmailJob.id).where(EmailJob.lead_id == Lead.id, EmailJob.step_number == step_number,
                                          EmailJob.status != JobStatus.PENDING).exists()
    lacking = (Lead.campaign_id == campaign.id, Lead.status.in_([LeadStatus.PENDING, LeadStatus.CONTACTED]),
               ~step_done, value.is_(None) | (value == ""))
    count = session.scalar(select(func.count()).where(*lacking)) or 0
    examples = list(session.scalars(select(Lead.email).where(*lacking).order_by(Lead.id).limit(EXAMPLE_LEADS))) \
        if count else []
    return count, examples


def _transition(campaign: Campaign, allowed_from: set[CampaignStatus], to: CampaignStatus, verb: str) -> None:
    if campaign.status not in allowed_from:
        allowed = " or ".join(sorted(s.value for s in allowed_from))
        raise ConflictError(f"Cannot {verb} a {campaign.status.value} campaign (only {allowed}).")
    campaign.status = to


def launch_campaign(session: Session, campaign: Campaign, now: datetime | None = None,
                    default_from: str | None = None) -> int:
    """DRAFT -> ACTIVE after the pre-flight check; returns the number of first emails queued.
    `default_from`: see launch_problems."""
    if campaign.status != CampaignStatus.DRAFT:
        _transition(campaign, {CampaignStatus.DRAFT}, CampaignStatus.ACTIVE, "launch")
    problems = launch_problems(session, campaign, default_from)
    if problems:
        raise InvalidInputError("The campaign cannot be launched yet.", details=problems)
    now = now or utcnow()
    campaign.status = CampaignStatus.ACTIVE
    campaign.launched_at = now
    queued = schedule_first_jobs(session, campaign, now)
    session.flush()
    return queued


def pause_campaign(session: Session, campaign: Campaign, reason: str | None = None) -> None:
    """Nothing is sent while PAUSED; jobs stay PENDING. `reason` says why when the engine paused it."""
    _transition(campaign, {CampaignStatus.ACTIVE}, CampaignStatus.PAUSED, "pause")
    campaign.paused_reason = reason
    session.flush()


def resume_campaign(session: Session, campaign: Campaign, now: datetime | None = None) -> int:
    """PAUSED -> ACTIVE; overdue jobs are spread over the coming windows (no burst). Returns how many moved."""
    _transition(campaign, {CampaignStatus.PAUSED}, CampaignStatus.ACTIVE, "resume")
    campaign.paused_reason = None
    now = now or utcnow()
    moved = spread_overdue_jobs(session, campaign, now)
    schedule_first_jobs(session, campaign, now)  # leads added while paused get their first email too
    session.flush()
    return moved


COMPLETED_BY_HAND = "campaign completed"  # the reason on the jobs a completion skips


def complete_campaign(session: Session, campaign: Campaign, now: datetime | None = None) -> int:
    """ACTIVE or PAUSED -> COMPLETED; the jobs still pending are skipped with the reason. Returns how many."""
    _transition(campaign, {CampaignStatus.ACTIVE, CampaignStatus.PAUSED}, CampaignStatus.COMPLETED, "complete")
    campaign.completed_at = now or utcnow()
    skipped = session.execute(
        update(EmailJob).where(EmailJob.campaign_id == campaign.id, job_status_is(JobStatus.PENDING))
        .values(status=JobStatus.SKIPPED, last_error=COMPLETED_BY_HAND).execution_options(synchronize_session=False))
    session.flush()
    return skipped.rowcount


def duplicate_campaign(session: Session, campaign: Campaign) -> Campaign:
    """A new DRAFT with the same settings, steps and templates, and no leads."""
    copy = Campaign(
        owner_id=campaign.owner_id,
        name=f"{campaign.name} (copy)"[:200],
        status=CampaignStatus.DRAFT,
        **{c: getattr(campaign, c) for c in ("pitch", "tone", "sender_name", "sender_email", "timezone",
                                               "window_start_hour", "window_end_hour", "send_days", "daily_cap",
                                               "send_gap_seconds", "postal_address")},
        steps=[CampaignStep(number=s.number, delay_days=s.delay_days, subject_hint=s.subject_hint, thread=s.thread)
               for s in campaign.steps],
    )
    session.add(copy)
    session.flush()
    for template in session.scalars(select(Template).where(Template.campaign_id == campaign.id)):
        session.add(Template(campaign_id=copy.id, step_number=template.step_number, variant=template.variant,
                             subject=template.subject, body=template.body, html_body=template.html_body,
                             source=template.source, model=template.model, prompt_version=template.prompt_version,
                             warnings=template.warnings))
    session.flush()
    return copy


def complete_finished_campaigns(session: Session, now: datetime | None = None) -> int:
    """Launched campaigns with no job left to send become COMPLETED: ACTIVE ones, and PAUSED ones with no lead
    waiting for a first email either (resuming queues those, so such a campaign is not finished).

    Campaigns whose row a status change holds are skipped (SKIP LOCKED): the next sweep sees them."""
    # No job PENDING and none SENDING: two anti-joins, each on its own partial index, where one IN of both
    # statuses would read neither index, and NOT (a OR b) would not become a join at all.
    no_open_jobs = and_(*(
        ~select(EmailJob.id).where(EmailJob.campaign_id == Campaign.id, job_status_is(status)).exists()
        for status in (JobStatus.PENDING, JobStatus.SENDING)))
    waiting_leads = select(Lead.id).where(
        Lead.campaign_id == Campaign.id, Lead.status == LeadStatus.PENDING,
        ~select(EmailJob.id).where(EmailJob.lead_id == Lead.id).exists()
    ).exists()
    done = (Campaign.status == CampaignStatus.ACTIVE) | ((Campaign.status == CampaignStatus.PAUSED) & ~waiting_leads)
    finished = session.scalars(
        select(Campaign).where(done, Campaign.launched_at.is_not(None), no_open_jobs).with_for_update(skip_locked=True, key_share=True)
    ).all()
    for campaign in finished:
        campaign.status = CampaignStatus.COMPLETED
        campaign.completed_at = now or utcnow()
    return len(finished)
