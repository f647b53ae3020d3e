"""Benchmark: ingesting a 1,000,000-row lead CSV into PostgreSQL, against a bare `COPY` of the same file.

    .venv/bin/python tests/bench/ingest.py [--rows 1000000] [--server-url postgresql://postgres@127.0.0.1:5432/postgres]

It writes a lead CSV with realistic columns (an Apollo-style export; about 1% bad addresses and 1% duplicates
that differ only in case), then measures in a fresh database:
  (a) the floor: `COPY` of the file into a bare table with a unique index on the address;
  (b) our full ingestion, `import_leads_csv` (read, validate, de-duplicate, store, rejects report),
      in a child process so its peak memory (ru_maxrss) is its own;
  (c) what storing our rows costs PostgreSQL alone: the leads (b) stored, exported, then `COPY`ed into a
      table shaped like `leads` without its indexes and triggers.
Prints the seconds and rows/s of each, the peak memory of (b), the CPU seconds (b) took in its own process
and in its database backend, `ratio_vs_copy=` (b / a) and `bare_leads_vs_copy=` (c / a): how far (b) could
get with nothing but its rows to write.
Targets: ratio_vs_copy <= 2.0 and peak memory < 600 MB. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from sqlalchemy import text  # noqa: E402

from outreach_pipeline.core.campaigns import CampaignCreate, create_campaign  # noqa: E402
from outreach_pipeline.core.lead_store import LEAD_COLUMNS  # noqa: E402
from outreach_pipeline.core.leads import import_leads_csv  # noqa: E402
from outreach_pipeline.db.models import User  # noqa: E402
from outreach_pipeline.db.session import (  # noqa: E402
    create_db_engine,
    make_session_factory,
    session_scope,
)
from tests.bench.cpu_time import cpu_seconds  # noqa: E402
from tests.bench.scratch_db import scratch_database  # noqa: E402

HEADER = ("First Name,Last Name,Title,Company,Email,Email Status,Seniority,Departments,"
          "Person Linkedin Url,Website,City,State,Country\n")
FIRST = ["Maya", "Daniel", "Priya", "Tom", "Sarah", "Lucas", "Aiko", "Elena", "James", "Fatima", "René", "Zoë"]
LAST = ["Okafor", "Reyes", "Raman", "Becker", "O'Neill", "Ferreira", "Tanaka", "Petrova", "Whitfield", "Müller"]
TITLES = ["Head of Growth", "VP Sales", "Founder & CEO", "Operations Manager", "CTO", "Director, Strategy"]
CITIES = [("Austin", "Texas", "United States"), ("Munich", "Bavaria", "Germany"), ("São Paulo", "SP", "Brazil"),
          ("Tokyo", "Tokyo", "Japan"), ("Boston", "Massachusetts", "United States")]
COPY_BLOCK = 1024 * 1024


def write_leads_csv(path: Path, rows: int, seed: int = 7) -> None:
    """Unique addresses, ~1% malformed, ~1% repeating an earlier address in another case."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        lines = []
        repeated: set[int] = set()
        for n in range(rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            city, state, country = rng.choice(CITIES)
            roll = rng.random()
            if roll < 0.01:
                email = f"lead{n}@@company{n % 5000}.example"  # malformed
            elif roll < 0.02 and n > 10 and (earlier := rng.randrange(n)) not in repeated:
                repeated.add(earlier)  # once each, so the floor's case-sensitive unique index holds
                email = f"LEAD{earlier}@company{earlier % 5000}.example".upper()  # same address, other case
            else:
                email = f"lead{n}@company{n % 5000}.example"
            company = f'"{last} & Co, {n % 5000}"'
            lines.append(f"{first},{last},\"{rng.choice(TITLES)}\",{company},{email},Verified,Manager,Sales,"
                         f"http://www.linkedin.com/in/lead{n},http://company{n % 5000}.example,{city},{state},"
                         f"{country}\n")
            if len(lines) == 10_000:
                out.writelines(lines)
                lines.clear()
        out.writelines(lines)


def copy_floor(url: str, path: Path) -> float:
    """Seconds to COPY the file into a bare table with a unique index on the address."""
    columns = [c.strip().lower().replace(" ", "_") for c in HEADER.strip().split(",")]
    with psycopg.connect(url) as connection:
        connection.execute(sql.SQL("CREATE TABLE copy_floor ({})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)))
        connection.execute("CREATE UNIQUE INDEX copy_floor_email ON copy_floor (email)")
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy(
            "COPY copy_floor FROM STDIN WITH (FORMAT csv, HEADER true)"
        ) as copy, path.open("rb") as source:
            while block := source.read(COPY_BLOCK):
                copy.write(block)
        connection.commit()
        return time.perf_counter() - started


def checkpoint(url: str) -> None:
    """Write out what earlier steps left in the WAL, so that neither load pays for the other's checkpoint
    (1M rows write hundreds of MB of WAL: the second load would otherwise meet the checkpoint the first
    one's WAL brings on)."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")


def bare_leads_copy(url: str, folder: Path) -> float:
    """Seconds to COPY the stored leads again into a copy of `leads` with no index, constraint or trigger:
    the database's share of (b) that no code of ours can remove while it stores these columns."""
    path = folder / "leads.stored.csv"
    columns = sql.SQL(", ").join(map(sql.Identifier, LEAD_COLUMNS))
    with psycopg.connect(url) as connection:
        with connection.cursor() as cursor, path.open("wb") as out, cursor.copy(
            sql.SQL("COPY (SELECT {} FROM leads) TO STDOUT WITH (FORMAT csv)").format(columns)
        ) as copy:
            for block in copy:
                out.write(block)
        connection.execute("CREATE TABLE bare_leads (LIKE leads INCLUDING DEFAULTS)")
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy(
            sql.SQL("COPY bare_leads ({}) FROM STDIN WITH (FORMAT csv)").format(columns)
        ) as copy, path.open("rb") as source:
            while block := source.read(COPY_BLOCK):
                copy.write(block)
        connection.commit()
        return time.perf_counter() - started


def _ingest(url: str, path: str, rejects: str, answer: multiprocessing.connection.Connection) -> None:
    engine = create_db_engine(url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        user = User(email=f"bench-{secrets.token_hex(4)}@example.com")
        session.add(user)
        session.flush()
        campaign = create_campaign(session, user.id, CampaignCreate(name="Bench"))
        campaign_id = campaign.id
    with session_scope(sessions) as session:
        campaign = session.get_one(type(campaign), campaign_id)
        backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        database_cpu, python_cpu = cpu_seconds(backend), _own_cpu_seconds()
        started = time.perf_counter()
        with open(path, "rb") as stream:
            report = import_leads_csv(session, campaign, stream, source="bench", rejects_path=Path(rejects))
        seconds = time.perf_counter() - started
        # Where the time went: this process (reading, checking, the COPY's client side) and its backend.
        python_cpu, database_cpu = _own_cpu_seconds() - python_cpu, cpu_seconds(backend) - database_cpu
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    answer.send({"seconds": seconds, "peak_mb": peak_mb, "rows_read": report.rows_read, "stored": report.stored,
                 "rejected": report.rejected, "reasons": dict(report.reasons), "python_cpu_s": python_cpu,
                 "database_cpu_s": database_cpu})


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def full_ingestion(url: str, path: Path, rejects: Path) -> dict[str, object]:
    """Our ingestion in a fresh process, so the peak memory measured is the ingestion's alone."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_ingest, args=(url, str(path), str(rejects), send))
    child.start()
    result: dict[str, object] = receive.recv()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    with scratch_database(args.server_url) as url, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "leads.csv"
        started = time.perf_counter()
        write_leads_csv(path, args.rows)
        print(f"rows={args.rows} file_mb={path.stat().st_size / 1e6:.1f} "
              f"generated_in_s={time.perf_counter() - started:.1f}")
        checkpoint(url)
        floor = copy_floor(url, path)
        checkpoint(url)
        ours = full_ingestion(url, path, Path(folder) / "leads.rejects.csv")
        path.unlink()
        checkpoint(url)
        bare = bare_leads_copy(url, Path(folder))

    seconds = float(ours["seconds"])  # type: ignore[arg-type]
    print(f"copy_s={floor:.2f} copy_rows_per_s={args.rows / floor:,.0f}")
    print(f"ingest_s={seconds:.2f} ingest_rows_per_s={args.rows / seconds:,.0f} peak_mem_mb={ours['peak_mb']:.0f}")
    print(f"ingest_cpu_s: python={ours['python_cpu_s']:.1f} database={ours['database_cpu_s']:.1f}")
    print(f"rows_read={ours['rows_read']} stored={ours['stored']} rejected={ours['rejected']} "
          f"reasons={ours['reasons']}")
    print(f"bare_leads_copy_s={bare:.2f} (our stored rows alone, no index or trigger) "
          f"bare_leads_vs_copy={bare / floor:.2f}")
    print(f"ratio_vs_copy={seconds / floor:.2f} (target <= 2.0; peak memory target < 600 MB)")


if __name__ == "__main__":
    main()
