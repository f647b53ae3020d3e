"""Postmark webhooks: store each event once, then act on it (stop sequences, suppress, record).

Events come in batches (the API's writer takes whatever arrived together; a single event is a batch of
one) and a batch costs a handful of statements whatever its size: one read of the sent emails the events
concern with everything acting on them needs (`Target`), one insert of the events with their outcomes
already written (`ON CONFLICT`: a replay stops there), then the writes of the events that were
stored, grouped: one update per timestamp column, the leads to stop together (core/stops.py). An outcome
only the writes can tell (how many jobs were skipped) is predicted from the read and corrected in the rare
case it differs. A stop signal whose MessageID names no recorded email yet is matched by the job id its
Metadata echoes; failing that it is kept for review, and its replay acts once the email is recorded
(`_store_rows`). Each event ends as it would handled alone in its order: a reply is handled alone between
the events before and after it, and a stop signal for a lead or address that another event of the batch
stops or lifts waits until after the batch, so it reads what came before it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Update, bindparam, case, func, literal_column, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from outreach_pipeline.core.stops import StopLead, skip_pending_jobs, stop_leads
from outreach_pipeline.core.suppression import lift_provider_suppression, suppress
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.dialect import in_list
from outreach_pipeline.db.models import (
    Campaign,
    EmailJob,
    JobStatus,
    Lead,
    LeadStatus,
    WebhookEvent,
    holds_reply_token,
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
# The job column the first delivery, open and click of a message stamps.
STAMPED_COLUMN = {"Delivery": "delivered_at", "Open": "opened_at", "Click": "clicked_at"}
# The Metadata key every message we send carries its job's id in (core/compose.py); Postmark echoes it back.
JOB_ID_METADATA = "job_id"
# Where a stop signal names the address it concerns.
RECIPIENT_FIELD = {"Bounce": "Email", "SpamComplaint": "Email", "SubscriptionChange": "Recipient"}


@dataclass(frozen=True)
class EventResult:
    event_id: int | None
    duplicate: bool
    outcome: str


@dataclass(frozen=True)
class Target:
    """The sent email an event concerns and its lead, read before anything is written."""

    job_id: int
    lead_id: int
    lead_status: LeadStatus
    email_key: str
    owner_id: int
    pending_jobs: int  # the lead's jobs still to send: what stopping the lead would skip (0 when not counted)
    soft_bounces: int  # soft bounces already recorded for the lead (0 when not counted)


# Writes of an event no batch shares, run once it is stored; returns the outcome when it differs from the
# predicted one.
Apply = Callable[[Session], str | None]


@dataclass(frozen=True)
class Action:
    """What an event will do, planned from reads only; its writes run once the event is stored."""

    outcome: str
    job_id: int | None = None
    lead_id: int | None = None
    apply: Apply | None = None
    stamp: str | None = None  # the column of the job to stamp, unless already set
    stop: StopLead | None = None


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


def bounces_of(types: set[str]) -> ColumnElement[bool]:
    """Webhook events that are bounces of one of `types` (also read by core/bounce_guard.py)."""
    return (WebhookEvent.record_type == "Bounce") & WebhookEvent.payload["Type"].as_string().in_(sorted(types))


def _counts() -> tuple[Any, Any]:
    """The lead's pending jobs and its soft bounces recorded, as subqueries of a target query."""
    pending = (select(func.count()).where(EmailJob.lead_id == Lead.id, EmailJob.status == JobStatus.PENDING)
               .correlate(Lead).scalar_subquery())
    soft = (select(func.count()).select_from(WebhookEvent)
            .where(WebhookEvent.lead_id == Lead.id, bounces_of(SOFT_BOUNCE_TYPES)).correlate(Lead).scalar_subquery())
    return pending, soft


def _target_select(pending: Any, soft: Any, key: Any) -> Select[Any]:
    return (select(EmailJob.id, EmailJob.lead_id, Lead.status, Lead.email_key, Campaign.owner_id, pending, soft, key)
            .join(Lead, Lead.id == EmailJob.lead_id).join(Campaign, Campaign.id == Lead.campaign_id))


