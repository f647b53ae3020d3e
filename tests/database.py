"""Database fixtures for the test suite, loaded by ``tests/conftest.py`` (``pytest_plugins = ["tests.database"]``).

Fixtures
--------
``postgres_server_url`` (session)
    URL of a PostgreSQL server's maintenance database, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``.
    Found in this order:

    1. ``TEST_DATABASE_URL``: a URL to a server; its host, port, user, password and query are used, and the
       tests create (and drop) their own databases on it.
    2. A server on ``127.0.0.1:5432`` (port: ``TEST_POSTGRES_PROBE_PORT``) that user ``postgres`` can reach
       without a password (probed with a 2 s connect timeout).
    3. A throwaway server started from the local PostgreSQL binaries (``pg_ctl`` under
       ``/usr/lib/postgresql/*/bin`` or on ``PATH``) with pytest-postgresql's ``PostgreSQLExecutor``, on a
       free port, with its data directory in a temporary directory; stopped and removed at session end.
       PostgreSQL refuses to run as root, so when the tests run as root ``pg_ctl`` is run as the ``postgres``
       system user (through ``runuser``, or ``su``).

    When none of these works the PostgreSQL tests are skipped with the reason, except when ``CI=true``:
    there they fail, since no PostgreSQL test may be skipped in CI.

``postgres_template_db`` (session)
    Name of a database on that server, migrated once per session, which each test's PostgreSQL database
    is copied from (``CREATE DATABASE ... TEMPLATE``); dropped at session end.

``database_url`` (function, parametrised ``sqlite`` / ``postgresql``)
    A fresh database at the migrations' head for each test: a SQLite file under ``tmp_path`` migrated
    with ``upgrade_database``, or a new database ``outreach_test_<hex>`` copied from the template and
    dropped afterwards (``WITH (FORCE)``). The ``postgresql`` variant carries ``pytest.mark.postgres``.

``sqlite_url`` / ``postgres_url`` (function)
    The same for one backend only. Tests using ``postgres_url`` (or the session PostgreSQL fixtures) are
    marked ``postgres`` at collection, so ``-m "not postgres"`` deselects them too.

``engine``, ``session_factory``, ``db_session`` (function)
    ``create_db_engine(database_url)`` (disposed afterwards), ``make_session_factory(engine)``, and a
    session from it (closed afterwards).

Timing per PostgreSQL test database (measured on this project's 2-CPU dev box, PostgreSQL 15): CREATE
DATABASE + migrations took 0.12-0.18 s with the machine idle and 0.37-0.47 s under load, and grows with
every migration; copying the migrated template took 0.04-0.06 s idle and 0.30-0.35 s loaded (the CREATE
DATABASE itself is most of what remains). Dropping takes ~0.02 s; a SQLite file migrates in ~0.03-0.04 s.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.db.migrate import upgrade_database
from outreach_pipeline.db.session import create_db_engine, make_session_factory

PROBE_HOST = "127.0.0.1"
DEFAULT_PROBE_PORT = 5432
PROBE_TIMEOUT_S = 2
SUPERUSER = "postgres"
# The throwaway server holds nothing worth keeping: trade durability for speed.
THROWAWAY_SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
TEST_DB_PREFIX = "outreach_test_"


# --- finding a server -------------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """No PostgreSQL server: skip the test, or fail it in CI where nothing may be skipped."""
    message = f"no PostgreSQL server for the tests: {reason}"
    if _in_ci():
        pytest.fail(message + " (CI=true: PostgreSQL tests must not be skipped)", pytrace=False)
    pytest.skip(message)


def _probe(url: str) -> str | None:
    """Connect once; return None when the server answers, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        return str(error).strip() or type(error).__name__
    return None


def _server_url(host: str, port: int, user: str = SUPERUSER) -> str:
    return URL.create("postgresql", username=user, host=host, port=port, database="postgres").render_as_string(
        hide_password=False
    )


def _url_from_env(raw: str) -> str:
    try:
        parsed = make_url(raw)
    except Exception as error:  # sqlalchemy.exc.ArgumentError and friends
        _unavailable(f"TEST_DATABASE_URL is not a valid URL: {error}")
    if parsed.get_backend_name() != "postgresql":
        _unavailable(f"TEST_DATABASE_URL must be a postgresql:// URL, got {parsed.drivername}://")
    # Our own databases are created from the server's maintenance database.
    return parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


def _probe_port() -> int:
    raw = os.environ.get("TEST_POSTGRES_PROBE_PORT", "").strip()
    return int(raw) if raw else DEFAULT_PROBE_PORT


def _find_pg_ctl() -> str | None:
    def version_key(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(part) for part in match.group(1).split(".") if part) if match else ()

    candidates = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version_key, reverse=True)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("pg_ctl")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((PROBE_HOST, 0))
        return int(sock.getsockname()[1])


