"""Postmark webhooks: store each event once, then act on it (stop sequences, suppress, record).

The hot path (deliveries, bounces) is a handful of Core statements and no ORM object: one query reads the
sent email an event concerns with everything acting on it needs (`Target`), the event is inserted with
its outcome already written (`INSERT ... ON CONFLICT DO NOTHING RETURNING`: a replay stops there), then
the writes run, all in the caller's transaction. An outcome that only the writes can tell (how many jobs
were skipped) is predicted from the read and corrected by one more statement in the rare case it differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    bindparam,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from outreach_pipeline.core.jobs import among
from outreach_pipeline.core.suppression import lift_suppression, suppress
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import (
    Campaign,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    WebhookEvent,
)

log = logging.getLogger(__name__)

# Bounce types after which the address must never be mailed again.
HARD_BOUNCE_TYPES = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"}
# Passing trouble at the receiving end: the sequence waits a day; repeated, the address is given up.
SOFT_BOUNCE_TYPES = {"SoftBounce", "Transient", "DnsError"}
SOFT_BOUNCE_LIMIT = 3
SOFT_BOUNCE_DELAY = timedelta(days=1)
# Records that can arrive many times for one message: each distinct one is kept, by its timestamp.
TIMESTAMPED_RECORDS = {"Open": "ReceivedAt", "Click": "ReceivedAt", "SubscriptionChange": "ChangedAt"}
# Records that may stop a lead: their outcome says how many of its pending jobs were skipped.
MAY_STOP_THE_LEAD = {"Bounce", "SpamComplaint", "SubscriptionChange"}
# Records whose whole effect is stamping their job's column once: most of the traffic, so a batch of them
# shares its statements (handle_postmark_events).
BATCHED_RECORDS = {"Delivery": "delivered_at", "Open": "opened_at", "Click": "clicked_at"}


@dataclass(frozen=True)
class EventResult:
    event_id: int | None
    duplicate: bool
    outcome: str


@dataclass(frozen=True)
class Target:
    """The sent email an event concerns and its lead, read in one query before anything is written."""

    job_id: int
    lead_id: int
    lead_status: LeadStatus
    email_key: str
    owner_id: int
    pending_jobs: int  # the lead's jobs still to send: what stopping the lead would skip (0 when not counted)
    soft_bounces: int  # soft bounces already recorded for the lead (0 when not counted)


# The writes of an event, run once it is stored; returns the outcome when it differs from the predicted one.
Apply = Callable[[Session], str | None]


@dataclass(frozen=True)
class FollowUp:
    """A single prebuilt UPDATE and its parameters: the whole of an event's writes when that is enough."""

    statement: Update
    params: dict[str, Any]


@dataclass(frozen=True)
class Action:
    outcome: str
    job_id: int | None = None
    lead_id: int | None = None
    apply: Apply | None = None
    follow_up: FollowUp | None = None


def _event_key(record_type: str, payload: dict[str, Any]) -> str:
    # Bounces carry their own ID; other records are identified by the message they concern.
    if record_type in ("Bounce", "SpamComplaint") and payload.get("ID") is not None:
        return str(payload["ID"])
    if payload.get("MessageID"):
        stamp = payload.get(TIMESTAMPED_RECORDS.get(record_type, ""))
        return f"{payload['MessageID']}@{stamp}" if stamp else str(payload["MessageID"])
    raise ValueError("the payload has neither ID nor MessageID")


def record_type_of(payload: dict[str, Any], default: str) -> str:
    return str(payload.get("RecordType") or default)


def skip_pending_jobs(session: Session, lead_id: int, reason: str) -> int:
    result = session.execute(
        update(EmailJob).where(EmailJob.lead_id == lead_id, EmailJob.status == JobStatus.PENDING)
        .values(status=JobStatus.SKIPPED, last_error=reason)
    )
    return result.rowcount or 0


def _soft_bounce_filter() -> ColumnElement[bool]:
    return (WebhookEvent.record_type == "Bounce") & WebhookEvent.payload["Type"].as_string().in_(SOFT_BOUNCE_TYPES)


