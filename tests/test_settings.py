"""Settings and embedded defaults: what runs with nothing configured, and what production refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from outreach_api.app import create_app
from outreach_pipeline.db.session import create_db_engine
from outreach_pipeline.llm.offline_writer import OfflineWriter
from outreach_pipeline.llm.openai_writer import OpenAIWriter
from outreach_pipeline.llm.factory import writer_from_settings
from outreach_pipeline.mail.factory import mailer_from_settings
from outreach_pipeline.mail.outbox import FileOutbox
from outreach_pipeline.mail.postmark import PostmarkMailer
from outreach_pipeline.settings import Settings


def bare_settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **values)  # type: ignore[call-arg]


def test_embedded_defaults_need_no_keys(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'outreach.db'}"
    assert settings.outbox_dir == tmp_path / "data" / "outbox"
    assert settings.leads_bucket == str(tmp_path / "data" / "bucket")
    assert isinstance(mailer_from_settings(settings), FileOutbox)
    assert isinstance(writer_from_settings(settings), OfflineWriter)


def test_keys_switch_to_the_real_services(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path, postmark_server_token="pm-token", openai_api_key="sk-test")
    assert isinstance(mailer_from_settings(settings), PostmarkMailer)
    assert isinstance(writer_from_settings(settings), OpenAIWriter)


def test_blank_values_from_env_file_mean_default(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=\nOUTBOX_DIR=\nLEADS_BUCKET=\nSECRET_KEY=\n")
    settings = Settings(_env_file=env_file, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    assert settings.outbox_dir == tmp_path / "data" / "outbox"
    assert settings.database_url.startswith("sqlite:///")


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = bare_settings(tmp_path).resolved_secret_key()
    second = bare_settings(tmp_path).resolved_secret_key()
    assert first == second and len(first) >= 48
    assert (tmp_path / "data" / ".secret_key").stat().st_mode & 0o777 == 0o600


def test_production_refuses_to_start_without_secret_key(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        create_app(bare_settings(tmp_path, environment="production", app_base_url="https://outreach.example"))
    assert not (tmp_path / "data" / ".secret_key").exists()


def test_production_refuses_an_unsubscribe_base_url_that_is_not_https(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="APP_BASE_URL must be an https:// URL"):
        bare_settings(tmp_path, environment="production", app_base_url="http://outreach.example",
                      secret_key="k" * 48)
    assert bare_settings(tmp_path, app_base_url="http://localhost:8000").app_base_url.startswith("http://")


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_a_send_lease_too_short_for_a_batch_and_its_retries_is_refused(tmp_path: Path) -> None:
    """Half the lease must outlast a batch's every retry: a claim that young is sent without renewal."""
    with pytest.raises(ValidationError, match="more than 10 minutes"):
        bare_settings(tmp_path, send_lease_minutes=9)
    with pytest.raises(ValidationError, match="more than 22 minutes"):
        bare_settings(tmp_path, send_max_retries=10)  # the default 15 minutes is too short for ten retries
    assert bare_settings(tmp_path, send_lease_minutes=11).send_lease_minutes == 11
