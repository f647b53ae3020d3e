"""Dagster resources: thin, configurable handles on the database, mail, writer and bucket."""

import os

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import PrivateAttr
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.bucket import LocalBucket
from outreach_pipeline.core.compose import SenderConfig
from outreach_pipeline.db.session import create_db_engine, make_session_factory
from outreach_pipeline.llm.brief import TemplateWriter
from outreach_pipeline.llm.factory import build_writer
from outreach_pipeline.mail.factory import build_mailer
from outreach_pipeline.mail.message import Mailer
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

    def mailer(self) -> Mailer:
        return build_mailer(self.backend, outbox_dir=self.outbox_dir, postmark_server_token=self.postmark_server_token,
                            postmark_api_url=self.postmark_api_url,
                            postmark_message_stream=self.postmark_message_stream)

    def sender_config(self) -> SenderConfig:
        return SenderConfig(self.from_email, self.inbound_domain, self.app_base_url)


class TemplateWriterResource(ConfigurableResource):
    """Any OpenAI-compatible endpoint, or the offline writer."""

    backend: str = "offline"  # offline | openai
    api_key: str = ""
    base_url: str = ""
    model: str = "gpt-4o-mini"

    def writer(self) -> TemplateWriter:
        return build_writer(self.backend, api_key=self.api_key, base_url=self.base_url, model=self.model)


class LeadsBucketResource(ConfigurableResource):
    path: str

    def bucket(self) -> LocalBucket:
        return LocalBucket(self.path)


def _secret(name: str, value: str) -> str | EnvVar:
    # An EnvVar keeps the secret out of the run config that the Dagster UI displays.
    return EnvVar(name) if os.environ.get(name) else value


def resources_from_settings(settings: Settings) -> dict[str, ConfigurableResource]:
    """The resources `definitions.py` wires, configured from the same settings as the API."""
    return {
        "database": DatabaseResource(url=settings.database_url),
        "mail": MailResource(
            backend="postmark" if settings.uses_postmark else "outbox",
            outbox_dir=str(settings.outbox_dir),
            postmark_server_token=_secret("POSTMARK_SERVER_TOKEN", settings.postmark_server_token),
            postmark_api_url=settings.postmark_api_url,
            postmark_message_stream=settings.postmark_message_stream,
            from_email=settings.from_email,
            inbound_domain=settings.postmark_inbound_domain,
            app_base_url=settings.app_base_url,
        ),
        "writer": TemplateWriterResource(
            backend="openai" if settings.uses_openai else "offline",
            api_key=_secret("OPENAI_API_KEY", settings.openai_api_key),
            base_url=settings.openai_base_url,
            model=settings.openai_model,
        ),
        "bucket": LeadsBucketResource(path=settings.leads_bucket),
    }
