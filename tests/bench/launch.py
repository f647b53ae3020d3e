"""Benchmark: launching a 1,000,000-lead campaign against a bare `INSERT ... SELECT` of the same rows.

    .venv/bin/python tests/bench/launch.py [--leads 1000000] [--server-url postgresql://...]

In a fresh PostgreSQL database it generates three identical campaigns of `--leads` leads (in SQL), then:

- the floor: one bare `INSERT INTO email_jobs ... SELECT` of a campaign's first jobs (same table, same
  indexes and foreign keys, the same columns our launch writes), timed on the first campaign and again on
  the third, after ours, so the floor pays for a table as full as ours did;
- ours: `launch_campaign` (what `POST /api/campaigns/{id}/launch` calls: the pre-flight checks, then the
  first jobs) on the second campaign.

It prints the seconds of each and `ratio_vs_insert_select=` (ours over the mean floor; target <= 1.2).
Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign, launch_campaign  # noqa: E402
from outreach_pipeline.core.templates import TemplateInput, save_template  # noqa: E402
from outreach_pipeline.db.models import Campaign, User  # noqa: E402
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope  # noqa: E402
from tests.bench.scratch_db import scratch_database  # noqa: E402

BARE_INSERT_SELECT = text(
    "INSERT INTO email_jobs (campaign_id, lead_id, step_number, due_at, status, attempts, created_at) "
    "SELECT :c, id, 1, now(), 'PENDING', 0, now() FROM leads WHERE campaign_id = :c")


def insert_leads(session: Session, campaign_id: int, count: int) -> None:
    """`count` ingested-looking leads, generated in SQL."""
    session.execute(text(
        "INSERT INTO leads (campaign_id, email, email_key, first_name, company, custom_fields, status, "
        "reply_token, created_at) SELECT :c, 'lead' || n || '@c' || :c || '.example', "
        "'lead' || n || '@c' || :c || '.example', 'Lead' || n, 'Company ' || n, '{}', 'PENDING', "
        "md5(:c || '-' || n)::uuid, now() FROM generate_series(1, :count) AS n"), {"c": campaign_id, "count": count})


def ready_campaign(sessions: sessionmaker[Session], leads: int) -> int:
    """A DRAFT campaign with one step, its template and `leads` waiting leads: ready to launch."""
    with session_scope(sessions) as session:
        user = User(email=f"launch-{secrets.token_hex(4)}@example.com")
        session.add(user)
        session.flush()
        campaign = create_campaign(session, user.id, CampaignCreate(name="Launch", sender_email="a@b.example"))
        insert_leads(session, campaign.id, leads)
        save_template(session, campaign, TemplateInput(step_number=1, subject="Hi", body="Hi {{first_name|there}}"))
        return campaign.id


def settle(sessions: sessionmaker[Session]) -> None:
    """Start each measurement from the same quiet state: statistics fresh, dirty pages written out."""
    engine = sessions.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
        connection.execute(text("CHECKPOINT"))


def time_bare_insert(sessions: sessionmaker[Session], campaign_id: int) -> float:
    settle(sessions)
    with session_scope(sessions) as session:
        started = time.perf_counter()
        session.execute(BARE_INSERT_SELECT, {"c": campaign_id})
        session.commit()
        return time.perf_counter() - started


def time_launch(sessions: sessionmaker[Session], campaign_id: int, leads: int) -> float:
    settle(sessions)
    with session_scope(sessions) as session:
        started = time.perf_counter()
        queued = launch_campaign(session, session.get_one(Campaign, campaign_id))
        session.commit()
        seconds = time.perf_counter() - started
    assert queued == leads, queued
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    with scratch_database(args.server_url) as url:
        sessions = make_session_factory(create_db_engine(url))
        first, second, third = (ready_campaign(sessions, args.leads) for _ in range(3))
        floor_before = time_bare_insert(sessions, first)
        ours = time_launch(sessions, second, args.leads)
        floor_after = time_bare_insert(sessions, third)
        sessions.kw["bind"].dispose()
    floor = (floor_before + floor_after) / 2
    print(f"leads={args.leads} insert_select_s={floor_before:.2f},{floor_after:.2f} launch_s={ours:.2f} "
          f"ratio_vs_insert_select={ours / floor:.2f}")


if __name__ == "__main__":
    main()
