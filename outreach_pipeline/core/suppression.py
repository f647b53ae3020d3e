"""The owner-wide list of addresses never to mail again: whole addresses, or whole domains as `@domain`."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from outreach_pipeline.db.dialect import among, insert_ignoring_conflicts
from outreach_pipeline.db.models import Suppression


def domain_entry(domain: str) -> str:
    """How a whole domain is kept on the list: `@example.com` (no address can equal it)."""
    return "@" + domain.strip().lower().lstrip("@")


def suppress(session: Session, owner_id: int, email: str, reason: str) -> None:
    suppress_many(session, [(owner_id, email, reason)])


def suppress_many(session: Session, entries: Iterable[tuple[int, str, str]]) -> None:
    """Put (owner, address, reason) entries on the list in one statement; one already there keeps its reason."""
    first: dict[tuple[int, str], str] = {}
    for owner_id, email, reason in entries:
        first.setdefault((owner_id, email.strip().lower()), reason)
    rows = sorted(first.items())  # in key order: concurrent writers take the index's locks in one order
    if rows:
        # Core rows, not ORM objects: the batch of webhook events that stops leads runs this once for all.
        statement = insert_ignoring_conflicts(session, Suppression.__table__, ["owner_id", "email"])
        session.connection().execute(statement, [
            {"owner_id": owner_id, "email": email, "reason": reason} for (owner_id, email), reason in rows])


def suppress_domain(session: Session, owner_id: int, domain: str, reason: str = "manual") -> None:
    """Every address at `domain` is suppressed for the owner, in every campaign."""
    suppress(session, owner_id, domain_entry(domain), reason)


def lift_suppression(session: Session, owner_id: int, email: str) -> bool:
    result = session.execute(delete(Suppression).where(Suppression.owner_id == owner_id,
                                                       Suppression.email == email.strip().lower()))
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