# Built once per dialect: SQLAlchemy memoises a statement's cache key on the object, so a reused statement
# skips construction and key generation.
def _target_query(postgresql: bool) -> Select[Any]:
    """The sent emails named in `message_ids`, with the lead's pending jobs and soft bounces counted only for
    those also in `counted` (records that may stop the lead): one query for a whole batch."""
    counted = in_list(EmailJob.provider_message_id, "counted", postgresql)
    pending, soft = _counts()
    # A CASE runs its subqueries only for the rows that take that branch.
    return (_target_select(case((counted, pending), else_=0), case((counted, soft), else_=0),
                           EmailJob.provider_message_id)
            .where(in_list(EmailJob.provider_message_id, "message_ids", postgresql)))


def _job_target_query(postgresql: bool) -> Select[Any]:
    """The jobs `job_ids` names, counted: stop signals whose message is not recorded yet (see `_by_job`)."""
    return _target_select(*_counts(), EmailJob.id).where(in_list(EmailJob.id, "job_ids", postgresql))


_TARGETS = {dialect: _target_query(dialect == "postgresql") for dialect in ("postgresql", "sqlite")}
_JOB_TARGETS = {dialect: _job_target_query(dialect == "postgresql") for dialect in ("postgresql", "sqlite")}
_JOBS = EmailJob.__table__
_EVENTS = WebhookEvent.__table__


def _stamp(column: str, postgresql: bool) -> Update:
    """Stamp `column` of the jobs `job_ids` with `now`, where not stamped yet."""
    return (update(_JOBS).where(in_list(_JOBS.c.id, "job_ids", postgresql), _JOBS.c[column].is_(None))
            .values({column: bindparam("now", type_=_JOBS.c[column].type)}))


_STAMPS = {dialect: {column: _stamp(column, dialect == "postgresql") for column in STAMPED_COLUMN.values()}
           for dialect in ("postgresql", "sqlite")}


# A stop signal stored without a lead (its message was not recorded yet: still SENDING after a crash, or in
# the moment between the provider's answer and our commit, with no job id in its Metadata) is kept for
# review; its replay, once the job is recorded, takes that row over and acts (the conflict updates the row
# and RETURNING gives it, as for a new event) instead of stopping as a duplicate. Any other replay, and a
# replay still unmatched, changes nothing. Simplest correct: no second table nor re-scan after each send,
# the unique key stays the one guard against acting twice (the row gets its lead: no third time).
def _store_rows() -> Any:
    """SQLite: the rows as one multi-row INSERT (SQLAlchemy's insertmanyvalues). Which were stored is told by
    their keys, as RETURNING gives no row for a conflict left alone."""
    statement = sqlite.insert(_EVENTS)
    return statement.on_conflict_do_update(
        index_elements=["provider", "record_type", "provider_id"],
        set_={name: statement.excluded[name] for name in ("job_id", "lead_id", "outcome", "processed_at")},
        where=_EVENTS.c.lead_id.is_(None) & statement.excluded.lead_id.is_not(None)
        # Written into the SQL: an executemany takes no expanding IN parameter.
        & _EVENTS.c.record_type.in_([literal_column(f"'{name}'") for name in sorted(MAY_STOP_THE_LEAD)]),
    ).returning(_EVENTS.c.id, _EVENTS.c.record_type, _EVENTS.c.provider_id)


_STORE_ROWS = _store_rows()
# PostgreSQL: the rows in one JSON parameter, so the statement's text is the same for any batch (psycopg
# parses a many-row VALUES list afresh each time) and the C json encoder does the per-row work.
_STORE_JSON = text(f"""
    INSERT INTO webhook_events (provider, record_type, provider_id, payload, job_id, lead_id, outcome,
                                received_at, processed_at)
    SELECT 'postmark', v.record_type, v.provider_id, v.payload, v.job_id, v.lead_id, v.outcome, :now, :now
    FROM json_to_recordset(CAST(:rows AS json))
        AS v(record_type varchar, provider_id varchar, payload jsonb, job_id integer, lead_id integer, outcome varchar)
    ON CONFLICT (provider, record_type, provider_id) DO UPDATE
        SET job_id = EXCLUDED.job_id, lead_id = EXCLUDED.lead_id, outcome = EXCLUDED.outcome,
            processed_at = EXCLUDED.processed_at
        WHERE webhook_events.lead_id IS NULL AND EXCLUDED.lead_id IS NOT NULL
            AND webhook_events.record_type IN ({", ".join(f"'{name}'" for name in sorted(MAY_STOP_THE_LEAD))})
    RETURNING id, record_type, provider_id
""")


