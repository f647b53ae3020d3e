"""One settings object for both doors, read from the environment and `.env`.

With nothing set, everything runs on embedded defaults: a SQLite database and a
file outbox under `data/`, the offline template writer, a generated secret key.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
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


class OpenAIApiStyle(StrEnum):
    CHAT = "chat"  # Chat Completions: OpenAI, Azure, and local servers (Ollama, vLLM, llama.cpp)
    RESPONSES = "responses"  # the Responses API: OpenAI and Azure OpenAI


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: str = Field("development", description="'production' makes a missing SECRET_KEY fatal.")
    data_dir: Path = PROJECT_ROOT / "data"
    database_url: str = ""
    secret_key: str = ""
    jwt_ttl_hours: int = 24 * 7
    magic_link_ttl_minutes: int = 15
    # Sign-in rate limits: requests per minute from one client, magic links per hour for one address.
    auth_rate_limit_per_client: int = Field(20, ge=1)
    auth_rate_limit_per_address: int = Field(5, ge=1)
    # Comma-separated proxy addresses or networks whose client-address header is believed (none by default).
    trusted_proxies: str = ""
    client_ip_header: str = "X-Forwarded-For"
    # Largest JSON body the API reads (bytes); CSV uploads and webhooks have their own limits.
    max_request_body_bytes: int = Field(2_000_000, ge=1024)
    # Database connections per API worker; handler threads are capped to match, so a burst queues for a
    # thread instead of timing out waiting for a connection.
    api_db_pool_size: int = Field(20, ge=1, le=500)

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
    openai_api_style: OpenAIApiStyle = OpenAIApiStyle.CHAT
    # Batch generation (per-lead openers): requests in flight at once, and SDK retries per request
    # (429 honours retry-after, 5xx and timeouts back off exponentially).
    llm_concurrency: int = Field(16, ge=1, le=500)
    llm_max_retries: int = Field(4, ge=0, le=10)
    # Per-lead openers through OpenAI's Batch API (half the price, answered within 24 h) instead of live calls.
    llm_batch_api: bool = False
    # Estimated cost in US dollars per million tokens (defaults: gpt-4o-mini list prices).
    llm_input_price_per_mtok: float = 0.15
    llm_output_price_per_mtok: float = 0.60

    webhook_username: str = "postmark"
    webhook_password: str = ""

    leads_bucket: str = ""
    send_batch_size: int = 500
    # Batches in flight at once per send process (each on its own connection to the provider).
    send_concurrency: int = Field(4, ge=1, le=32)
    # Processes one send run spreads over, each with SEND_CONCURRENCY batches in flight (PostgreSQL only):
    # one process composes and records with about one core.
    send_processes: int = Field(1, ge=1, le=32)
    # Whole-batch retries on 429 / 5xx / refused connections, backing off base*2^n seconds with jitter.
    send_max_retries: int = Field(4, ge=0, le=10)
    send_backoff_base_s: float = Field(1.0, ge=0)
    # A job SENDING longer than this belongs to a crashed run and is reconciled with the provider.
    send_lease_minutes: float = Field(15, gt=0)
    # Campaign auto-pause: hard-bounce rate above this once at least `bounce_pause_min_sent` were sent.
    bounce_pause_rate: float = Field(0.05, ge=0, le=1)
    bounce_pause_min_sent: int = Field(50, ge=1)
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
        self._check_send_lease()
        if self.is_production and not self.app_base_url.startswith("https://"):
            # Every email's one-click unsubscribe link is built on it, and RFC 8058 (and Gmail's and Yahoo's
            # sender rules) accept only https there.
            raise ValueError("APP_BASE_URL must be an https:// URL when ENVIRONMENT=production: the one-click "
                             "unsubscribe link in every email is built on it and must be https (RFC 8058).")
        return self

    def _check_send_lease(self) -> None:
        """SEND_LEASE_MINUTES against SEND_MAX_RETRIES (SendPolicy.check_lease says why)."""
        from outreach_pipeline.core.delivery import SendPolicy  # noqa: PLC0415 (settings load first)
        from outreach_pipeline.mail.postmark import DEFAULT_TIMEOUT_S  # noqa: PLC0415

        policy = SendPolicy(max_retries=self.send_max_retries, lease=timedelta(minutes=self.send_lease_minutes))
        try:
            policy.check_lease(DEFAULT_TIMEOUT_S)
        except ValueError as error:
            raise ValueError(f"SEND_LEASE_MINUTES with SEND_MAX_RETRIES={self.send_max_retries}: {error}.") from error

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
