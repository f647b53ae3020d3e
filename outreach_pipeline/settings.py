"""One settings object for both doors, read from the environment and `.env`.

With nothing set, everything runs on embedded defaults: a SQLite database and a
file outbox under `data/`, the offline template writer, a generated secret key.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EmailBackend(StrEnum):
    AUTO = "auto"  # Postmark when a server token is set, else the file outbox
    OUTBOX = "outbox"
    POSTMARK = "postmark"


class LlmBackend(StrEnum):
    AUTO = "auto"  # OpenAI-compatible when a key or base URL is set, else offline
    OPENAI = "openai"
    OFFLINE = "offline"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: str = Field("development", description="'production' makes a missing SECRET_KEY fatal.")
    data_dir: Path = PROJECT_ROOT / "data"
    database_url: str = ""
    secret_key: str = ""
    jwt_ttl_hours: int = 24 * 7
    magic_link_ttl_minutes: int = 15

    app_base_url: str = "http://localhost:8000"
    frontend_url: str = "http://localhost:8000"

    email_backend: EmailBackend = EmailBackend.AUTO
    outbox_dir: Path | None = None
    from_email: str = "outreach@localhost"
    postmark_server_token: str = ""
    postmark_api_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = "outbound"
    postmark_inbound_domain: str = "inbound.localhost"

    llm_backend: LlmBackend = LlmBackend.AUTO
    openai_api_key: str = ""
    openai_base_url: str = ""
    openai_model: str = "gpt-4o-mini"

    webhook_username: str = "postmark"
    webhook_password: str = ""

    leads_bucket: str = ""
    send_batch_size: int = 500
    send_partition_minutes: int = 5
    send_partitions_start: str = "2026-11-01"

    @field_validator("outbox_dir", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _fill_local_defaults(self) -> Settings:
        # Absolute, so the API, the Dagster daemon and its run workers agree whatever their cwd.
        self.data_dir = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'outreach.db'}"
        if self.outbox_dir is None:
            self.outbox_dir = self.data_dir / "outbox"
        if not self.leads_bucket:
            self.leads_bucket = str(self.data_dir / "bucket")
        return self

    @property
    def is_production(self) -> bool:
        return self.environment.lower() == "production"

    @property
    def uses_postmark(self) -> bool:
        if self.email_backend == EmailBackend.AUTO:
            return bool(self.postmark_server_token)
        return self.email_backend == EmailBackend.POSTMARK

    @property
    def uses_openai(self) -> bool:
        if self.llm_backend == LlmBackend.AUTO:
            return bool(self.openai_api_key or self.openai_base_url)
        return self.llm_backend == LlmBackend.OPENAI

    def resolved_secret_key(self) -> str:
        """The JWT signing key; generated once and kept under data_dir for local use."""
        if self.secret_key:
            return self.secret_key
        if self.is_production:
            raise RuntimeError("SECRET_KEY must be set when ENVIRONMENT=production.")
        key_file = self.data_dir / ".secret_key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_urlsafe(48))
            key_file.chmod(0o600)
        self.secret_key = key_file.read_text().strip()
        return self.secret_key


@lru_cache
def get_settings() -> Settings:
    return Settings()
