"""Stopping leads: a new status, the address on the owner's suppression list, the pending jobs skipped.

Bounces, complaints, provider suppressions, replies and unsubscribes all end a lead's sequence the same way;
here it is done for any number of leads in a handful of statements, so a batch of webhook events costs
about what one does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import JSON, Integer, Text, Update, bindparam, cast, column, func, select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.suppression import UPSERT_ARRAYS, chosen_entries, suppress_many, upsert_arrays_params
from outreach_pipeline.db.dialect import in_list
from outreach_pipeline.db.models import EmailJob, JobStatus, Lead, LeadStatus


@dataclass(frozen=True)
class StopLead:
    """One lead to stop. `status` None keeps the lead's status; `suppression_reason` None suppresses nothing."""

    lead_id: int
    owner_id: int
    email_key: str
    status: LeadStatus | None
    suppression_reason: str | None
    skip_reason: str
    outcome: Callable[[int], str]  # the event's outcome, given how many pending jobs were skipped


_LEADS = Lead.__table__
_JOBS = EmailJob.__table__


# Built once per dialect and run on the session's connection: a batch's stops cost no statement
# construction, cache-key generation or ORM bookkeeping (nothing here is held as an ORM object).
def _statements(postgresql: bool) -> tuple[Update, Update]:
    set_status = (update(_LEADS).where(in_list(_LEADS.c.id, "lead_ids", postgresql))
                  .values(status=bindparam("status", type_=_LEADS.c.status.type)))
    skip = (update(_JOBS).where(in_list(_JOBS.c.lead_id, "lead_ids", postgresql), _JOBS.c.status == JobStatus.PENDING)
            .values(status=JobStatus.SKIPPED, last_error=bindparam("reason", type_=_JOBS.c.last_error.type))
            .returning(_JOBS.c.lead_id))
    return set_status, skip


_STATEMENTS = {dialect: _statements(dialect == "postgresql") for dialect in ("postgresql", "sqlite")}


def _stop_all() -> Update:
    """PostgreSQL: every stop of a batch in one statement. The stops come as one JSON parameter (lead, new
    status or null, skip reason); the new statuses and the suppressions are data-modifying CTEs of the
    UPDATE that skips the pending jobs and says which it skipped. Each part writes its own table, so none
    depends on another's writes.

    The leads are locked first, in id order, by the CTE every part reads: PostgreSQL runs a CTE the main
    query does not read after it, so without that the jobs would be locked before their lead, the reverse
    of a reply's or an unsubscribe's order (lead, then jobs), and the two could deadlock."""
    given = (func.json_to_recordset(cast(bindparam("stops", type_=Text), JSON))
             .table_valued(column("lead_id", Integer), column("status", Text), column("skip", Text))
             .render_derived(name="given", with_types=True))
    stops = (select(given.c.lead_id, given.c.status, given.c.skip).join(_LEADS, _LEADS.c.id == given.c.lead_id)
             .order_by(given.c.lead_id).with_for_update(of=_LEADS, key_share=True).cte("stops"))
    set_status = (update(_LEADS).where(_LEADS.c.id == stops.c.lead_id, stops.c.status.is_not(None))
                  .values(status=stops.c.status).cte("set_status"))
    return (update(_JOBS).where(_JOBS.c.lead_id == stops.c.lead_id, _JOBS.c.status == JobStatus.PENDING)
            .values(status=JobStatus.SKIPPED, last_error=stops.c.skip).returning(_JOBS.c.lead_id)
            .add_cte(set_status, UPSERT_ARRAYS.cte("suppressed")))


_STOP_ALL = _stop_all()


def skip_pending_jobs(session: Session, lead_ids: Sequence[int], reason: str) -> Counter[int]:
    """Skip the leads' jobs still to send; how many were skipped, by lead."""
    if not lead_ids:
        return Counter()
    connection = session.connection()
    _, skip = _STATEMENTS[connection.dialect.name]
    # In id order: two writers skipping jobs of the same leads lock them in one order and wait for each other.
    return Counter(connection.execute(skip, {"lead_ids": sorted(set(lead_ids)), "reason": reason}).scalars())


def stop_leads(session: Session, stops: Sequence[StopLead]) -> Counter[int]:
    """Apply every stop: on PostgreSQL in one statement, elsewhere one per new status, one for the
    suppressions and one per skip reason. Returns the jobs skipped by lead."""
    if not stops:
        return Counter()
    connection = session.connection()
    suppressions = [(stop.owner_id, stop.email_key, stop.suppression_reason)
                    for stop in stops if stop.suppression_reason is not None]
    if connection.dialect.name == "postgresql":
        # One row per lead (a lead named twice takes its last stop), in lead order.
        last = {stop.lead_id: stop for stop in stops}
        rows = json.dumps([{"lead_id": lead_id, "status": last[lead_id].status, "skip": last[lead_id].skip_reason}
                           for lead_id in sorted(last)])
        suppressed = upsert_arrays_params(chosen_entries(suppressions))
        return Counter(connection.execute(_STOP_ALL, {"stops": rows, **suppressed}).scalars())
    by_status: dict[LeadStatus, list[int]] = {}
    by_reason: dict[str, list[int]] = {}
    for stop in stops:
        if stop.status is not None:
            by_status.setdefault(stop.status, []).append(stop.lead_id)
        by_reason.setdefault(stop.skip_reason, []).append(stop.lead_id)
    set_status, _ = _STATEMENTS[connection.dialect.name]
    for status, lead_ids in by_status.items():
        connection.execute(set_status, {"lead_ids": sorted(lead_ids), "status": status})
    suppress_many(session, suppressions)
    skipped: Counter[int] = Counter()
    for reason, lead_ids in by_reason.items():
        skipped += skip_pending_jobs(session, lead_ids, reason)
    return skipped
