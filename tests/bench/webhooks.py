"""Benchmark: Postmark delivery and bounce webhooks through the real API under uvicorn, against PostgreSQL.

    .venv/bin/python tests/bench/webhooks.py [--seconds 20] [--connections 64] [--workers 2]
        [--server-url postgresql://postgres@127.0.0.1:5432/postgres]

In a fresh database it seeds a launched campaign whose first emails were sent (one job per delivery the
run can post), starts uvicorn on loopback with the app plus one trivial route, then for `--seconds` keeps
`--connections` requests in flight posting realistic Postmark webhooks (80% Delivery, 20% Transient or
HardBounce, every one a distinct event) with HTTP Basic credentials. The same load against the trivial
route is the ceiling. Prints requests/s, p50/p99 latency, errors, events accepted and stored (must be
equal: nothing lost), the ceiling and `ratio_vs_ceiling=`. Each load also prints the CPU time the server
spent per request (uvicorn's processes and the database's backends; on a busy machine, a steadier figure)
and the load generator's own, which shares the machine's cores.
Targets: >= 1,000 webhooks/s, p99 < 100 ms, ratio_vs_ceiling >= 0.25. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from litestar import Litestar, get  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from outreach_api.app import create_app  # noqa: E402
from outreach_pipeline.db.models import (  # noqa: E402
    Campaign, CampaignStatus, CampaignStep, EmailJob, JobStatus, Lead, LeadStatus, User, WebhookEvent,
)
from outreach_pipeline.db.session import create_db_engine  # noqa: E402
from tests.bench.cpu_time import cpu_seconds  # noqa: E402
from tests.bench.scratch_db import scratch_database  # noqa: E402

PASSWORD = "bench-hook-secret"
BOUNCE_SHARE = 0.2


@get("/bench/trivial", sync_to_thread=False, exclude_from_auth=True)
def trivial() -> dict[str, str]:
    return {"status": "ok"}


def bench_app() -> Litestar:
    """The API as `make run` serves it (settings from the environment), plus the ceiling's trivial route."""
    app = create_app()
    app.register(trivial)
    return app


# --- the database ------------------------------------------------------------------------------


def seed(database_url: str, jobs: int) -> list[str]:
    """A launched campaign with `jobs` leads whose first email was sent; returns their provider message ids."""
    engine = create_db_engine(database_url)
    now = datetime.now(UTC)
    message_ids = [str(uuid.uuid4()) for _ in range(jobs)]
    with engine.begin() as connection:
        owner = connection.execute(insert(User).values(email="bench@company.example").returning(User.id)).scalar_one()
        campaign = connection.execute(insert(Campaign).values(
            owner_id=owner, name="Bench", status=CampaignStatus.ACTIVE, launched_at=now).returning(Campaign.id)
        ).scalar_one()
        connection.execute(insert(CampaignStep).values(campaign_id=campaign, number=1, delay_days=0))
        lead_rows = [{"campaign_id": campaign, "email": f"lead{n}@prospect{n % 997}.example",
                      "email_key": f"lead{n}@prospect{n % 997}.example", "status": LeadStatus.CONTACTED,
                      "reply_token": secrets.token_hex(16), "custom_fields": {}} for n in range(jobs)]
        connection.execute(insert(Lead), lead_rows)
        lead_ids = connection.execute(select(Lead.id).where(Lead.campaign_id == campaign).order_by(Lead.id)).scalars()
        connection.execute(insert(EmailJob), [
            {"campaign_id": campaign, "lead_id": lead_id, "step_number": 1, "due_at": now, "sent_at": now,
             "status": JobStatus.SENT, "provider_message_id": message_id,
             "message_id_header": f"<{message_id}@mtasv.net>"}
            for lead_id, message_id in zip(lead_ids, message_ids, strict=True)
        ])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")  # a live database has statistics; a just-filled one has none yet
        try:
            # The seeding's WAL written out now, not by a checkpoint in the middle of a load (a stall of
            # 100 ms or more at the 99th percentile). Needs a superuser or pg_checkpoint; without, skipped.
            connection.exec_driver_sql("CHECKPOINT")
        except DBAPIError:
            pass
    engine.dispose()
    return message_ids


def stored_events(database_url: str) -> int:
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(WebhookEvent)).scalar_one()
    engine.dispose()
    return int(count)


# --- the payloads ------------------------------------------------------------------------------


