"""Magic-link sign-in and JWT bearer auth, through the real Litestar app.

Every test runs on SQLite and PostgreSQL (the ``client`` fixture depends on ``database_url``).
"""

from __future__ import annotations

import base64
import email
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping

import jwt
import time_machine
from litestar.testing import TestClient
from sqlalchemy import select

from outreach_api.app import create_app
from outreach_pipeline.core.auth import request_magic_link
from outreach_pipeline.db.models import MagicLinkToken
from outreach_pipeline.settings import Settings
from tests.fakes.postmark import FakePostmark
from tests.fixtures import make_settings, sign_in, token_from_text

SAME_ANSWER = {"detail": "If this address can sign in, a link is on its way."}
REFUSED = "This sign-in link is invalid, used or expired. Ask for a new one."


def _outbox_token_for(outbox: Path, address: str) -> str:
    """The token of the newest sign-in email written to ``address`` in the file outbox."""
    found: list[tuple[int, str]] = []
    for path in outbox.rglob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        if message["To"] == address:
            text = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
            found.append((path.stat().st_mtime_ns, token_from_text(text)))
    assert found, f"no sign-in email to {address} in {outbox}"
    return max(found)[1]


def _ask_link(client: TestClient[Any], settings: Settings, address: str) -> str:
    answer = client.post("/api/auth/magic-link", json={"email": address})
    assert answer.status_code == 202, answer.text
    assert settings.outbox_dir is not None
    return _outbox_token_for(settings.outbox_dir, address.strip().lower())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(user_id: int, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"sub": str(user_id), "iat": now, "exp": now + timedelta(hours=1), **extra}


# --- the magic link ------------------------------------------------------------------------------


