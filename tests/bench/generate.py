"""Benchmark: 2,000 per-lead openers through the real `openai` async client against the local fake server.

    .venv/bin/python tests/bench/generate.py [--leads 2000] [--latency 0.2] [--concurrency 50]

The fake answers each request after `latency` seconds; the ideal wall time is leads x latency / concurrency.
Prints the wall seconds, the ideal, `ratio_vs_ideal=` (target <= 1.25) and the calls an immediate re-run
makes (must be 0: every lead has its opener). A second pass after deleting the openers measures the cache.
Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import delete, func, insert, select  # noqa: E402

from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign  # noqa: E402
from outreach_pipeline.core.openers import READY, generate_openers  # noqa: E402
from outreach_pipeline.db.migrate import upgrade_database  # noqa: E402
from outreach_pipeline.db.models import Lead, LeadOpener, User  # noqa: E402
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope  # noqa: E402
from outreach_pipeline.llm.openai_writer import OpenAIWriter  # noqa: E402
from tests.bench.remote_fake import RemoteFake  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402


def _serve(connection: Connection, latency: float) -> None:
    """The fake in its own process, as a real endpoint is: its threads do not compete with the client's.

    Its 50 threads wake from their 200 ms sleeps together; a shorter GIL switch interval (default 5 ms) lets
    each answer go out when due instead of queueing behind the others, so the fake answers after 200 ms.
    """
    sys.setswitchinterval(0.0005)
    with FakeOpenAI(api_key="bench-key") as fake:
        fake.latency_s = latency
        connection.send(fake.url)
        while (command := connection.recv()) != "stop":
            if command == "reset":
                fake.reset()
            connection.send({"calls": fake.call_count, "max_in_flight": fake.max_in_flight})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file in a temporary folder")
    args = parser.parse_args()

    fake = RemoteFake(_serve, args.latency)
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/bench.db"
        upgrade_database(url)
        engine = create_db_engine(url)
        sessions = make_session_factory(engine)
        with session_scope(sessions) as session:
            user = User(email=f"bench-{secrets.token_hex(4)}@example.com")
            session.add(user)
            session.flush()
            campaign = create_campaign(session, user.id, CampaignCreate(name="Bench", pitch="We cut freight costs."))
            campaign_id = campaign.id
            # Distinct facts per lead, so every lead is its own request (no sharing, no cache).
            session.execute(insert(Lead), [
                {"campaign_id": campaign_id, "email": f"lead{n}@example.com", "email_key": f"lead{n}@example.com",
                 "first_name": f"Lead{n}", "company": f"Company {n}", "title": "Head of Logistics",
                 "custom_fields": {}, "reply_token": secrets.token_hex(16)}
                for n in range(args.leads)
            ])
        writer = OpenAIWriter("bench-key", "fake-model", fake.url + "/v1", max_retries=2)

        started = time.perf_counter()
        report = generate_openers(sessions, writer, campaign_id, concurrency=args.concurrency)
        wall = time.perf_counter() - started
        first = fake.ask("count")
        with session_scope(sessions) as session:
            ready = session.scalar(select(func.count()).select_from(LeadOpener).where(LeadOpener.status == READY))

        fake.ask("reset")
        again = generate_openers(sessions, writer, campaign_id, concurrency=args.concurrency)
        calls_rerun = fake.ask("count")["calls"]

        with session_scope(sessions) as session:
            session.execute(delete(LeadOpener))
        fake.ask("reset")
        cache_started = time.perf_counter()
        from_cache = generate_openers(sessions, writer, campaign_id, concurrency=args.concurrency)
        cache_wall = time.perf_counter() - cache_started
        calls_cache = fake.ask("count")["calls"]
        engine.dispose()
    fake.stop()

    ideal = args.leads * args.latency / args.concurrency
    print(f"leads={args.leads} latency_s={args.latency} concurrency={args.concurrency}")
    print(f"openers_ready={ready} failed={report.failed} calls={first['calls']} max_in_flight={first['max_in_flight']}")
    print(f"wall_s={wall:.2f} ideal_s={ideal:.2f} ratio_vs_ideal={wall / ideal:.3f}")
    print(f"rerun_calls={calls_rerun} (leads needing openers on re-run: {again.leads})")
    print(f"cache_rerun_calls={calls_cache} cache_hits={from_cache.cache_hits} cache_wall_s={cache_wall:.2f}")


if __name__ == "__main__":
    main()
