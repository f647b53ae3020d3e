"""JWT bearer auth (Litestar's JWTAuth over PyJWT) and the signed-in user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
from litestar.connection import ASGIConnection
from litestar.security.jwt import JWTAuth, Token

from outreach_pipeline.core.campaigns import MAX_ROW_ID
from outreach_pipeline.db.models import User

# Routes reachable without a bearer token.
PUBLIC_PATHS = [
    "/health",
    "/schema",
    "/api/auth/magic-link",
    "/api/auth/verify",
    "/api/webhooks",
    "/unsubscribe",
]


@dataclass(frozen=True)
class CurrentUser:
    id: int
    email: str


async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> CurrentUser | None:
    # Only ids we could have issued: ASCII digits ("١٢".isdigit() too) within an INTEGER key; others are 401.
    sub = token.sub
    if not (sub.isascii() and sub.isdigit() and len(sub) <= len(str(MAX_ROW_ID)) and 0 < int(sub) <= MAX_ROW_ID):
        return None
    services = connection.app.state.services

    def load() -> CurrentUser | None:
        with services.sessions() as session:
            user = session.get(User, int(sub))
            return CurrentUser(user.id, user.email) if user else None

    return await anyio.to_thread.run_sync(load)


def build_jwt_auth(secret: str, ttl_hours: int) -> JWTAuth[CurrentUser, Token]:
    return JWTAuth[CurrentUser, Token](
        retrieve_user_handler=retrieve_user,
        token_secret=secret,
        algorithm="HS256",
        default_token_expiration=timedelta(hours=ttl_hours),
        exclude=PUBLIC_PATHS,
        exclude_http_methods=["OPTIONS"],
    )
