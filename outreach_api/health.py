"""Liveness plus a real database round trip."""

from __future__ import annotations

from litestar import Response, get
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from outreach_api.context import Services


@get("/health", sync_to_thread=True, tags=["health"])
def health(services: Services) -> Response[dict[str, str]]:
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        return Response({"status": "error", "database": type(error).__name__}, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    return Response({"status": "ok", "database": "ok", "mailer": services.mailer.name, "writer": services.writer.name})