# The hot path's statements are built once: SQLAlchemy memoises a statement's cache key on the object, so
# a reused statement skips construction and key generation (most of the Python time per event otherwise),
# and they run on the session's Connection, past the ORM's bulk-update machinery they do not need.
def _target_query(counts: bool) -> Select[Any]:
    pending: Any = literal(0)
    soft: Any = literal(0)
    if counts:
        pending = (select(func.count()).where(EmailJob.lead_id == Lead.id, EmailJob.status == JobStatus.PENDING)
                   .correlate(Lead).scalar_subquery())
        soft = (select(func.count()).select_from(WebhookEvent)
                .where(WebhookEvent.lead_id == Lead.id, _soft_bounce_filter()).correlate(Lead).scalar_subquery())
    return (select(EmailJob.id, EmailJob.lead_id, Lead.status, Lead.email_key, Campaign.owner_id, pending, soft)
            .join(Lead, Lead.id == EmailJob.lead_id).join(Campaign, Campaign.id == Lead.campaign_id))


_TARGET = {counts: _target_query(counts).where(EmailJob.provider_message_id == bindparam("message_id")).limit(1)
           for counts in (False, True)}
_TARGETS = _target_query(False).add_columns(EmailJob.provider_message_id)
_JOBS = EmailJob.__table__
_STAMP = {column: update(_JOBS).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c[column].is_(None))
          .values({column: bindparam("at", type_=_JOBS.c[column].type)})
          for column in ("delivered_at", "opened_at", "clicked_at")}
_EVENTS = WebhookEvent.__table__
_STORED_COLUMNS = ("provider", "record_type", "provider_id", "payload", "job_id", "lead_id", "outcome",
                   "received_at", "processed_at")
# Named binds ("ev_*"): the insert may sit in a CTE, where values cannot come from the execute() keys alone.
_STORE = {dialect: insert(_EVENTS).values({name: bindparam(f"ev_{name}", type_=_EVENTS.c[name].type)
                                           for name in _STORED_COLUMNS})
          .on_conflict_do_nothing(index_elements=["provider", "record_type", "provider_id"]).returning(_EVENTS.c.id)
          for dialect, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))}

# Several events in one statement (SQLAlchemy sends the rows as one multi-row INSERT): which were stored is
# told by their keys, as RETURNING gives no row for a conflict.
_STORE_MANY = {dialect: store.returning(_EVENTS.c.record_type, _EVENTS.c.provider_id)
               for dialect, store in _STORE.items()}


@cache
def _store_then(follow_up: Update) -> Select[tuple[int]]:
    """PostgreSQL: the insert and its follow-up in one statement (one round trip less on the hottest path);
    the follow-up changes nothing unless the insert stored a row, so a replay still changes nothing."""
    event = _STORE["postgresql"].cte("event")
    then = follow_up.where(exists(select(event.c.id))).cte("then")
    return select(event.c.id).add_cte(then)


def _target(session: Session, message_id: Any, counts: bool) -> Target | None:
    """The sent email `message_id` names; `counts` only for the records that may stop its lead."""
    if not message_id:
        return None
    row = session.connection().execute(_TARGET[counts], {"message_id": str(message_id)}).first()
    return Target(*row) if row is not None else None


def _stop_lead(status: LeadStatus, target: Target, suppression_reason: str, skip_reason: str,
               outcome: Callable[[int], str]) -> Action:
    """The lead gets `status`, its address is suppressed for the owner, its pending jobs are skipped."""

    def apply(session: Session) -> str | None:
        session.execute(update(Lead).where(Lead.id == target.lead_id).values(status=status))
        suppress(session, target.owner_id, target.email_key, suppression_reason)
        skipped = skip_pending_jobs(session, target.lead_id, skip_reason)
        return outcome(skipped) if skipped != target.pending_jobs else None

    return Action(outcome(target.pending_jobs), target.job_id, target.lead_id, apply)


