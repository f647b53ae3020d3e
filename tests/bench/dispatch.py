"""Benchmark: 100,000 due jobs in PostgreSQL dispatched through the real `postmarker` client to the fake Postmark.

    .venv/bin/python tests/bench/dispatch.py [--jobs 100000] [--latency 0 0.1] [--concurrency 4 8]
                                             [--server-url postgresql://...]

For each latency (seconds the fake sleeps per request) it measures, in the same run:

- the ceiling: the same fake fed pre-built 500-message batches (the messages our path builds) by a bare
  `http.client` client, no database, over as many connections as the dispatch uses (concurrency times
  processes);
- ours: `dispatch_due` from a fresh set of due jobs (claim, compose, send, record; nothing skipped).

It prints emails/s for both, `ratio_vs_ceiling=` (targets: >= 0.5 with no latency, >= 0.8 with 100 ms)
and `duplicates=` at the fake (must be 0). The fake runs in its own process, as a real endpoint would.
Launch speed has its own benchmark, tests/bench/launch.py.
Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text  # noqa: E402

from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign, launch_campaign  # noqa: E402
from outreach_pipeline.core.compose import SenderConfig  # noqa: E402
from outreach_pipeline.core.delivery import SendPolicy, dispatch_due  # noqa: E402
from outreach_pipeline.core.templates import TemplateInput, save_template  # noqa: E402
from outreach_pipeline.db.models import User  # noqa: E402
from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope  # noqa: E402
from outreach_pipeline.mail.postmark import PostmarkMailer  # noqa: E402
from tests.bench.cpu_time import cpu_seconds, cpu_seconds_with_reaped, descendants, parent_pid  # noqa: E402
from tests.bench.remote_fake import RemoteFake  # noqa: E402
from tests.fakes.postmark import FakePostmark  # noqa: E402
from tests.bench.scratch_db import scratch_database  # noqa: E402

TOKEN = "bench-token"
CONFIG = SenderConfig("team@sender.example", "inbound.sender.example", "https://outreach.example")


def _serve(connection: Connection) -> None:
    sys.setswitchinterval(0.0005)  # many sleeping handler threads wake on time
    with FakePostmark(server_token=TOKEN) as fake:
        connection.send(fake.url)
        while (command := connection.recv()) != "stop":
            name, _, value = command.partition(" ")
            if name == "latency":
                fake.latency_s = float(value)
            elif name == "reset":
                fake.reset()
            messages = fake.messages if name == "count" else []
            job_ids = [m.get("Metadata", {}).get("job_id") for m in messages]
            connection.send({"messages": len(messages), "duplicates": len(job_ids) - len(set(job_ids))})


def _message(n: int) -> dict[str, Any]:
    """The shape our compose step sends (same fields, similar sizes)."""
    token = secrets.token_hex(8)
    link = f"https://outreach.example/unsubscribe/{token}"
    return {"From": "Ada <ada@sender.example>", "To": f"lead{n}@bench.example", "Subject": "Freight costs at Acme",
            "TextBody": f"Hi Lead{n},\n\nWe cut freight costs by 12%.\n\nAda\n\n--\nUnsubscribe: {link}\n",
            "HtmlBody": f"<div>Hi Lead{n},<br>\n<br>\nWe cut freight costs by 12%.</div><p><a href=\"{link}\">"
                        "Unsubscribe</a></p>",
            "ReplyTo": f"reply+{token}@inbound.sender.example",
            "Headers": [{"Name": "List-Unsubscribe", "Value": f"<{link}>"},
                        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}],
            "Metadata": {"job_id": str(n), "campaign_id": "1", "step": "1"}, "Tag": "campaign-1",
            "MessageStream": "outbound", "TrackOpens": False}


def ceiling(url: str, jobs: int, connections: int) -> float:
    """Messages/s of pre-built 500-message batches posted by bare keep-alive HTTP clients."""
    bodies = [json.dumps([_message(n) for n in range(start, min(start + 500, jobs))]).encode()
              for start in range(0, jobs, 500)]
    parts = urlsplit(url)
    queue = list(reversed(bodies))
    lock = threading.Lock()

    def post_all() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "X-Postmark-Server-Token": TOKEN}
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            conn.request("POST", "/email/batch", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=post_all) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return jobs / (time.perf_counter() - started)


def seed_due_jobs(url: str, jobs: int) -> int:
    """A one-step ACTIVE campaign with `jobs` leads, launched an hour ago: `jobs` due step-1 jobs."""
    sessions = make_session_factory(create_db_engine(url))
    with session_scope(sessions) as session:
        user = User(email=f"bench-{secrets.token_hex(4)}@example.com")
        session.add(user)
        session.flush()
        campaign = create_campaign(session, user.id, CampaignCreate(
            name="Bench", sender_name="Ada", sender_email="ada@sender.example"))
        campaign.daily_cap = 10 * jobs  # the cap is not what is measured here
        _insert_leads(session, campaign.id, jobs)
        save_template(session, campaign, TemplateInput(
            step_number=1, subject="Freight costs at {{company}}",
            body="Hi {{first_name|there}},\n\nWe cut freight costs by 12%.\n\nAda"))
        launch_campaign(session, campaign, now=datetime.now(UTC) - timedelta(hours=1))
        campaign_id = campaign.id
    sessions.kw["bind"].dispose()
    return campaign_id


def _insert_leads(session: Any, campaign_id: int, count: int) -> None:
    session.execute(text(
        "INSERT INTO leads (campaign_id, email, email_key, first_name, company, custom_fields, status, "
        "reply_token, created_at) SELECT :c, 'lead' || n || '@c' || :c || '.example', "
        "'lead' || n || '@c' || :c || '.example', 'Lead' || n, 'Company ' || n, '{}', 'PENDING', "
        "md5(:c || '-' || n)::uuid, now() FROM generate_series(1, :count) AS n"), {"c": campaign_id, "count": count})


class CpuUse:
    """CPU seconds of this process (every thread) with its send processes, the fake's process and every
    PostgreSQL process on the machine (backends, WAL writer, checkpointer), read from /proc."""

    def __init__(self, fake_pid: int) -> None:
        self.fake_pid = fake_pid
        self.seen = self._read()

    def _read(self) -> dict[tuple[str, int], float]:
        database = [int(entry.name) for entry in Path("/proc").iterdir()
                    if entry.name.isdigit() and _command(entry) == "postgres"]
        postmaster = {pid for pid in database if _command(Path(f"/proc/{parent_pid(pid)}")) != "postgres"}
        # Ours: this process with its send processes, those that ended included (os.times counts the children
        # it has reaped; the fake is reaped only after the bench).
        helpers = set(descendants(os.getpid())) - {self.fake_pid, *descendants(self.fake_pid)}
        return {("ours", os.getpid()): sum(os.times()[:4]), ("fake", self.fake_pid): cpu_seconds(self.fake_pid),
                **{("ours", pid): cpu_seconds_with_reaped(pid) for pid in helpers},
                **{(_role(pid), pid): cpu_seconds(pid) for pid in database if pid not in postmaster},
                # Backends that ended (the send processes' connections) left their time to the postmaster.
                **{("database", pid): cpu_seconds_with_reaped(pid) - cpu_seconds(pid) for pid in postmaster}}

    def since_start(self) -> dict[str, float]:
        used = {"ours": 0.0, "fake": 0.0, "database": 0.0, "database_background": 0.0}
        for (part, pid), seconds in self._read().items():
            used[part] += seconds - self.seen.get((part, pid), 0.0)
        return used


def _role(pid: int) -> str:
    """A PostgreSQL backend serving a client is "database"; the WAL writer, checkpointer, autovacuum and the
    like are "database_background"."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "database_background"
    return "database" if "(" in title else "database_background"  # a client backend names its peer, host(port)


