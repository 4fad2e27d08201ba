"""The HTTP API (contract §2, §3, §3b, §5): one router per resource, assembled here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.http import audit, customers, errors, events, identity, lifecycle, operations, satisfaction
from services.http.lookup import CustomerLookup
from services.http.resources import Resources
from services.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = Resources(settings)
        await app.state.resources.open_async()
        yield
        await app.state.resources.close_async()
        app.state.resources.close()

    app = FastAPI(
        title="Rapport",
        version="1",
        description="Event-sourced customer-interaction tracker: publish interactions, read the customer view, "
        "lifecycle and satisfaction read models.",
        lifespan=lifespan,
    )
    app.add_middleware(CustomerLookup)  # inside errors' JSONServerErrors: a database error is a 503
    errors.install(app)
    app.include_router(events.router)
    # Routes under /customers/{id}/... come before /customers/{id:path}, which would swallow them.
    app.include_router(identity.router)
    app.include_router(customers.router)
    app.include_router(lifecycle.router)
    app.include_router(satisfaction.router)
    app.include_router(operations.router)
    app.include_router(audit.router)
    return app
