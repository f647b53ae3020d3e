"""Magic-link sign-in: a random token mailed to the address, stored only as its hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from outreach_pipeline.core.errors import AuthenticationError
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import MagicLinkToken, User
from outreach_pipeline.mail.message import Mailer, OutgoingEmail


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_address(email: str) -> str:
    return email.strip().lower()


def request_magic_link(
    session: Session, mailer: Mailer, email: str, *, frontend_url: str, from_email: str,
    ttl: timedelta = timedelta(minutes=15), now: datetime | None = None,
) -> None:
    """Mail a single-use sign-in link; behaves the same whether or not the address has an account."""
    email = normalise_address(email)
    token = secrets.token_urlsafe(32)
    now = now or utcnow()
    session.add(MagicLinkToken(email=email, token_hash=_hash(token), created_at=now, expires_at=now + ttl))
    session.flush()
    link = f"{frontend_url.rstrip('/')}/auth/verify?{urlencode({'token': token})}"
    minutes = int(ttl.total_seconds() // 60)
    mailer.send_batch([OutgoingEmail(
        to=email,
        from_email=from_email,
        subject="Your sign-in link",
        text_body=f"Sign in to the outreach engine:\n\n{link}\n\nThe link works once, for {minutes} minutes.\n"
                  f"Sign-in token (for the API's POST /api/auth/verify): {token}\n",
        tag="magic-link",
    )])


def verify_magic_link(session: Session, token: str, now: datetime | None = None, email: str | None = None) -> User:
    """Spend a token and return its user (created on first sign-in).

    The token signs in the address it was mailed to, nobody else; when the caller names an address too,
    a token mailed to another one is refused and stays unspent.
    """
    now = now or utcnow()
    bound = [MagicLinkToken.email == normalise_address(email)] if email is not None else []
    # One conditional UPDATE spends the token, so two concurrent verifications cannot both win.
    email = session.scalar(
        update(MagicLinkToken)
        .where(MagicLinkToken.token_hash == _hash(token), MagicLinkToken.used_at.is_(None),
               MagicLinkToken.expires_at > now, *bound)
        .values(used_at=now)
        .returning(MagicLinkToken.email)
    )
    if email is None:
        raise AuthenticationError("This sign-in link is invalid, used or expired. Ask for a new one.")
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, created_at=now)
        session.add(user)
    user.last_login_at = now
    session.flush()
    return user