def _on_bounce(payload: dict[str, Any], target: Target | None) -> Action:
    if target is None:
        return Action("bounce for a message we did not send")
    bounce_type = str(payload.get("Type", ""))
    if bounce_type == "SpamComplaint":
        return _on_spam_complaint(payload, target)
    if bounce_type in SOFT_BOUNCE_TYPES:
        return _on_soft_bounce(target, bounce_type)
    if bounce_type not in HARD_BOUNCE_TYPES:
        return Action(f"{bounce_type or 'unknown'} bounce recorded", target.job_id, target.lead_id)
    lead = target.lead_id
    return _stop_lead(LeadStatus.BOUNCED, target, "bounce", f"address bounced ({bounce_type})", lambda skipped: (
        f"lead {lead} bounced ({bounce_type}); address suppressed; {skipped} pending job(s) skipped"))


def _on_soft_bounce(target: Target, bounce_type: str) -> Action:
    count = target.soft_bounces + 1  # this one is stored with the action, so it counts too
    if count >= SOFT_BOUNCE_LIMIT:
        lead = target.lead_id
        return _stop_lead(LeadStatus.BOUNCED, target, "soft-bounce", f"address soft-bounced {count} times",
                          lambda skipped: (f"lead {lead} soft-bounced {count} times; address suppressed; "
                                           f"{skipped} pending job(s) skipped"))

    def apply(session: Session) -> None:
        # Retry later: the lead's next email waits a day for the receiving side to recover. A lead has a
        # handful of jobs at most, so the date arithmetic stays in Python, where it is portable.
        pending = session.execute(select(EmailJob.id, EmailJob.due_at).where(
            EmailJob.lead_id == target.lead_id, EmailJob.status == JobStatus.PENDING)).all()
        for job_id, due_at in pending:
            session.execute(update(EmailJob).where(EmailJob.id == job_id).values(due_at=due_at + SOFT_BOUNCE_DELAY))
        log.debug("soft bounce %d of %d for lead %d; %d pending job(s) delayed a day",
                  count, SOFT_BOUNCE_LIMIT, target.lead_id, len(pending))

    return Action(f"{bounce_type} bounce recorded", target.job_id, target.lead_id,
                  apply if target.pending_jobs else None)


def _on_spam_complaint(_payload: dict[str, Any], target: Target | None) -> Action:
    if target is None:
        return Action("complaint for a message we did not send")
    return _stop_lead(LeadStatus.UNSUBSCRIBED, target, "complaint", "spam complaint",
                      lambda _skipped: f"lead {target.lead_id} complained; address suppressed")


def _stamp_once(job_id: int, column: str, at: datetime) -> FollowUp:
    """The first delivery/open/click sets the job's timestamp; later ones leave it."""
    return FollowUp(_STAMP[column], {"job_id": job_id, "at": at})


Handler = Callable[[dict[str, Any], Target | None], Action]


def _engagement(stamp: str, verb: str, unknown: str) -> Handler:
    """Deliveries, opens and clicks: the first stamps the job; one for a message we did not send is only recorded."""

    def handle(_payload: dict[str, Any], target: Target | None) -> Action:
        if target is None:
            return Action(unknown)
        return Action(f"job {target.job_id} {verb}", target.job_id, target.lead_id,
                      follow_up=_stamp_once(target.job_id, stamp, utcnow()))

    return handle


_on_delivery = _engagement(BATCHED_RECORDS["Delivery"], "delivered", "delivery for a message we did not send")
_on_open = _engagement(BATCHED_RECORDS["Open"], "opened", "Open recorded")
_on_click = _engagement(BATCHED_RECORDS["Click"], "clicked", "Click recorded")


