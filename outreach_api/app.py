"""The Litestar app: every route, plugin and handler listed here. Run with `uvicorn outreach_api.app:app`."""

from __future__ import annotations

import logging
import sys

import anyio
import anyio.to_thread
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
from outreach_api.errors import problem_details_plugin
from outreach_api.health import health
from outreach_api.leads.controller import LeadController
from outreach_api.leads.export import LeadExportController
from outreach_api.ratelimit import auth_rate_limits
from outreach_api.security import build_jwt_auth
from outreach_api.templates.controller import TemplateController
from outreach_api.unsubscribe.controller import UnsubscribeController
from outreach_api.webhooks.batcher import EventBatcher
from outreach_api.webhooks.controller import PostmarkWebhookController
from outreach_pipeline.db.session import create_db_engine, is_sqlite, make_session_factory
from outreach_pipeline.llm.factory import writer_from_settings
from outreach_pipeline.mail.factory import mailer_from_settings
from outreach_pipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.001


def build_services(settings: Settings) -> Services:
    # PostgreSQL: a fixed pool, one connection per handler thread (see tune_threads in create_app). No
    # pre-ping: it cost a round trip per request, a third of a webhook's. A connection the server dropped
    # fails one request (a 500, which Postmark retries; a person retries) and SQLAlchemy then invalidates the
    # whole pool; recycling connections after half an hour keeps idle ones from going stale behind firewalls.
    pool = {} if is_sqlite(settings.database_url) else {
        "pool_size": settings.api_db_pool_size, "max_overflow": 0, "pool_pre_ping": False, "pool_recycle": 1800,
        "pool_use_lifo": True}
    engine = create_db_engine(settings.database_url, **pool)
    sessions = make_session_factory(engine)
    return Services(settings=settings, engine=engine, sessions=sessions, mailer=mailer_from_settings(settings),
                    writer=writer_from_settings(settings), events=EventBatcher(sessions))


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    secret = settings.resolved_secret_key()  # refuses to start in production without SECRET_KEY
    services = build_services(settings)
    if not settings.webhook_password:
        log.warning("WEBHOOK_PASSWORD is not set: every webhook is refused with 401.")
    jwt_auth = build_jwt_auth(secret, settings.jwt_ttl_hours)
    rate_limits = auth_rate_limits(settings)

    async def dispose_engine() -> None:
        await anyio.to_thread.run_sync(services.events.stop)  # what is queued is applied first
        services.engine.dispose()

    async def tune_threads(app: Litestar) -> None:
        # Sync handlers run on anyio's worker threads (40 by default): no more of them than connections,
        # so a burst queues for a thread rather than for the pool. Commits have threads of their own
        # (outreach_api/context.py says why).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_db_pool_size
        app.state.db_finishers = anyio.CapacityLimiter(settings.api_db_pool_size)
        # A database thread (the webhook writer above all) waits on PostgreSQL several times per batch and,
        # answered, must win the GIL back from the busy event loop: by default it may wait 5 ms each time.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    return Litestar(
        route_handlers=[
            health,
            AuthController,
            CampaignController,
            LeadController,
            LeadExportController,
            TemplateController,
            PostmarkWebhookController,
            UnsubscribeController,
        ],
        dependencies={"db": Provide(provide_db), "services": Provide(provide_services, sync_to_thread=False)},
        plugins=[problem_details_plugin()],
        middleware=[rate_limits.per_client, rate_limits.per_address],
        request_max_body_size=settings.max_request_body_bytes,
        on_app_init=[jwt_auth.on_app_init],
        on_startup=[tune_threads],
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