def _targets(session: Session, message_ids: set[str], counted: set[str]) -> dict[str, Target]:
    """The sent emails `message_ids` name, in one query; with counts for those in `counted`."""
    if not message_ids:
        return {}
    connection = session.connection()
    targets: dict[str, Target] = {}
    for *columns, message_id in connection.execute(_TARGETS[connection.dialect.name], {
            "message_ids": sorted(message_ids), "counted": sorted(counted)}):
        targets.setdefault(message_id, Target(*columns))
    return targets


def _by_job(session: Session, events: list[_Event]) -> dict[int, Target]:
    """Targets of stop signals whose MessageID names no recorded email (still SENDING awaiting reconciliation,
    or answered by the provider but not committed yet), by the job id our Metadata carries, by event index.
    Taken only when that job's lead has the address the event names, so an id that is not ours (another
    database's, a hand-made payload) stops nobody. One query, run only when such events come.
    No fallback to the address alone: without a job the owner is unknown, and one tenant's complaint must
    not stop another's lead. Every message we send carries its job id, and a job gone went with its lead
    (or campaign): then nothing is left to stop and the event is kept for review."""
    wanted = {e.index: job_id for e in events if (job_id := _metadata_job_id(e.payload)) is not None}
    if not wanted:
        return {}
    connection = session.connection()
    jobs = {job_id: Target(*columns) for *columns, job_id in connection.execute(
        _JOB_TARGETS[connection.dialect.name], {"job_ids": sorted(set(wanted.values()))})}
    found: dict[int, Target] = {}
    for event in events:
        target = jobs.get(wanted.get(event.index, 0))
        if target is not None and target.email_key == _recipient(event):
            found[event.index] = target
    return found


def _metadata_job_id(payload: dict[str, Any]) -> int | None:
    metadata = payload.get("Metadata")
    value = metadata.get(JOB_ID_METADATA) if isinstance(metadata, dict) else None
    try:
        job_id = int(str(value))
    except ValueError:
        return None
    return job_id if 0 < job_id < 2**31 else None  # an id the integer column can hold: no DataError


def _recipient(event: _Event) -> str:
    return str(event.payload.get(RECIPIENT_FIELD.get(event.record_type, "")) or "").strip().lower()


def _stop_lead(status: LeadStatus | None, target: Target, suppression_reason: str, skip_reason: str,
               outcome: Callable[[int], str]) -> Action:
    """The lead gets `status` (None: kept), its address is suppressed for the owner, its pending jobs are skipped."""
    stop = StopLead(target.lead_id, target.owner_id, target.email_key, status, suppression_reason, skip_reason,
                    outcome)
    return Action(outcome(target.pending_jobs), target.job_id, target.lead_id, stop=stop)


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


Handler = Callable[[dict[str, Any], Target | None], Action]


def _engagement(record_type: str, verb: str, unknown: str) -> Handler:
    """Deliveries, opens and clicks: the first stamps the job; one for a message we did not send is only recorded."""

    def handle(_payload: dict[str, Any], target: Target | None) -> Action:
        if target is None:
            return Action(unknown)
        return Action(f"job {target.job_id} {verb}", target.job_id, target.lead_id,
                      stamp=STAMPED_COLUMN[record_type])

    return handle


def _on_subscription_change(payload: dict[str, Any], target: Target | None) -> Action:
    """Postmark's own suppression list changed: SuppressSending true suppresses, false lifts what mirrored it
    (core/suppression.py: PROVIDER_REASONS), never a complaint, an unsubscribe or a manual entry of ours."""
    if target is None:
        return Action("SubscriptionChange recorded")  # for a message we did not send
    lead = target.lead_id
    if payload.get("SuppressSending"):
        reason = str(payload.get("SuppressionReason") or "provider")[:32]
        return _stop_lead(None, target, reason, f"provider suppressed the address ({reason})", lambda skipped: (
            f"lead {lead} suppressed by the provider ({reason}); {skipped} pending job(s) skipped"))

    def lift(session: Session) -> str | None:
        lifted = lift_provider_suppression(session, target.owner_id, target.email_key)
        return None if lifted else f"lead {lead} had no provider suppression to lift"

    return Action(f"suppression of lead {lead} lifted", target.job_id, lead, lift)