def _on_subscription_change(payload: dict[str, Any], target: Target | None) -> Action:
    """Postmark's own suppression list changed: SuppressSending true suppresses, false lifts ours too."""
    if target is None:
        return Action("SubscriptionChange recorded")  # for a message we did not send
    lead = target.lead_id
    if payload.get("SuppressSending"):
        reason = str(payload.get("SuppressionReason") or "provider")[:32]

        def suppress_lead(session: Session) -> str | None:
            suppress(session, target.owner_id, target.email_key, reason)
            skipped = skip_pending_jobs(session, lead, f"provider suppressed the address ({reason})")
            return None if skipped == target.pending_jobs else outcome(skipped)

        def outcome(skipped: int) -> str:
            return f"lead {lead} suppressed by the provider ({reason}); {skipped} pending job(s) skipped"

        return Action(outcome(target.pending_jobs), target.job_id, lead, suppress_lead)

    def lift(session: Session) -> str | None:
        lifted = lift_suppression(session, target.owner_id, target.email_key)
        return None if lifted else f"lead {lead} was not suppressed"

    return Action(f"suppression of lead {lead} lifted", target.job_id, lead, lift)


def _on_inbound(session: Session, payload: dict[str, Any]) -> Action:
    # Matching (mailbox hash, thread, sender) and auto-reply detection live in core/replies.py.
    from outreach_pipeline.core.replies import handle_inbound

    return handle_inbound(session, payload)


HANDLERS: dict[str, Handler] = {
    "Bounce": _on_bounce,
    "SpamComplaint": _on_spam_complaint,
    "Delivery": _on_delivery,
    "Open": _on_open,
    "Click": _on_click,
    "SubscriptionChange": _on_subscription_change,
}


def _plan(session: Session, payload: dict[str, Any], record_type: str) -> Action:
    """What the event will do, from reads only: nothing is written before the event is stored."""
    if record_type == "Inbound":
        return _on_inbound(session, payload)
    handler = HANDLERS.get(record_type)
    if handler is None:
        return Action(f"{record_type} recorded")
    return handler(payload, _target(session, payload.get("MessageID"), counts=record_type in MAY_STOP_THE_LEAD))


def _store(session: Session, record_type: str, key: str, payload: dict[str, Any], action: Action) -> int | None:
    """Insert the event unless it is already there (then None): the unique key makes a replay a no-op.
    The action's follow-up runs with it, only when the event was stored."""
    now = utcnow()
    values = {"ev_provider": "postmark", "ev_record_type": record_type, "ev_provider_id": key, "ev_payload": payload,
              "ev_job_id": action.job_id, "ev_lead_id": action.lead_id, "ev_outcome": action.outcome,
              "ev_received_at": now, "ev_processed_at": now}
    connection = session.connection()
    dialect, follow_up = connection.dialect.name, action.follow_up
    if follow_up is not None and dialect == "postgresql":
        return connection.execute(_store_then(follow_up.statement), {**values, **follow_up.params}).scalar()
    event_id = connection.execute(_STORE[dialect], values).scalar()
    if event_id is not None and follow_up is not None:
        connection.execute(follow_up.statement, follow_up.params)
    return event_id


def handle_postmark_event(session: Session, payload: dict[str, Any], default_type: str) -> EventResult:
    """Store the event once and act on it in the same transaction; a replay changes nothing."""
    record_type = record_type_of(payload, default_type)
    key = _event_key(record_type, payload)
    action = _plan(session, payload, record_type)
    event_id = _store(session, record_type, key, payload, action)
    if event_id is None:
        return EventResult(None, True, "already processed")
    outcome = action.outcome
    corrected = action.apply(session) if action.apply else None
    if corrected is not None and corrected != outcome:
        outcome = corrected
        session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(outcome=outcome))
    log.debug("postmark event", extra={"record_type": record_type, "outcome": outcome})
    return EventResult(event_id, False, outcome)


def _targets_of(session: Session, message_ids: set[str]) -> dict[str, Target]:
    """The sent emails named by `message_ids`, in one query (what `_target` reads, without the counts)."""
    if not message_ids:
        return {}
    query = _TARGETS.where(among(session, EmailJob.provider_message_id, sorted(message_ids)))
    targets: dict[str, Target] = {}
    for *columns, message_id in session.connection().execute(query):
        targets.setdefault(message_id, Target(*columns))
    return targets


