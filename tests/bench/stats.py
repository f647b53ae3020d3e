"""Benchmark: `GET /api/campaigns/{id}` (the campaign with its stats) for a campaign of 1,000,000 jobs.

    .venv/bin/python tests/bench/stats.py [--leads 500000] [--requests 300] [--churn 2000]
        [--server-url postgresql://postgres@127.0.0.1:5432/postgres]

In a fresh PostgreSQL database it builds, with bulk INSERT ... SELECT generate_series (the counting
triggers fire as they would for real imports and launches), a two-step campaign with A/B variants whose
`--leads` leads each have two jobs: first emails sent (most delivered, some bounced or replied), follow-ups
pending or skipped. It then applies `--churn` single-row changes as webhooks and sends would (each appends
deltas that a read has to fold), signs in through the real API (magic link from the file outbox) and calls
the endpoint `--requests` times through Litestar's TestClient, the whole app and its middleware included.
Prints p50/p99 ms of the endpoint, the same campaign's plain GROUP BY recount for comparison, and the target.
Target: p99 < 50 ms. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from litestar.testing import TestClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from outreach_api.app import create_app  # noqa: E402
from outreach_pipeline.core.lead_store import LEADS_COUNTED_SETTING  # noqa: E402
from outreach_pipeline.db.session import create_db_engine  # noqa: E402
from tests.fixtures import latest_outbox_token, make_settings, sign_in  # noqa: E402
from tests.bench.scratch_db import scratch_database  # noqa: E402

TARGET_MS = 50.0

BUILD = [
    """INSERT INTO campaigns (owner_id, name, pitch, tone, sender_name, sender_email, status, timezone,
           window_start_hour, window_end_hour, send_days, daily_cap, send_gap_seconds, created_at, launched_at)
       VALUES (:owner, 'Bench stats', '', 'friendly', 'Ada', 'ada@sender.example', 'ACTIVE', 'UTC', 0, 24,
               '0123456', 100000, 0, now(), now()) RETURNING id""",
    """INSERT INTO campaign_steps (campaign_id, number, delay_days, subject_hint, thread)
       VALUES (:campaign, 1, 0, '', true), (:campaign, 2, 3, '', true)""",
    """INSERT INTO templates (campaign_id, step_number, variant, subject, body, source, prompt_tokens,
           completion_tokens, warnings, created_at, updated_at)
       SELECT :campaign, step, variant, 'Hello', 'Hi there', 'manual', 0, 0, '[]', now(), now()
       FROM (VALUES (1, 'A'), (1, 'B'), (2, 'A')) t(step, variant)""",
    # The leads go in the way an import stores them: uncounted row by row, then counted in one row per status
    # (core/lead_store.py). Counted by the row trigger, they would leave as many deltas (and, once folded, as
    # many dead rows for every stats read to step over until a vacuum).
    f"SELECT set_config('{LEADS_COUNTED_SETTING}', 'on', true)",
    # Lead n: replied when n % 50 = 0, bounced when n % 40 = 1, else contacted.
    """INSERT INTO leads (campaign_id, email, email_key, custom_fields, status, reply_token, created_at)
       SELECT :campaign, 'lead' || n || '@bench.example', 'lead' || n || '@bench.example', '{}',
              CASE WHEN n % 50 = 0 THEN 'REPLIED' WHEN n % 40 = 1 THEN 'BOUNCED' ELSE 'CONTACTED' END,
              md5(:campaign || '-' || n)::uuid, now()
       FROM generate_series(1, :leads) n""",
    """INSERT INTO campaign_counts (campaign_id, kind, step_number, template_id, status, delivered, n)
       SELECT :campaign, 'lead', 0, 0, status, false, count(*) FROM leads WHERE campaign_id = :campaign
       GROUP BY status""",
    f"SELECT set_config('{LEADS_COUNTED_SETTING}', '', true)",
    # Step 1 sent through variant A or B (90% delivered); step 2 pending, or skipped for stopped leads.
    """INSERT INTO email_jobs (campaign_id, lead_id, step_number, template_id, due_at, status, attempts,
           provider_message_id, sent_at, delivered_at, created_at)
       SELECT l.campaign_id, l.id, 1, CASE WHEN l.id % 2 = 0 THEN t.a ELSE t.b END, now(), 'SENT', 1,
              md5('m' || l.id), now(), CASE WHEN l.id % 10 <> 0 THEN now() END, now()
       FROM leads l, (SELECT min(id) FILTER (WHERE variant = 'A' AND step_number = 1) a,
                             min(id) FILTER (WHERE variant = 'B') b FROM templates WHERE campaign_id = :campaign) t
       WHERE l.campaign_id = :campaign""",
    """INSERT INTO email_jobs (campaign_id, lead_id, step_number, due_at, status, attempts, created_at)
       SELECT campaign_id, id, 2, now() + interval '3 days',
              CASE WHEN status = 'CONTACTED' THEN 'PENDING' ELSE 'SKIPPED' END, 0, now()
       FROM leads WHERE campaign_id = :campaign""",
]
# One webhook-sized change: a delivery stamped on a sent email (each appends two deltas).
CHURN = """UPDATE email_jobs SET delivered_at = now()
           WHERE id = (SELECT id FROM email_jobs WHERE campaign_id = :campaign AND step_number = 1
                       AND delivered_at IS NULL LIMIT 1)"""
RECOUNT = [
    "SELECT status, count(*) FROM leads WHERE campaign_id = :campaign GROUP BY status",
    """SELECT step_number, template_id, status, count(*) FROM email_jobs WHERE campaign_id = :campaign
       GROUP BY step_number, template_id, status""",
    "SELECT count(*) FROM email_jobs WHERE campaign_id = :campaign AND delivered_at IS NOT NULL",
]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def build(database_url: str, owner: int, leads: int, churn: int) -> int:
    engine = create_db_engine(database_url)
    try:
        with engine.begin() as connection:
            campaign = connection.execute(text(BUILD[0]), {"owner": owner}).scalar_one()
            for statement in BUILD[1:]:
                connection.execute(text(statement), {"campaign": campaign, "leads": leads})
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()
            for _ in range(churn):  # one transaction each, as webhooks commit
                connection.execute(text(CHURN), {"campaign": campaign})
                connection.commit()
        return int(campaign)
    finally:
        engine.dispose()


def recount_ms(database_url: str, campaign: int, times: int = 5) -> float:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            timings = []
            for _ in range(times):
                started = time.perf_counter()
                for statement in RECOUNT:
                    connection.execute(text(statement), {"campaign": campaign}).all()
                timings.append((time.perf_counter() - started) * 1000)
        return percentile(timings, 0.5)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=500_000, help="two jobs each")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--churn", type=int, default=2_000, help="single-row changes after the build")
    parser.add_argument("--server-url", default=os.environ.get("BENCH_POSTGRES_URL",
                                                               "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    with scratch_database(args.server_url, "bench_stats") as database_url:
        settings = make_settings(folder, database_url)
        with TestClient(create_app(settings)) as client:
            assert settings.outbox_dir is not None
            outbox = settings.outbox_dir
            auth = sign_in(client, "bench@company.example", lambda: latest_outbox_token(outbox))
            owner = client.get("/api/auth/me", headers=auth).json()["id"]
            started = time.perf_counter()
            campaign = build(database_url, owner, args.leads, args.churn)
            print(f"built campaign {campaign}: {args.leads} leads, {2 * args.leads} jobs, {args.churn} churn "
                  f"updates in {time.perf_counter() - started:.1f}s")

            first = client.get(f"/api/campaigns/{campaign}", headers=auth)
            assert first.status_code == 200, first.text
            stats = first.json()["stats"]
            assert sum(sum(s.values()) for s in stats["jobs_by_step"].values()) == 2 * args.leads
            assert sum(stats["leads_by_status"].values()) == args.leads
            print(f"first read (folds the churn deltas): {first.elapsed.total_seconds() * 1000:.1f} ms; "
                  f"sent={stats['sent']} delivered={stats['delivered']} replied={stats['replied']} "
                  f"bounced={stats['bounced']}")
            timings = []
            for _ in range(args.requests):
                began = time.perf_counter()
                answer = client.get(f"/api/campaigns/{campaign}", headers=auth)
                timings.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200
        p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
        print(f"GET /api/campaigns/{{id}}: requests={len(timings)} p50_ms={p50:.1f} p99_ms={p99:.1f}")
        print(f"plain GROUP BY recount of the same campaign (the stats before counters): "
              f"p50_ms={recount_ms(database_url, campaign):.0f}")
        print(f"target p99 < {TARGET_MS:.0f} ms: {'met' if p99 < TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
