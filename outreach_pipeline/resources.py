"""Dagster resources: thin, configurable handles on the database, mail, writer and bucket."""

import os
from datetime import timedelta

from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    EnvVar,
    InitResourceContext,
    InputContext,
    OutputContext,
)
from pydantic import PrivateAttr
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.bucket import LeadBucket, open_bucket
from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.core.delivery import SendPolicy
from outreach_pipeline.core.generation_stats import Prices
from outreach_pipeline.db.session import create_db_engine, make_session_factory
from outreach_pipeline.llm.brief import TemplateWriter
from outreach_pipeline.llm.factory import build_writer
from outreach_pipeline.mail.factory import build_mailer
from outreach_pipeline.mail.message import Mailer
from outreach_pipeline.mail.postmark import DEFAULT_TIMEOUT_S
from outreach_pipeline.settings import Settings


class DatabaseResource(ConfigurableResource):
    """The app database (not Dagster's own storage)."""

    url: str
    _factory: sessionmaker[Session] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._factory = make_session_factory(create_db_engine(self.url))

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._factory is not None:
            self._factory.kw["bind"].dispose()

    def session_factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            self._factory = make_session_factory(create_db_engine(self.url))
        return self._factory


class MailResource(ConfigurableResource):
    """Postmark when a server token is given, else the file outbox."""

    backend: str = "outbox"  # outbox | postmark
    outbox_dir: str = "data/outbox"
    postmark_server_token: str = ""
    postmark_api_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = "outbound"
    from_email: str = "outreach@localhost"
    inbound_domain: str = "inbound.localhost"
    app_base_url: str = "http://localhost:8000"
    batch_size: int = 500
    concurrency: int = 4
    processes: int = 1  # PostgreSQL only
    max_retries: int = 4
    backoff_base_s: float = 1.0
    lease_minutes: float = 15

    def mailer(self) -> Mailer:
        return build_mailer(self.backend, outbox_dir=self.outbox_dir, postmark_server_token=self.postmark_server_token,
                            postmark_api_url=self.postmark_api_url,
                            postmark_message_stream=self.postmark_message_stream)

    def sender_config(self) -> SenderConfig:
        return SenderConfig(self.from_email, self.inbound_domain, self.app_base_url)

    def send_policy(self) -> SendPolicy:
        policy = SendPolicy(batch_size=self.batch_size, concurrency=self.concurrency, processes=self.processes,
                            max_retries=self.max_retries, backoff_base_s=self.backoff_base_s,
                            lease=timedelta(minutes=self.lease_minutes))
        policy.check_lease(DEFAULT_TIMEOUT_S)  # the resource may be configured apart from the settings
        return policy


class TemplateWriterResource(ConfigurableResource):
    """Any OpenAI-compatible endpoint, or the offline writer."""

    backend: str = "offline"  # offline | openai
    api_key: str = ""
    base_url: str = ""
    model: str = "gpt-4o-mini"
    api_style: str = "chat"  # chat | responses
    max_retries: int = 4
    concurrency: int = 16  # opener requests in flight at once
    batch_api: bool = False  # openers through OpenAI's Batch API
    input_price_per_mtok: float = 0.15
    output_price_per_mtok: float = 0.60

    def writer(self) -> TemplateWriter:
        return build_writer(self.backend, api_key=self.api_key, base_url=self.base_url, model=self.model,
                            api_style=self.api_style, max_retries=self.max_retries)

    def prices(self) -> Prices:
        return Prices(self.input_price_per_mtok, self.output_price_per_mtok)


class LeadsBucketResource(ConfigurableResource):
    """A local folder, or `s3://bucket/prefix` (credentials from boto3's usual chain)."""

    path: str
    # An S3-protocol endpoint other than AWS (MinIO, a test server); empty: AWS_ENDPOINT_URL or AWS itself.
    endpoint_url: str = ""

    def bucket(self) -> LeadBucket:
        return open_bucket(self.path, self.endpoint_url)


def _secret(name: str, value: str) -> str | EnvVar:
    # An EnvVar keeps the secret out of the run config that the Dagster UI displays.
    return EnvVar(name) if os.environ.get(name) else value


LEAD_ROWS_IO = "lead_rows_io"


class LeadRowsInDatabase(ConfigurableIOManager):
    """The IO manager of lead_file_import, whose output type is the LeadRow schema: the import writes its
    rows to the database itself, chunk by chunk (core/leads.py), so there is nothing left to store, and no
    asset reads them through Dagster."""

    def handle_output(self, context: OutputContext, obj: object) -> None:
        return None

    def load_input(self, context: InputContext) -> object:
        raise NotImplementedError("Lead rows live in the leads table; read them from the database.")


def resources_from_settings(settings: Settings) -> dict[str, ConfigurableResource]:
    """The resources `definitions.py` wires, configured from the same settings as the API."""
    return {
        "database": DatabaseResource(url=settings.database_url),
        LEAD_ROWS_IO: LeadRowsInDatabase(),
        "mail": MailResource(
            backend="postmark" if settings.uses_postmark else "outbox",
            outbox_dir=str(settings.outbox_dir),
            postmark_server_token=_secret("POSTMARK_SERVER_TOKEN", settings.postmark_server_token),
            postmark_api_url=settings.postmark_api_url,
            postmark_message_stream=settings.postmark_message_stream,
            from_email=settings.from_email,
            inbound_domain=settings.postmark_inbound_domain,
            app_base_url=settings.app_base_url,
            batch_size=settings.send_batch_size,
            concurrency=settings.send_concurrency,
            processes=settings.send_processes,
            max_retries=settings.send_max_retries,
            backoff_base_s=settings.send_backoff_base_s,
            lease_minutes=settings.send_lease_minutes,
        ),
        "writer": TemplateWriterResource(
            backend="openai" if settings.uses_openai else "offline",
            api_key=_secret("OPENAI_API_KEY", settings.openai_api_key),
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_style=settings.openai_api_style.value,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
            batch_api=settings.llm_batch_api,
            input_price_per_mtok=settings.llm_input_price_per_mtok,
            output_price_per_mtok=settings.llm_output_price_per_mtok,
        ),
        "bucket": LeadsBucketResource(path=settings.leads_bucket),
    }