def _run_as_postgres_wrapper(pg_ctl: str, directory: Path) -> str:
    """A pg_ctl stand-in that runs the real one as the ``postgres`` system user (initdb refuses root)."""
    runuser = shutil.which("runuser")
    su = shutil.which("su")
    if runuser:
        command = f"exec {shlex.quote(runuser)} -u {SUPERUSER} -- {shlex.quote(pg_ctl)} \"$@\""
    elif su:
        # '--' ends su's options: the rest go to the shell as $0 and $@ (util-linux su).
        shell_command = shlex.quote('exec "$0" "$@"')
        command = f"exec {shlex.quote(su)} -s /bin/sh -c {shell_command} -- {SUPERUSER} {shlex.quote(pg_ctl)} \"$@\""
    else:
        raise RuntimeError("running as root and neither runuser nor su is available to run pg_ctl as postgres")
    wrapper = directory / "pg_ctl-as-postgres"
    # cd /: the postgres user may not be allowed into the caller's working directory.
    wrapper.write_text(f"#!/bin/sh\ncd /\n{command}\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def _log_tail(logfile: Path, lines: int = 15) -> str:
    try:
        text = logfile.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return ("\n" + "\n".join(text[-lines:])) if text else ""


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (see the module docstring for where it comes from)."""
    configured = os.environ.get("TEST_DATABASE_URL", "").strip()
    if configured:
        url = _url_from_env(configured)
        problem = _probe(url)
        if problem:
            _unavailable(f"TEST_DATABASE_URL is set but its server cannot be reached: {problem}")
        yield url
        return

    local = _server_url(PROBE_HOST, _probe_port())
    if _probe(local) is None:
        yield local
        return

    yield from _throwaway_server()


def _throwaway_server() -> Iterator[str]:
    try:
        from pytest_postgresql.executors import PostgreSQLExecutor
    except ImportError as error:
        _unavailable(f"no server reachable and pytest-postgresql cannot be imported to start one ({error})")
    pg_ctl = _find_pg_ctl()
    if pg_ctl is None:
        _unavailable("no server reachable and no pg_ctl found (under /usr/lib/postgresql/*/bin or on PATH)")

    # Not pytest's tmp_path_factory: its directories are private to the caller, and when we run as root
    # the server runs as postgres, which must be able to reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="outreach-pytest-pg-"))
    executor = None
    try:
        base.chmod(0o755)
        server_dir = base / "server"
        server_dir.mkdir(mode=0o700)
        executable = pg_ctl
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SUPERUSER)
            except KeyError:
                _unavailable("running as root, and there is no 'postgres' system user to run a throwaway server as")
            os.chown(server_dir, account.pw_uid, account.pw_gid)
            executable = _run_as_postgres_wrapper(pg_ctl, base)

        logfile = server_dir / "postgresql.log"
        executor = PostgreSQLExecutor(
            executable=executable,
            host=PROBE_HOST,
            port=_free_port(),
            datadir=str(server_dir / "data"),
            unixsocketdir=str(server_dir),
            logfile=str(logfile),
            startparams="-w",
            dbname="postgres",
            user=SUPERUSER,
            postgres_options=THROWAWAY_SERVER_OPTIONS,
            timeout=60,
        )
        try:
            executor.start()
        except Exception as error:
            _unavailable(f"could not start a throwaway server with {pg_ctl}: {error!r}{_log_tail(logfile)}")
        url = _server_url(PROBE_HOST, executor.port)
        problem = _probe(url)
        if problem:
            _unavailable(f"the throwaway server started but does not answer: {problem}{_log_tail(logfile)}")
        yield url
    finally:
        if executor is not None:
            try:
                if executor.running():
                    executor.stop()
            finally:
                shutil.rmtree(base, ignore_errors=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


# --- per-test databases -----------------------------------------------------------------------------------


def _sqlite_database(directory: Path) -> str:
    url = f"sqlite:///{directory}/outreach.db"
    upgrade_database(url)
    return url


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as connection:
        try:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.errors.SyntaxError:  # PostgreSQL before 13: end the sessions by hand
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _create_database(server_url: str, name: str, template: str | None = None) -> str:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(statement)
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_template_db(postgres_server_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, which each test's PostgreSQL database is copied from.

    Copying it (``CREATE DATABASE ... TEMPLATE``) saves running the migrations for every test (timings in
    the module docstring). Connections to it are disallowed once migrated: PostgreSQL can only copy a
    database nobody is connected to, and no test may change it.
    """
    name = TEST_DB_PREFIX + "template_" + uuid.uuid4().hex[:12]
    url = _create_database(postgres_server_url, name)
    try:
        upgrade_database(url)
        with psycopg.connect(postgres_server_url, autocommit=True) as connection:
            connection.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        yield name
    finally:
        _drop_database(postgres_server_url, name)


def _postgres_database(server_url: str, template: str) -> Iterator[str]:
    """A copy of the migrated template (so the schema is at head), dropped afterwards."""
    name = TEST_DB_PREFIX + uuid.uuid4().hex[:16]
    try:
        yield _create_database(server_url, name, template)
    finally:
        _drop_database(server_url, name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for this test, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield _sqlite_database(tmp_path)
    else:
        yield from _postgres_database(
            request.getfixturevalue("postgres_server_url"), request.getfixturevalue("postgres_template_db")
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for this test."""
    return _sqlite_database(tmp_path)


@pytest.fixture
def postgres_url(postgres_server_url: str, postgres_template_db: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    yield from _postgres_database(postgres_server_url, postgres_template_db)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    db_engine = create_db_engine(database_url)
    try:
        yield db_engine
    finally:
        db_engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def db_session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    session = session_factory()
    try:
        yield session
    finally:
        session.close()


# --- marking ----------------------------------------------------------------------------------------------

_POSTGRES_ONLY_FIXTURES = {"postgres_url", "postgres_server_url", "postgres_template_db"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that need PostgreSQL through the one-backend fixtures (database_url marks its own param)."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        if _POSTGRES_ONLY_FIXTURES.intersection(fixturenames) and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)
