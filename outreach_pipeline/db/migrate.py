"""Run alembic migrations from code, so both doors and the tests create the schema the same way."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from outreach_pipeline.db.session import normalise_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # alembic's config is an INI file: '%' must be doubled.
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


if __name__ == "__main__":
    from outreach_pipeline.settings import get_settings

    upgrade_database(get_settings().database_url)
    print("database schema is up to date")
