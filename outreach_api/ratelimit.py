"""Sign-in rate limits (Litestar's RateLimitConfig): per client address, and per email address asked for.

Behind a reverse proxy every request comes from the proxy, so the client address is read from a header
(X-Forwarded-For by default), but only when the direct peer is one of TRUSTED_PROXIES: anyone else
could write that header and pick a fresh address for every request.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.types import Receive, Scope, Send

from outreach_pipeline.core.auth import normalise_address
from outreach_pipeline.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ADDRESS_KEY = "outreach.rate_limit_address"  # where the asked-for email waits between the two callbacks
CLIENT_LIMITED = frozenset({"/api/auth/magic-link", "/api/auth/verify"})  # sign-in, and token guessing
ADDRESS_LIMITED = "/api/auth/magic-link"
HOT_PATHS = ["^/api/webhooks", "^/health"]  # skipped outright: webhooks must stay fast


def parse_networks(text: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _trusted(host: str, proxies: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in proxies)


@dataclass(frozen=True)
class ClientAddress:
    proxies: tuple[Network, ...]
    header: str

    def __call__(self, request: Request[Any, Any, Any]) -> str:
        peer = request.client.host if request.client else "unknown"
        forwarded = request.headers.get(self.header, "") if self.header else ""
        if not forwarded or not _trusted(peer, self.proxies):
            return f"client:{peer}"
        # X-Forwarded-For is "client, proxy1, proxy2": the first hop from the right we do not trust is the client.
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        client = next((hop for hop in reversed(hops) if not _trusted(hop, self.proxies)), hops[0] if hops else peer)
        return f"client:{client[:64]}"


# The throttle checks are async though they never wait: Litestar runs a sync one on a worker thread, two
# thread hops on every request the limits do not skip.
async def _is_sign_in(request: Request[Any, Any, Any]) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/") in CLIENT_LIMITED


class AddressRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's rate limiter keyed by the email address in a magic-link request's JSON body.

    The stock middleware builds its request without `receive`, so it cannot read a body. This one reads it
    first; Litestar keeps the body in the connection state, so the handler reads the same bytes again.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == ADDRESS_LIMITED:
            address = await _address_in(scope["litestar_app"].request_class(scope, receive))
            if address:
                scope[ADDRESS_KEY] = address  # type: ignore[literal-required]
        await super().__call__(scope, receive, send)


async def _address_in(request: Request[Any, Any, Any]) -> str | None:
    try:
        body = await request.json()
    except HTTPException:
        raise  # a body over the size limit is refused here, before anything else reads it
    except Exception:  # noqa: BLE001 - the bytes are kept; the handler refuses a body that is not JSON with a 400
        return None
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email.strip():
        return None
    return normalise_address(email)[:320]


async def _names_an_address(request: Request[Any, Any, Any]) -> bool:
    return ADDRESS_KEY in request.scope


def _address_identifier(request: Request[Any, Any, Any]) -> str:
    return f"address:{request.scope.get(ADDRESS_KEY, '')}"


@dataclass(frozen=True)
class AuthRateLimits:
    per_client: DefineMiddleware
    per_address: DefineMiddleware


def auth_rate_limits(settings: Settings) -> AuthRateLimits:
    client = ClientAddress(parse_networks(settings.trusted_proxies), settings.client_ip_header)
    per_client = RateLimitConfig(rate_limit=("minute", settings.auth_rate_limit_per_client),
                                 identifier_for_request=client, exclude=HOT_PATHS,
                                 check_throttle_handler=_is_sign_in, store="rate_limit_client")
    # Mail-bombing one inbox is stopped whoever asks; every address gets the same answer, so none is revealed.
    per_address = RateLimitConfig(rate_limit=("hour", settings.auth_rate_limit_per_address),
                                  identifier_for_request=_address_identifier, exclude=HOT_PATHS,
                                  check_throttle_handler=_names_an_address, store="rate_limit_address",
                                  middleware_class=AddressRateLimitMiddleware)
    return AuthRateLimits(per_client.middleware, per_address.middleware)
