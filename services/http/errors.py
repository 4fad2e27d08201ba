"""How the API answers when something fails: always JSON with a `detail` sentence.

- PostgreSQL away (restarting, unreachable, the pool has no connection to give in time):
  503 with `Retry-After`, logged as one warning line; the read pool checks each connection
  before use, so the API recovers by itself once the database answers again.
- A parameter FastAPI rejects (a limit out of range, an unknown `kind`): 422 whose `detail`
  is a sentence naming each parameter and what to send, with FastAPI's list kept in `errors`.
- Any other unexpected error: 500, logged with its traceback. Never Starlette's plain-text
  "Internal Server Error".
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rapport.api")

RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE_DETAIL = (
    "The database is unavailable at the moment (it may be restarting or overloaded); "
    f"retry in {RETRY_AFTER_SECONDS} seconds."
)
INTERNAL_ERROR_DETAIL = (
    "Internal error: the request could not be completed; it has been logged. "
    "Retry later, and report it if it persists."
)

# psycopg_pool's PoolTimeout (no connection in time) and psycopg's AdminShutdown (the server
# closed the connection) are psycopg OperationalErrors; eventsourcing wraps them in its own.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError, psycopg.InterfaceError, OperationalError, InterfaceError,
)


def database_unavailable_response() -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": DATABASE_UNAVAILABLE_DETAIL},
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def internal_error_response() -> JSONResponse:
    return JSONResponse(status_code=500, content={"detail": INTERNAL_ERROR_DETAIL})


def _describe(scope: Scope) -> str:
    return f"{scope.get('method', '?')} {scope.get('path', '?')}"


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]


def _database_failed(scope: Scope, error: BaseException) -> JSONResponse:
    log.warning("%s: database unavailable (%s); answered 503", _describe(scope), _one_line(error))
    app = scope.get("app")
    resources = getattr(getattr(app, "state", None), "resources", None)
    if resources is not None and hasattr(resources, "check_connections_soon"):
        resources.check_connections_soon()  # flush the connections a restarted server closed
    return database_unavailable_response()


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    return _database_failed(request.scope, error)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Reached only for errors raised outside `JSONServerErrors` (an outer middleware); Starlette
    # re-raises them after this answer, so the server logs them too.
    log.error("%s failed", _describe(request.scope), exc_info=error)
    return internal_error_response()


class JSONServerErrors:
    """ASGI middleware: an exception no handler took becomes a logged JSON 500 (or 503 when the
    database is away), instead of Starlette's plain-text 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:  # too late to answer otherwise: let the server end the response
                log.error("%s failed after its response started", _describe(scope), exc_info=error)
                raise
            response: Any
            if isinstance(error, DATABASE_UNAVAILABLE):
                response = _database_failed(scope, error)
            else:
                log.error("%s failed; answered 500", _describe(scope), exc_info=error)
                response = internal_error_response()
            await response(scope, receive, send)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    return JSONResponse(status_code=422, content={
        "detail": "; ".join(_describe_problem(p) for p in problems) or "the request is not valid",
        "errors": jsonable_encoder(problems),
    })


def _describe_problem(problem: dict[str, Any]) -> str:
    """`limit: Input should be less than or equal to 500 (got 501)` — the parameter, then why."""
    where = [str(part) for part in problem.get("loc", ()) if part not in ("query", "path", "body", "header")]
    message = str(problem.get("msg", "is not valid")).removeprefix("Value error, ")
    shown = ""
    if "input" in problem and not isinstance(problem["input"], dict):
        shown = repr(problem["input"])
        shown = f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return f"{'.'.join(where) or 'request'}: {message}{shown}"


def install(app: FastAPI) -> None:
    """Register the API's exception handlers on `app`."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error_class, _database_unavailable)
    app.add_middleware(JSONServerErrors)
    app.add_exception_handler(Exception, _unexpected)
