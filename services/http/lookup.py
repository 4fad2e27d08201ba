"""`GET /customers/{id}` on its hot path: the same answer as the route in `customers.py`, without
the framework's per-request work.

The route is the API's busiest by far. Through FastAPI, most of a request's CPU went to routing,
resolving dependencies and handing the blocking query to a thread (measured with py-spy; see the
README's Performance section); here the request is answered by an ASGI middleware that runs the
route's one SQL statement (`customers.VIEW_SQL`) on an asyncio connection pool and sends the JSON
`customers.view_of` builds. Only the plain case is taken: `GET /customers/<id>` without a query
string, an id that is not empty, holds no NUL and is not a `/lifecycle` or `/timeline` path, and is
a customer's id, asked with a valid key that may read it (`auth.py`; the key check is cached, no
round trip). Everything else (parameters, errors to explain, a missing or wrong key, HEAD, a key that
is an email or phone of a customer or an id merged into another) goes on to the FastAPI route, which
stays the documented one (OpenAPI). A database error propagates to `errors.JSONServerErrors` (503).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from domain.contract import utc_now
from services.access import Role
from services.http.auth import Unauthenticated, key_text
from services.http.customers import VIEW_SQL, view_of

PREFIX = "/customers/"
SUBROUTES = ("/lifecycle", "/timeline")
JSON_HEADERS = [(b"content-type", b"application/json")]


def plain_lookup(scope: Scope) -> str | None:
    """The customer id of a request this path answers, else None."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX) or path.endswith(SUBROUTES):
        return None
    customer_id = path[len(PREFIX):]
    return customer_id if customer_id and "\x00" not in customer_id else None


class CustomerLookup:
    """ASGI middleware answering plain `GET /customers/{id}` (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        customer_id = plain_lookup(scope)
        resources = getattr(scope["app"].state, "resources", None) if customer_id is not None else None
        if customer_id is None or resources is None or resources.async_pool is None:
            await self.app(scope, receive, send)
            return
        gatekeeper = scope["app"].state.gatekeeper
        key = await _key(gatekeeper, scope)
        if key is None or not key.may(READERS):  # the route answers 401 or 403, with the reason
            await self.app(scope, receive, send)
            return
        async with resources.async_pool.connection() as conn:
            cursor = await conn.execute(VIEW_SQL, {"id": customer_id, "now": utc_now()})
            row = await cursor.fetchone()
        if row is None:  # an identifier of a customer, a merged id (308), or unknown: the route says
            await self.app(scope, receive, send)
            return
        await gatekeeper.admit(key, scope)
        await send_json(send, 200, orjson.dumps(view_of(row)))


READERS = (Role.analyst,)


async def _key(gatekeeper: Any, scope: Scope) -> Any:
    """The request's valid key, or None (whatever is wrong, the route explains it)."""
    headers = {name: value for name, value in scope["headers"] if name in (b"x-api-key", b"authorization")}
    try:
        text = key_text(headers.get(b"x-api-key", b"").decode("latin-1") or None,
                        headers.get(b"authorization", b"").decode("latin-1") or None)
    except Unauthenticated:
        return None
    return None if text is None else await gatekeeper.key(text)


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers: list[Any] = [(b"content-length", str(len(body)).encode()), *JSON_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