def _on_inbound(session: Session, payload: dict[str, Any]) -> Action:
    # Matching (mailbox hash, thread, sender) and auto-reply detection live in core/replies.py.
    from outreach_pipeline.core.replies import handle_inbound

    return handle_inbound(session, payload)


HANDLERS: dict[str, Handler] = {
    "Bounce": _on_bounce,
    "SpamComplaint": _on_spam_complaint,
    "Delivery": _engagement("Delivery", "delivered", "delivery for a message we did not send"),
    "Open": _engagement("Open", "opened", "Open recorded"),
    "Click": _engagement("Click", "clicked", "Click recorded"),
    "SubscriptionChange": _on_subscription_change,
}


@dataclass(frozen=True)
class _Event:
    index: int  # its place in the batch, where its result goes
    record_type: str
    key: str
    payload: dict[str, Any]

    @property
    def message_id(self) -> str:
        return str(self.payload.get("MessageID") or "")


Results = list["EventResult | ValueError | None"]


def _plan(session: Session, events: list[_Event]) -> tuple[list[tuple[_Event, Action]], list[_Event]]:
    """Each event's action, from reads only (nothing is written before the events are stored), and the
    events to handle later, alone: stop signals for a lead or an address another event of the batch stops
    or lifts, so each reads what the one before it wrote."""
    concerned = [e for e in events if e.message_id and e.record_type in HANDLERS]
    targets = _targets(session, {e.message_id for e in concerned},
                       {e.message_id for e in concerned if e.record_type in MAY_STOP_THE_LEAD})
    # A stop signal must not be lost for want of a recorded MessageID: fall back to the job id it echoes.
    by_job = _by_job(session, [e for e in events if e.record_type in MAY_STOP_THE_LEAD
                               and e.message_id not in targets])
    planned: list[tuple[_Event, Action]] = []
    later: list[_Event] = []
    claimed: set[tuple[Any, ...]] = set()  # leads and (owner, address) pairs a planned event may change
    for event in events:
        handler = HANDLERS.get(event.record_type)
        target = (targets.get(event.message_id) or by_job.get(event.index)) if handler is not None else None
        if event.record_type == "Inbound":  # only ever alone (handle_postmark_events)
            action = _on_inbound(session, event.payload)
        elif handler is None:
            action = Action(f"{event.record_type} recorded")
        else:
            if event.record_type in MAY_STOP_THE_LEAD and target is not None:
                claims = {("lead", target.lead_id), ("address", target.owner_id, target.email_key)}
                if claims & claimed:
                    later.append(event)
                    continue
                claimed |= claims
            action = handler(event.payload, target)
        planned.append((event, action))
    return planned, later


Stored = list[tuple[int, _Event, Action]]  # event id, event, action


def _store(session: Session, planned: list[tuple[_Event, Action]], results: Results) -> Stored:
    """Insert the events not stored yet, each once; the others are replays and get their result here."""
    now = utcnow()
    first: dict[tuple[str, str], tuple[_Event, Action]] = {}
    for event, action in planned:
        if (event.record_type, event.key) in first:
            results[event.index] = EventResult(None, True, "already processed")
        else:
            first[(event.record_type, event.key)] = (event, action)
    # In key order: two writers inserting the same (retried) events take the unique index's locks in one order.
    rows = [{"record_type": event.record_type, "provider_id": event.key, "payload": event.payload,
             "job_id": action.job_id, "lead_id": action.lead_id, "outcome": _fitted(action.outcome)}
            for _, (event, action) in sorted(first.items())]
    stored = {(row.record_type, row.provider_id): row.id for row in _insert_events(session, rows, now)}
    kept: Stored = []
    for event_key, (event, action) in first.items():
        event_id = stored.get(event_key)
        if event_id is None:
            results[event.index] = EventResult(None, True, "already processed")
        else:
            results[event.index] = EventResult(event_id, False, _fitted(action.outcome))
            kept.append((event_id, event, action))
    return kept


_OUTCOME_WIDTH = _EVENTS.c.outcome.type.length