def _handle_batched(session: Session, events: list[tuple[int, str, str, dict[str, Any]]],
                    results: list[EventResult | ValueError | None]) -> None:
    """Deliveries, opens and clicks of a batch: one read of their jobs, one insert of the events, one
    update per stamped column; each event's result lands at its index in `results`."""
    targets = _targets_of(session, {str(payload["MessageID"]) for *_, payload in events if payload.get("MessageID")})
    now = utcnow()
    planned: dict[tuple[str, str], tuple[int, Action]] = {}  # the first of each key; a later copy is a replay
    rows: list[dict[str, Any]] = []
    for index, record_type, key, payload in events:
        if (record_type, key) in planned:
            results[index] = EventResult(None, True, "already processed")
            continue
        action = HANDLERS[record_type](payload, targets.get(str(payload.get("MessageID") or "")))
        planned[(record_type, key)] = (index, action)
        rows.append({"ev_provider": "postmark", "ev_record_type": record_type, "ev_provider_id": key,
                     "ev_payload": payload, "ev_job_id": action.job_id, "ev_lead_id": action.lead_id,
                     "ev_outcome": action.outcome, "ev_received_at": now, "ev_processed_at": now})
    if not rows:
        return
    connection = session.connection()
    stored = {(row.record_type, row.provider_id): row.id
              for row in connection.execute(_STORE_MANY[connection.dialect.name], rows)}
    stamps: dict[str, list[int]] = {}  # column -> jobs to stamp
    for event_key, (index, action) in planned.items():
        event_id = stored.get(event_key)
        if event_id is None:
            results[index] = EventResult(None, True, "already processed")
            continue
        results[index] = EventResult(event_id, False, action.outcome)
        if action.job_id is not None:
            stamps.setdefault(BATCHED_RECORDS[event_key[0]], []).append(action.job_id)
    for column, job_ids in stamps.items():
        connection.execute(update(_JOBS).where(among(session, _JOBS.c.id, sorted(set(job_ids))),
                                               _JOBS.c[column].is_(None)).values({column: now}))


def handle_postmark_events(
    session: Session, events: Sequence[tuple[dict[str, Any], str]]
) -> list[EventResult | ValueError]:
    """Several events (payload, default record type) in the caller's transaction, each with the result
    `handle_postmark_event` would give it; a payload that is not an event gets its ValueError instead.

    Deliveries, opens and clicks, which change nothing but their job's timestamps, share their statements;
    the others (bounces, complaints, replies...) are handled one after another, each reading what the
    ones before it wrote.
    """
    results: list[EventResult | ValueError | None] = [None] * len(events)
    batched: list[tuple[int, str, str, dict[str, Any]]] = []
    for index, (payload, default_type) in enumerate(events):
        record_type = record_type_of(payload, default_type)
        if record_type in BATCHED_RECORDS:
            try:
                batched.append((index, record_type, _event_key(record_type, payload), payload))
            except ValueError as error:
                results[index] = error
    _handle_batched(session, batched, results)
    for index, (payload, default_type) in enumerate(events):
        if results[index] is None:
            try:
                results[index] = handle_postmark_event(session, payload, default_type)
            except ValueError as error:
                results[index] = error
    return [result for result in results if result is not None]


def unsubscribe_by_token(session: Session, reply_token: str) -> Lead | None:
    """The lead behind an unsubscribe link stops receiving mail from its owner, in every campaign."""
    lead = session.scalar(select(Lead).where(Lead.reply_token == reply_token))
    if lead is None:
        return None
    if lead.status in (LeadStatus.PENDING, LeadStatus.CONTACTED, LeadStatus.REPLIED):
        lead.status = LeadStatus.UNSUBSCRIBED
    suppress(session, lead.campaign.owner_id, lead.email_key, "unsubscribe")
    skip_pending_jobs(session, lead.id, "lead unsubscribed")
    return lead
