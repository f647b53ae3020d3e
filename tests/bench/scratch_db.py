"""A throwaway PostgreSQL database for one benchmark run: created, migrated, and dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from outreach_pipeline.db.migrate import upgrade_database


@contextmanager
def scratch_database(server_url: str, prefix: str = "outreach_bench") -> Iterator[str]:
    """A fresh database on `server_url`'s server at the latest schema; its URL. Dropped on the way out, even
    with connections still open (WITH FORCE), so a failed run leaves nothing behind."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
