"""Magic-link sign-in: ask for a link, trade its token for a JWT, see who you are."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from litestar import Controller, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_202_ACCEPTED
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy.orm import Session

from outreach_api.context import Services
from outreach_api.security import CurrentUser
from outreach_pipeline.core.auth import request_magic_link, verify_magic_link


# Documented so clients (and the schema fuzzer) expect it: outreach_api/ratelimit.py answers before the handler.
RATE_LIMITED = {429: ResponseSpec(data_container=None, description="Too many sign-in requests; retry later.",
                                  generate_examples=False)}


class MagicLinkRequest(BaseModel):
    email: EmailStr


class VerifyRequest(BaseModel):
    token: str = Field(min_length=16, max_length=200)
    email: EmailStr | None = Field(None, description="When given, the token must have been mailed to this address.")


class UserOut(BaseModel):
    id: int
    email: str


class SessionOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    user: UserOut


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/magic-link", status_code=HTTP_202_ACCEPTED, sync_to_thread=True, responses=RATE_LIMITED)
    def magic_link(self, data: MagicLinkRequest, db: Session, services: Services) -> dict[str, str]:
        """Mail a sign-in link. The answer is the same whether or not the address has an account."""
        settings = services.settings
        request_magic_link(db, services.mailer, data.email, frontend_url=settings.frontend_url,
                           from_email=settings.from_email, ttl=timedelta(minutes=settings.magic_link_ttl_minutes))
        return {"detail": "If this address can sign in, a link is on its way."}

    @post("/verify", status_code=200, sync_to_thread=True, responses=RATE_LIMITED)
    def verify(self, data: VerifyRequest, db: Session, request: Request[Any, Any, Any], services: Services) -> SessionOut:
        """Trade a magic-link token (single use) for a bearer token."""
        user = verify_magic_link(db, data.token, email=data.email)
        jwt_auth = request.app.state.jwt_auth
        ttl = timedelta(hours=services.settings.jwt_ttl_hours)
        token = jwt_auth.create_token(identifier=str(user.id), token_expiration=ttl,
                                      token_unique_jwt_id=uuid.uuid4().hex)
        return SessionOut(access_token=token, expires_in=int(ttl.total_seconds()), user=UserOut(id=user.id, email=user.email))

    @get("/me")
    async def me(self, request: Request[CurrentUser, Any, Any]) -> UserOut:
        return UserOut(id=request.user.id, email=request.user.email)
