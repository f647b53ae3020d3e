"""The owner-wide list of addresses never to mail again: whole addresses, or whole domains as `@domain`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Text, bindparam, delete, func, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from outreach_pipeline.db.dialect import among
from outreach_pipeline.db.models import Suppression

# Entries that mirror the provider's own suppression list, the only ones its reactivation (a
# SubscriptionChange with SuppressSending false) lifts: a SubscriptionChange that suppressed the address (its
# SuppressionReason, or "provider" when it gave none), a hard bounce (the provider deactivates a hard-bounced
# address; reactivating it there says it works again) and a send the provider refused as inactive. A spam
# complaint (ours, or the provider's "SpamComplaint"), an unsubscribe through our link, a manual entry and three
# soft bounces (our rule, not the provider's) are our own judgements: no provider event undoes them.
PROVIDER_REASONS = frozenset({"provider", "HardBounce", "ManualSuppression", "bounce", "inactive"})


def domain_entry(domain: str) -> str:
    """How a whole domain is kept on the list: `@example.com` (no address can equal it)."""
    return "@" + domain.strip().lower().lstrip("@")


def suppress(session: Session, owner_id: int, email: str, reason: str) -> None:
    suppress_many(session, [(owner_id, email, reason)])


def suppress_many(session: Session, entries: Iterable[tuple[int, str, str]]) -> None:
    """Put (owner, address, reason) entries on the list in one statement. One already there keeps its reason,
    unless it only mirrors the provider's list and the new one is ours: a complaint after the provider's
    suppression must outlive a reactivation there."""
    rows = chosen_entries(entries)
    if not rows:
        return
    # Core rows, not ORM objects: the batch of webhook events that stops leads runs this once for all.
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # One statement over arrays: an executemany goes through psycopg's pipeline mode, whose set-up cost
        # about a fifth of a webhook's CPU.
        connection.execute(UPSERT_ARRAYS, upsert_arrays_params(rows))
    else:
        connection.execute(_UPSERT_ROWS, [
            {"owner_id": owner_id, "email": email, "reason": reason} for owner_id, email, reason in rows])


def chosen_entries(entries: Iterable[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """One (owner, address, reason) per owner and lower-cased address, the reason that outranks the others;
    in key order, so concurrent writers take the index's locks in one order."""
    chosen: dict[tuple[int, str], str] = {}
    for owner_id, email, reason in entries:
        key = (owner_id, email.strip().lower())
        if key not in chosen or _outranks(reason, chosen[key]):
            chosen[key] = reason
    return [(owner_id, email, reason) for (owner_id, email), reason in sorted(chosen.items())]


def upsert_arrays_params(rows: list[tuple[int, str, str]]) -> dict[str, list[Any]]:
    """The parameters of UPSERT_ARRAYS for `chosen_entries` rows."""
    return {"owner_ids": [row[0] for row in rows], "emails": [row[1] for row in rows],
            "reasons": [row[2] for row in rows]}


def _outranks(reason: str, held: str) -> bool:
    return held in PROVIDER_REASONS and reason not in PROVIDER_REASONS


_TABLE = Suppression.__table__


def _on_conflict(statement: Any) -> Any:
    """An entry already there takes the new reason only if that one outranks it."""
    # Written into the SQL: an executemany takes no expanding IN parameter.
    reasons = [literal_column(f"'{reason}'") for reason in sorted(PROVIDER_REASONS)]
    return statement.on_conflict_do_update(
        index_elements=["owner_id", "email"], set_={"reason": statement.excluded.reason},
        where=_TABLE.c.reason.in_(reasons) & statement.excluded.reason.not_in(reasons))


def _upsert_arrays() -> Any:
    """PostgreSQL: INSERT ... SELECT FROM unnest(owner_ids, emails, reasons) ON CONFLICT ..."""
    # Text arrays, not the columns' VARCHAR(n): an explicit cast to VARCHAR(n) cuts a longer value short
    # without a word, where the insert's own conversion refuses it.
    given = func.unnest(bindparam("owner_ids", type_=ARRAY(_TABLE.c.owner_id.type)),
                        bindparam("emails", type_=ARRAY(Text)), bindparam("reasons", type_=ARRAY(Text))
                        ).table_valued("owner_id", "email", "reason").render_derived(name="given")
    return _on_conflict(postgresql.insert(_TABLE).from_select(
        ["owner_id", "email", "reason", "created_at"],
        select(given.c.owner_id, given.c.email, given.c.reason, func.now())))


# Built once (see core/stops.py); core/stops.py also runs it as part of its statement.
UPSERT_ARRAYS = _upsert_arrays()
_UPSERT_ROWS = _on_conflict(sqlite.insert(_TABLE))


def suppress_domain(session: Session, owner_id: int, domain: str, reason: str = "manual") -> None:
    """Every address at `domain` is suppressed for the owner, in every campaign."""
    suppress(session, owner_id, domain_entry(domain), reason)


def lift_provider_suppression(session: Session, owner_id: int, email: str) -> bool:
    """The provider reactivated the address: lift the owner's entry if it only mirrors the provider's list
    (PROVIDER_REASONS); our own stand. Whether one was lifted."""
    result = session.execute(delete(Suppression).where(
        Suppression.owner_id == owner_id, Suppression.email == email.strip().lower(),
        Suppression.reason.in_(sorted(PROVIDER_REASONS))))
    return bool(result.rowcount)


def is_suppressed(session: Session, owner_id: int, email: str) -> bool:
    address = email.strip().lower()
    entries = [address, domain_entry(address.rpartition("@")[2])] if "@" in address else [address]
    found = session.scalar(
        select(Suppression.id).where(Suppression.owner_id == owner_id, Suppression.email.in_(entries)).limit(1)
    )
    return found is not None


def suppressed_among(session: Session, owner_id: int, emails: Iterable[str]) -> set[str]:
    """Which of `emails` (lower-cased) the owner must not mail, by address or by domain: one query per batch."""
    addresses = {email.strip().lower() for email in emails}
    domains = {domain_entry(a.rpartition("@")[2]) for a in addresses if "@" in a}
    entries = set(session.scalars(select(Suppression.email).where(
        Suppression.owner_id == owner_id, among(session, Suppression.email, sorted(addresses | domains)))))
    return {a for a in addresses if a in entries or domain_entry(a.rpartition("@")[2]) in entries}