def _command(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip()
    except OSError:
        return ""


def dispatch(url: str, fake: RemoteFake, jobs: int, concurrency: int, processes: int) -> tuple[float, dict[str, float]]:
    """Emails/s of dispatch_due over `jobs` fresh due jobs, and the CPU seconds each part spent on them."""
    seed_due_jobs(url, jobs)
    sessions = make_session_factory(create_db_engine(url, pool_size=concurrency + 2))
    mailer = PostmarkMailer(TOKEN, fake.url, "outbound")
    cpu = CpuUse(fake.pid)
    started = time.perf_counter()
    report = dispatch_due(sessions, mailer, CONFIG, datetime.now(UTC),
                          policy=SendPolicy(batch_size=500, concurrency=concurrency, processes=processes))
    seconds = time.perf_counter() - started
    used = cpu.since_start()
    sessions.kw["bind"].dispose()
    assert report.sent == jobs, report
    return jobs / seconds, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8],
                        help="batches in flight, one per latency (default: 4, the send resource's default, with "
                             "none; 8 with 100 ms)")
    parser.add_argument("--processes", type=int, nargs="+",
                        help="send processes, one per latency, each with --concurrency batches in flight (default: 1)")
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    args.processes = args.processes or [1] * len(args.latency)

    fake = RemoteFake(_serve)
    try:
        for latency, concurrency, processes in zip(args.latency, args.concurrency, args.processes, strict=True):
            with scratch_database(args.server_url) as url:
                fake.ask(f"latency {latency}")
                fake.ask("reset")
                bare = ceiling(fake.url, args.jobs, concurrency * processes)
                fake.ask("reset")
                ours, cpu = dispatch(url, fake, args.jobs, concurrency, processes)
                counted = fake.ask("count")
            print(f"jobs={args.jobs} latency_s={latency} concurrency={concurrency} processes={processes}")
            print(f"ceiling_emails_per_s={bare:,.0f} dispatch_emails_per_s={ours:,.0f} "
                  f"ratio_vs_ceiling={ours / bare:.2f} messages_at_fake={counted['messages']} "
                  f"duplicates={counted['duplicates']}")
            print("cpu_ms_per_email: " + " ".join(f"{part}={seconds * 1000 / args.jobs:.3f}"
                                                  for part, seconds in cpu.items()))
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
