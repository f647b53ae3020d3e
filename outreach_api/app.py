"""The Litestar app: every route, plugin and handler listed here. Run with `uvicorn outreach_api.app:app`."""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from outreach_api.auth.controller import AuthController
from outreach_api.campaigns.controller import CampaignController
from outreach_api.context import Services, provide_db, provide_services
from outreach_api.errors import domain_error_handler
from outreach_api.health import health
from outreach_api.leads.controller import LeadController
from outreach_api.security import build_jwt_auth
from outreach_api.templates.controller import TemplateController
from outreach_api.unsubscribe.controller import UnsubscribeController
from outreach_api.webhooks.controller import PostmarkWebhookController
from outreach_pipeline.core.errors import DomainError
from outreach_pipeline.db.session import create_db_engine, make_session_factory
from outreach_pipeline.llm.factory import writer_from_settings
from outreach_pipeline.mail.factory import mailer_from_settings
from outreach_pipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    engine = create_db_engine(settings.database_url)
    return Services(settings=settings, engine=engine, sessions=make_session_factory(engine),
                    mailer=mailer_from_settings(settings), writer=writer_from_settings(settings))


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    secret = settings.resolved_secret_key()  # refuses to start in production without SECRET_KEY
    services = build_services(settings)
    if not settings.webhook_password:
        log.warning("WEBHOOK_PASSWORD is not set: every webhook is refused with 401.")
    jwt_auth = build_jwt_auth(secret, settings.jwt_ttl_hours)

    async def dispose_engine() -> None:
        services.engine.dispose()

    return Litestar(
        route_handlers=[
            health,
            AuthController,
            CampaignController,
            LeadController,
            TemplateController,
            PostmarkWebhookController,
            UnsubscribeController,
        ],
        dependencies={"db": Provide(provide_db), "services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers={DomainError: domain_error_handler},
        on_app_init=[jwt_auth.on_app_init],
        on_shutdown=[dispose_engine],
        state=State({"services": services, "jwt_auth": jwt_auth}),
        openapi_config=OpenAPIConfig(
            title="Outreach engine API",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
            }),
        ),
        logging_config=LoggingConfig(log_exceptions="debug"),
    )


def __getattr__(name: str) -> Litestar:
    # `app` is built on first access, so importing this module reads no settings.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
