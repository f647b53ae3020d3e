"""alembic environment: the URL comes from the caller's config or from the project's settings."""

from __future__ import annotations

from alembic import context

from outreach_pipeline.db import models  # noqa: F401  (registers every table)
from outreach_pipeline.db.base import Base
from outreach_pipeline.db.session import create_db_engine, is_sqlite

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    from outreach_pipeline.settings import get_settings

    url = get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(url)
    with engine.connect() as connection:
        # SQLite cannot ALTER most things: batch mode rebuilds tables instead.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=is_sqlite(url))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