def payloads(message_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """One distinct event per sent message: mostly deliveries, some bounces (each a new Postmark ID)."""
    events: list[tuple[str, dict[str, Any]]] = []
    for n, message_id in enumerate(message_ids):
        recipient = f"lead{n}@prospect{n % 997}.example"
        if n % round(1 / BOUNCE_SHARE) == 0:
            kind, code = ("HardBounce", 1) if n % 10 == 0 else ("Transient", 2)
            events.append(("/api/webhooks/postmark/bounce", {
                "RecordType": "Bounce", "ID": 4_000_000_000 + n, "Type": kind, "TypeCode": code, "Name": kind,
                "Tag": "campaign-1", "MessageID": message_id, "ServerID": 23, "MessageStream": "outbound",
                "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
                "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
                "Email": recipient, "From": "team@sender.example", "BouncedAt": "2026-11-24T10:00:00Z",
                "DumpAvailable": True, "Inactive": kind == "HardBounce", "CanActivate": True,
                "Subject": "A short note", "Content": "", "Metadata": {}}))
        else:
            events.append(("/api/webhooks/postmark/delivery", {
                "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": message_id,
                "Recipient": recipient, "Tag": "campaign-1", "DeliveredAt": "2026-11-24T10:00:00Z",
                "Details": "Test delivery webhook details", "Metadata": {}}))
    return events


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    accepted: int = 0


BASIC = "Basic " + base64.b64encode(f"postmark:{PASSWORD}".encode()).decode()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection; uvicorn always answers with a Content-Length."""
    writer.write(request)
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


# How the API's answer says the event was stored (a msgspec-encoded EventOut, no spaces).
STORED = b'"stored":true'


def encoded(events: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    """Each event as the bytes of its whole HTTP request."""
    return [_request(path, body) for path, body in events]


def _request(path: str, body: dict[str, Any] | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {BASIC}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


async def load(port: int, requests: list[bytes] | None, seconds: float, connections: int) -> tuple[Tally, float]:
    """`connections` kept-alive connections, each with one request in flight, until the time is up.

    A bare asyncio HTTP/1.1 client: httpx's pool collapsed to ~130 requests/s at 64 connections on
    the bench machine even against a bare Litestar app, so it measured itself, not the server. The
    requests come encoded (`encoded`): the client shares the server's cores, and its own JSON work would
    be counted against the server.
    """
    tally = Tally()
    queue = iter(requests) if requests is not None else None
    trivial = _request("/bench/trivial", None)
    streams = []
    for _ in range(connections):
        # One at a time, as a provider's connections come: in a burst, the uvicorn worker that wakes first
        # accepts them all (asyncio accepts up to 100 per wake-up) and the other idles.
        streams.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.002)
    deadline = time.perf_counter() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while time.perf_counter() < deadline:
                request = trivial if queue is None else next(queue, None)
                if request is None:
                    return
                started = time.perf_counter()
                try:
                    status, answer = await _exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    tally.errors += 1
                    return
                tally.latencies.append(time.perf_counter() - started)
                if status != 200:
                    tally.errors += 1
                elif queue is not None and STORED in answer:
                    tally.accepted += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(reader, writer) for reader, writer in streams))
    return tally, time.perf_counter() - began


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(database_url: str, port: int, workers: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "WEBHOOK_PASSWORD": PASSWORD, "SECRET_KEY": "bench-" * 8,
           "DATA_DIR": str(data_dir), "EMAIL_BACKEND": "outbox", "LLM_BACKEND": "offline", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.bench.webhooks:bench_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/bench/trivial", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("uvicorn did not start")


class ServerCpu:
    """CPU seconds used by uvicorn with its workers, and by the PostgreSQL backends of the bench's database
    (read from /proc; backends that appear during a load count from their start)."""

    def __init__(self, server: subprocess.Popen[bytes], database_url: str) -> None:
        self.server, self.database_url = server, database_url
        self.seen = self._read()

    def _pids(self) -> tuple[list[int], list[int]]:
        children = Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        url = make_url(self.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as db:
            backends = [pid for (pid,) in db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        return [self.server.pid, *workers], backends

    def _read(self) -> dict[tuple[str, int], float]:
        app, database = self._pids()
        return {**{("app", pid): cpu_seconds(pid) for pid in app},
                **{("database", pid): cpu_seconds(pid) for pid in database}}

    def since_last(self) -> dict[str, float]:
        now = self._read()
        used = {"app": 0.0, "database": 0.0}
        for (part, pid), seconds in now.items():
            used[part] += seconds - self.seen.get((part, pid), 0.0)
        self.seen = now
        return used


def report(name: str, tally: Tally, elapsed: float, cpu: dict[str, float]) -> float:
    rate = len(tally.latencies) / elapsed
    print(f"{name}: requests={len(tally.latencies)} requests/s={rate:.0f} "
          f"p50_ms={percentile(tally.latencies, 0.5) * 1000:.1f} p99_ms={percentile(tally.latencies, 0.99) * 1000:.1f} "
          f"errors={tally.errors} cpu_ms_per_request: "
          + " ".join(f"{part}={seconds * 1000 / max(len(tally.latencies), 1):.3f}" for part, seconds in cpu.items()))
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-events", type=int, default=250_000, help="events seeded (the run stops if used up)")
    parser.add_argument("--server-url", default=os.environ.get("BENCH_POSTGRES_URL",
                                                               "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()

    with scratch_database(args.server_url, "bench_webhooks") as database_url:
        run(args, database_url)


def run(args: argparse.Namespace, database_url: str) -> None:
    started = time.perf_counter()
    events = encoded(payloads(seed(database_url, args.max_events)))
    print(f"seeded {len(events)} sent emails in {time.perf_counter() - started:.1f}s")
    port = free_port()
    server = start_server(database_url, port, args.workers, Path(f"/tmp/bench-webhooks-{port}"))
    try:
        asyncio.run(load(port, None, 2, args.connections))  # warm-up: connections, pools, imports
        cpu = ServerCpu(server, database_url)
        client = time.process_time()
        tally, elapsed = asyncio.run(load(port, events, args.seconds, args.connections))
        rate = report("webhooks", tally, elapsed, {**cpu.since_last(), "client": time.process_time() - client})
        stored = stored_events(database_url)
        print(f"accepted={tally.accepted} stored={stored} lost={tally.accepted - stored}")
        cpu.since_last()
        client = time.process_time()
        ceiling_tally, ceiling_elapsed = asyncio.run(load(port, None, args.seconds, args.connections))
        ceiling = report("ceiling (trivial route, same server)", ceiling_tally, ceiling_elapsed,
                         {**cpu.since_last(), "client": time.process_time() - client})
        print(f"ratio_vs_ceiling={rate / ceiling:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