def test_magic_link_then_verify_then_me_with_a_single_use_token(client: TestClient[Any], settings: Settings) -> None:
    token = _ask_link(client, settings, "Ada@Company.Example")

    answer = client.post("/api/auth/verify", json={"token": token})

    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert session["token_type"] == "bearer"
    assert session["expires_in"] == settings.jwt_ttl_hours * 3600 == 604800
    assert session["user"]["email"] == "ada@company.example"  # addresses are normalised
    claims = jwt.decode(session["access_token"], settings.secret_key, algorithms=["HS256"])
    assert claims["sub"] == str(session["user"]["id"])
    assert claims["exp"] - claims["iat"] == 604800
    assert len(claims["jti"]) >= 32  # a unique id per session, so one token can be told apart (and revoked)

    me = client.get("/api/auth/me", headers=_bearer(session["access_token"]))
    assert me.status_code == 200
    assert me.json() == {"id": session["user"]["id"], "email": "ada@company.example"}
    assert client.get("/api/auth/me").status_code == 401
    assert client.get("/api/auth/me", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401

    # The token is single use.
    reused = client.post("/api/auth/verify", json={"token": token})
    assert reused.status_code == 401
    assert reused.json()["detail"] == REFUSED

    # The same address in another case is the same account, with a session of its own.
    again = client.post("/api/auth/verify", json={"token": _ask_link(client, settings, "ADA@company.EXAMPLE")})
    assert again.status_code == 200
    assert again.json()["user"] == session["user"]
    again_claims = jwt.decode(again.json()["access_token"], settings.secret_key, algorithms=["HS256"])
    assert again_claims["jti"] != claims["jti"]


def test_a_token_expires_after_its_ttl(client: TestClient[Any], settings: Settings) -> None:
    assert settings.magic_link_ttl_minutes == 15
    on_time = _ask_link(client, settings, "ontime@company.example")
    too_late = _ask_link(client, settings, "toolate@company.example")
    start = datetime.now(UTC)

    with time_machine.travel(start + timedelta(minutes=14), tick=True):
        assert client.post("/api/auth/verify", json={"token": on_time}).status_code == 200
    with time_machine.travel(start + timedelta(minutes=16), tick=True):
        late = client.post("/api/auth/verify", json={"token": too_late})
    assert late.status_code == 401
    assert late.json()["detail"] == REFUSED

    # A link asked for (through the core) 16 minutes ago with a 15-minute TTL, verified now.
    services = client.app.state.services
    with services.sessions() as session:
        request_magic_link(
            session, services.mailer, "late@company.example", frontend_url=settings.frontend_url,
            from_email=settings.from_email, ttl=timedelta(minutes=15),
            now=datetime.now(UTC) - timedelta(minutes=16),
        )
        session.commit()
    assert settings.outbox_dir is not None
    expired = client.post("/api/auth/verify",
                          json={"token": _outbox_token_for(settings.outbox_dir, "late@company.example")})
    unknown = client.post("/api/auth/verify", json={"token": "x" * 43})
    assert expired.status_code == unknown.status_code == 401
    assert expired.json()["detail"] == unknown.json()["detail"] == REFUSED


def test_an_unknown_address_gets_the_same_answer(client: TestClient[Any], settings: Settings) -> None:
    """No account enumeration: an address with an account and one without get the same 202 and body."""
    assert settings.outbox_dir is not None
    sign_in(client, "known@company.example", lambda: _outbox_token_for(settings.outbox_dir, "known@company.example"))

    known = client.post("/api/auth/magic-link", json={"email": "known@company.example"})
    unknown = client.post("/api/auth/magic-link", json={"email": "nobody@elsewhere.example"})

    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json() == SAME_ANSWER


# --- forged bearer tokens -------------------------------------------------------------------------


def test_forged_jwts_are_401(client: TestClient[Any], settings: Settings, auth_headers: dict[str, str]) -> None:
    """Only tokens we signed, unaltered and unexpired, for a real user, are accepted."""
    user = client.get("/api/auth/me", headers=auth_headers).json()
    assert settings.outbox_dir is not None
    other = sign_in(client, "other@company.example",
                    lambda: _outbox_token_for(settings.outbox_dir, "other@company.example"))  # type: ignore[arg-type]
    other_id = client.get("/api/auth/me", headers=other).json()["id"]

    # The control: crafting with the real key works, so the 401s below come from the forgery.
    crafted = jwt.encode(_claims(user["id"]), settings.secret_key, algorithm="HS256")
    answer = client.get("/api/auth/me", headers=_bearer(crafted))
    assert answer.status_code == 200
    assert answer.json() == user

    header, payload, signature = auth_headers["Authorization"].removeprefix("Bearer ").split(".")
    claims = json.loads(_unb64(payload))
    assert claims["sub"] != str(other_id)
    claims["sub"] = str(other_id)  # become the other user, keeping the original signature
    tampered = ".".join([header, _b64(json.dumps(claims).encode()), signature])

    other_key = jwt.encode(_claims(user["id"]), "another-secret-key-that-is-also-long-enough", algorithm="HS256")
    alg_none = jwt.encode(_claims(user["id"]), None, algorithm="none")
    assert json.loads(_unb64(alg_none.split(".")[0]))["alg"] == "none"
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = jwt.encode({"sub": str(user["id"]), "iat": past, "exp": past + timedelta(hours=1)},
                         settings.secret_key, algorithm="HS256")
    ghost = jwt.encode(_claims(other_id + 1000), settings.secret_key, algorithm="HS256")

    forged = {"tampered": tampered, "another key": other_key, "alg none": alg_none, "expired": expired,
              "unknown user": ghost}
    for name, token in forged.items():
        assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 401, name
        assert client.get("/api/campaigns", headers=_bearer(token)).status_code == 401, name


def test_a_signed_token_whose_subject_is_no_user_id_is_401(
    client: TestClient[Any], settings: Settings, auth_headers: dict[str, str]
) -> None:
    """We only sign ids; a subject that cannot be one (too large, not ASCII digits) is refused, not a 4xx/5xx."""
    user_id = client.get("/api/auth/me", headers=auth_headers).json()["id"]
    arabic_indic = "".join(chr(0x660 + int(digit)) for digit in str(user_id))  # int() reads these as the id
    for sub in (str(2**31), "9" * 40, "9" * 5000, arabic_indic, "0"):
        token = jwt.encode({**_claims(user_id), "sub": sub}, settings.secret_key, algorithm="HS256")
        answer = client.get("/api/auth/me", headers=_bearer(token))
        assert answer.status_code == 401, (sub[:20], answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")


# --- the link goes out through Postmark -----------------------------------------------------------


def test_the_magic_link_is_mailed_through_postmark(provider_settings: Settings, fake_postmark: FakePostmark) -> None:
    with TestClient(create_app(provider_settings)) as client:
        answer = client.post("/api/auth/magic-link", json={"email": "Ada@Company.Example"})
        assert answer.status_code == 202
        assert answer.json() == SAME_ANSWER

        messages = fake_postmark.messages
        assert len(messages) == 1
        message = messages[0]
        assert message["To"] == "ada@company.example"
        assert message["From"] == provider_settings.from_email
        assert message["Subject"] == "Your sign-in link"
        assert message["Tag"] == "magic-link"
        token = token_from_text(message["TextBody"])
        assert f"{provider_settings.frontend_url}/auth/verify?token={token}" in message["TextBody"]
        assert provider_settings.frontend_url == "https://app.outreach.example"

        verified = client.post("/api/auth/verify", json={"token": token})
        assert verified.status_code == 200
        assert verified.json()["user"]["email"] == "ada@company.example"

    assert provider_settings.outbox_dir is not None
    assert not list(provider_settings.outbox_dir.rglob("*.eml"))  # nothing went to the local outbox


# --- the token itself ----------------------------------------------------------------------------


def test_the_token_is_random_stored_only_as_its_hash_and_bound_to_its_address(
    client: TestClient[Any], settings: Settings
) -> None:
    ada = _ask_link(client, settings, "ada@company.example")
    bo = _ask_link(client, settings, "bo@company.example")

    assert ada != bo
    assert len(_unb64(ada)) >= 32  # at least 32 random bytes
    with client.app.state.services.sessions() as session:
        rows = {row.email: row for row in session.scalars(select(MagicLinkToken))}
    assert rows["ada@company.example"].token_hash == hashlib.sha256(ada.encode()).hexdigest()
    stored = " ".join(f"{row.email} {row.token_hash}" for row in rows.values())
    assert ada not in stored and bo not in stored  # never the token itself
    expiry = rows["ada@company.example"].expires_at - rows["ada@company.example"].created_at
    assert expiry == timedelta(minutes=15)

    # Ada's token names Ada: offered with Bo's address it is refused, and stays usable for Ada.
    wrong = client.post("/api/auth/verify", json={"token": ada, "email": "bo@company.example"})
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == REFUSED
    right = client.post("/api/auth/verify", json={"token": ada, "email": "ADA@company.example"})
    assert right.status_code == 200, right.text
    assert right.json()["user"]["email"] == "ada@company.example"
    plain = client.post("/api/auth/verify", json={"token": bo})
    assert plain.json()["user"]["email"] == "bo@company.example"


# --- rate limits ---------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]


class FromPeer:
    """The app as reached from another network peer (the test client always comes from 'testclient')."""

    def __init__(self, app: ASGI, host: str) -> None:
        self.app, self.host = app, host

    @property
    def state(self) -> Any:
        return self.app.state  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": (self.host, 40000)}
        await self.app(scope, receive, send)


def _limited(answer: Any) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["status"] == 429
    assert int(answer.headers["ratelimit-reset"]) >= 0


def test_magic_links_are_rate_limited_per_address_and_per_client(tmp_path: Path, database_url: str) -> None:
    limited = make_settings(tmp_path, database_url, auth_rate_limit_per_address=2, auth_rate_limit_per_client=5)
    with TestClient(create_app(limited)) as client:
        ask = lambda address: client.post("/api/auth/magic-link", json={"email": address})  # noqa: E731
        assert [ask("Ada@company.example").status_code for _ in range(2)] == [202, 202]
        _limited(ask("ada@COMPANY.example"))  # the third link for one address in an hour, whatever its case
        assert ask("bo@company.example").status_code == 202  # another address is not held up
        assert ask("nobody@elsewhere.example").status_code == 202
        # Five sign-in requests a minute from one client, verifications (token guessing) included.
        _limited(client.post("/api/auth/verify", json={"token": "x" * 43}))
        _limited(ask("carol@company.example"))
        assert limited.outbox_dir is not None
        assert len(list(limited.outbox_dir.rglob("*.eml"))) == 4  # refused requests mailed nothing
        # Other routes are not counted.
        assert client.get("/health").status_code == 200


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, auth_rate_limit_per_client=2,
                             trusted_proxies="10.0.0.0/8, 192.0.2.7", client_ip_header="X-Forwarded-For")
    app = create_app(settings)

    def ask(client: TestClient[Any], n: int, forwarded: str | None) -> int:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        return client.post("/api/auth/magic-link", json={"email": f"user{n}@company.example"},
                           headers=headers).status_code

    with TestClient(FromPeer(app, "10.1.2.3")) as proxied:  # type: ignore[arg-type]
        assert [ask(proxied, n, "203.0.113.5") for n in range(3)] == [202, 202, 429]
        # Another client behind the same proxy (through a second trusted hop) has its own budget.
        assert [ask(proxied, n, "198.51.100.9, 192.0.2.7") for n in range(3, 6)] == [202, 202, 429]
    with TestClient(FromPeer(app, "203.0.113.99")) as direct:  # type: ignore[arg-type]
        # An untrusted peer cannot pick a fresh address per request: its header is ignored.
        assert [ask(direct, n, f"198.51.100.{n}") for n in range(10, 13)] == [202, 202, 429]
