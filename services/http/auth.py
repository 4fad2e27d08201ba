"""Keys and roles on every route (issue 15): `401` without a valid key, `403` with a key whose roles
do not include the one the route needs, each with a sentence saying which.

A key comes as `Authorization: Bearer rk_…` or `X-API-Key: rk_…` (`services.access`). Each router
declares the role its routes need (`needs`), so the rule sits beside the routes and the OpenAPI
document shows the schemes on every operation; `/health`, the documentation pages and the dashboard's
page and files (no data: the page asks for a key and sends it with each request) need none.
Keys are cached for `KEY_CACHE_SECONDS`: a revoked key stops working within that time, and the hot
path of `GET /customers/{id}` (`lookup.py`) checks keys without a round trip.
Each request of a key with the auditor or admin role is written to the access log before it is
served; if it cannot be written, the request is not served (a 503, like any database failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services import access
from services.access import ApiKey, Role

KEY_CACHE_SECONDS = 2.0
KEY_CACHE_SIZE = 10_000
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

HOW_TO_SEND = ("send it as `Authorization: Bearer rk_…` or `X-API-Key: rk_…`; an admin makes keys with "
               "`rapport keys create --name NAME --role ROLE`")

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                              description="An API key `rk_…` (`rapport keys create`).")
bearer = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="rk_…",
                    description="The same API key as a bearer token: `Authorization: Bearer rk_…`.")


class Unauthenticated(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": 'Bearer realm="rapport"'})


class Gatekeeper:
    """Checks keys (cached briefly) and writes the access log, on the API's asyncio pool."""

    def __init__(self, pool_of: Callable[[], Any]) -> None:
        self._pool_of = pool_of  # the asyncio pool is opened in the server's loop, after this is made
        self._cache: dict[str, tuple[float, Any]] = {}

    async def key(self, text: str) -> ApiKey | None:
        """The key `text` is, if valid and not revoked."""
        parts = access.split_key(text)
        if parts is None:
            return None
        key_id, secret = parts
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is None or now - cached[0] > KEY_CACHE_SECONDS:
            async with self._pool_of().connection() as conn:
                cursor = await conn.execute(access.KEY_LOOKUP_SQL, (key_id,))
                row = await cursor.fetchone()
            if len(self._cache) >= KEY_CACHE_SIZE:
                self._cache.clear()
            cached = (now, row)
            self._cache[key_id] = cached
        return access.key_from_row(cached[1], secret)

    async def log(self, key: ApiKey, method: str, path: str, query: str) -> None:
        async with self._pool_of().connection() as conn:
            await conn.execute(access.ACCESS_LOG_SQL, access.access_log_row(key, method, path, query))

    async def admit(self, key: ApiKey, scope: Any) -> None:
        """What every admitted request goes through: auditors' and admins' are logged first, with the
        path and query as sent (percent-encoded: what a NUL or a line break becomes cannot mislead)."""
        if key.logged:
            path = scope.get("raw_path") or scope["path"].encode()
            await self.log(key, scope["method"], path.decode("latin-1").replace("\x00", "%00"),
                           scope.get("query_string", b"").decode("latin-1").replace("\x00", "%00"))


def gatekeeper(request: Request) -> Gatekeeper:
    return request.app.state.gatekeeper  # type: ignore[no-any-return]


def key_text(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key the request sends, from either header (401 if they name different keys)."""
    from_bearer = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated(f"the Authorization header must be `Bearer rk_…`, not {scheme!r}; {HOW_TO_SEND}")
        from_bearer = value.strip()
    if x_api_key and from_bearer and x_api_key.strip() != from_bearer:
        raise Unauthenticated("the request sends two different keys (X-API-Key and Authorization); send one")
    return (x_api_key or "").strip() or from_bearer


def roles_text(roles: Iterable[Role]) -> str:
    names = [r.value for r in roles if r is not Role.admin]
    return " or ".join(f"the {n} role" for n in names) + (" (or admin)" if names else "the admin role")


async def authenticated(request: Request,
                        x_api_key: Annotated[str | None, Security(api_key_header)] = None,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> ApiKey:
    """The request's valid key, else 401 saying what was wrong."""
    # The security parameters put the schemes in the OpenAPI document; the headers are read here,
    # whole, so that a malformed Authorization header gets its own answer.
    text = key_text(x_api_key, request.headers.get("authorization"))
    if text is None:
        raise Unauthenticated(f"{request.method} {request.url.path} needs an API key: {HOW_TO_SEND}")
    key = await gatekeeper(request).key(text)
    if key is None:
        raise Unauthenticated("the API key is not valid: it is unknown, revoked or mistyped (keys look like "
                              f"rk_<12 characters>_<43 characters>); {HOW_TO_SEND}")
    return key


def needs(*roles: Role, unless: Callable[[Request], tuple[Role, ...] | None] | None = None) -> Any:
    """A router dependency: the request's key must have one of `roles` (admin always may).
    `unless(request)` may ask for other roles for some requests (e.g. point-in-time parameters)."""

    async def check(request: Request, key: Annotated[ApiKey, Depends(authenticated)]) -> ApiKey:
        needed = (unless(request) if unless else None) or roles
        if not key.may(needed):
            raise HTTPException(403, f"{request.method} {request.url.path}"
                                     f"{' with these parameters' if needed != roles else ''} needs {roles_text(needed)}; "
                                     f"the key {key.name!r} ({key.key_id}) has {', '.join(r.value for r in key.roles)}")
        await gatekeeper(request).admit(key, request.scope)
        return key

    return Depends(check)


POINT_IN_TIME_PARAMETERS = ("as_of", "known_at")


def point_in_time_needs_auditor(request: Request) -> tuple[Role, ...] | None:
    """Views at a point in time (`as_of`, `known_at`) are the auditors' (contract §5)."""
    return (Role.auditor,) if any(p in request.query_params for p in POINT_IN_TIME_PARAMETERS) else None


ANY_ROLE = tuple(Role)
PRODUCER = needs(Role.producer)
ANALYST = needs(Role.analyst)
AUDITOR = needs(Role.auditor)
ADMIN = needs(Role.admin)
ANY_KEY = needs(*ANY_ROLE)
CUSTOMER_READER = needs(Role.analyst, unless=point_in_time_needs_auditor)