def _fitted(outcome: str) -> str:
    """An outcome cut to its column: a long bounce Type in it must not fail the event (and every retry)."""
    return outcome if len(outcome) <= _OUTCOME_WIDTH else outcome[:_OUTCOME_WIDTH - 1] + "…"


def _insert_events(session: Session, rows: list[dict[str, Any]], now: datetime) -> Sequence[Any]:
    """Insert the events' rows, skipping those already stored; the rows stored (id, record_type, provider_id)."""
    if not rows:
        return []
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        return connection.execute(_STORE_JSON, {"rows": json.dumps(rows), "now": now}).all()
    return connection.execute(_STORE_ROWS, [{**row, "provider": "postmark", "received_at": now, "processed_at": now}
                                            for row in rows]).all()


def _act(session: Session, stored: Stored, results: Results) -> None:
    """The writes of the stored events: stamps and stops grouped, then each one's own writes."""
    now = utcnow()
    stamps: dict[str, set[int]] = {}
    for _, _, action in stored:
        if action.stamp is not None and action.job_id is not None:
            stamps.setdefault(action.stamp, set()).add(action.job_id)
    connection = session.connection()
    for column, job_ids in stamps.items():
        # Each statement locks its rows in id order. Two writers stamping the same jobs in different columns
        # can still deadlock; PostgreSQL then fails one batch, which is applied again event by event.
        connection.execute(_STAMPS[connection.dialect.name][column], {"job_ids": sorted(job_ids), "now": now})
    skipped = stop_leads(session, [action.stop for _, _, action in stored if action.stop is not None])
    for event_id, event, action in stored:
        corrected: str | None = None
        if action.stop is not None:
            corrected = action.stop.outcome(skipped[action.stop.lead_id])
        if action.apply is not None:
            corrected = action.apply(session) or corrected
        if corrected is not None and corrected != action.outcome:
            corrected = _fitted(corrected)
            session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(outcome=corrected))
            results[event.index] = EventResult(event_id, False, corrected)


def _handle(session: Session, events: list[_Event], results: Results) -> None:
    """The events together, then the ones planning put off, each alone."""
    planned, later = _plan(session, events)
    _act(session, _store(session, planned, results), results)
    for event in later:
        _handle(session, [event], results)


def handle_postmark_events(
    session: Session, events: Sequence[tuple[dict[str, Any], str]]
) -> list[EventResult | ValueError]:
    """Store and act on several events (payload, default record type) in the caller's transaction; each
    gets the result it would get handled alone in that order, or its ValueError when the payload is not an
    event. A reply reads what the events before it did, so it is handled alone, between the others."""
    results: Results = [None] * len(events)
    together: list[_Event] = []
    for index, (payload, default_type) in enumerate(events):
        record_type = record_type_of(payload, default_type)
        try:
            event = _Event(index, record_type, _event_key(record_type, payload), payload)
        except ValueError as error:
            results[index] = error
            continue
        if record_type == "Inbound":
            if together:
                _handle(session, together, results)
            together = []
            _handle(session, [event], results)
        else:
            together.append(event)
    if together:
        _handle(session, together, results)
    log.debug("postmark events", extra={"events": len(events)})
    return [result for result in results if result is not None]


def handle_postmark_event(session: Session, payload: dict[str, Any], default_type: str) -> EventResult:
    """Store one event once and act on it in the same transaction; a replay changes nothing. Raises
    ValueError for a payload that is not an event."""
    (result,) = handle_postmark_events(session, [(payload, default_type)])
    if isinstance(result, ValueError):
        raise result
    return result


def unsubscribe_by_token(session: Session, reply_token: str) -> Lead | None:
    """The lead behind an unsubscribe link stops receiving mail from its owner, in every campaign."""
    lead = session.scalar(select(Lead).where(holds_reply_token(reply_token)))
    if lead is None:
        return None
    if lead.status in (LeadStatus.PENDING, LeadStatus.CONTACTED, LeadStatus.REPLIED):
        lead.status = LeadStatus.UNSUBSCRIBED
    suppress(session, lead.campaign.owner_id, lead.email_key, "unsubscribe")
    skip_pending_jobs(session, [lead.id], "lead unsubscribed")
    return lead
