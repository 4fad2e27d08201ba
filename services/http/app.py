"""The HTTP API (contract §2, §3, §3b, §5): one router per resource, assembled here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.http import (
    alerts,
    audit,
    customers,
    dashboard,
    errors,
    events,
    identity,
    keys,
    lifecycle,
    operations,
    privacy,
    satisfaction,
    schema,
    value,
)
from services.http.auth import ANY_KEY, Gatekeeper
from services.http.lookup import CustomerLookup
from services.http.resources import Resources
from services.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    identity.name_identifiers_with(settings.matching_key(), settings.default_phone_region)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = Resources(settings)
        await app.state.resources.open_async()
        app.state.gatekeeper = Gatekeeper(lambda: app.state.resources.async_pool)
        yield
        await app.state.resources.close_async()
        app.state.resources.close()

    app = FastAPI(
        title="Rapport",
        version="1",
        description="Event-sourced customer-interaction tracker: publish interactions, read the customer view, "
        "lifecycle and satisfaction read models.\n\nEvery route but `/health` needs an API key, sent as "
        "`Authorization: Bearer rk_…` or `X-API-Key: rk_…` (`rapport keys create --name NAME --role ROLE`), whose "
        "roles include the one the route needs: `producer` (POST /events), `analyst` (read models, metrics), "
        "`auditor` (audit routes, `as_of`/`known_at` views; logged), `admin` (everything; logged). "
        "401: no valid key; 403: the key lacks the role, and the answer says which is needed.",
        lifespan=lifespan,
    )
    app.add_middleware(CustomerLookup)  # inside errors' JSONServerErrors: a database error is a 503
    errors.install(app)
    app.include_router(events.router)
    # Routes under /customers/{id}/... come before /customers/{id:path}, which would swallow them.
    app.include_router(identity.router)
    app.include_router(privacy.router)
    app.include_router(customers.router)
    app.include_router(lifecycle.router)
    app.include_router(satisfaction.router)
    app.include_router(alerts.router)
    app.include_router(value.router)
    app.include_router(operations.router)
    app.include_router(audit.router)
    app.include_router(keys.router)
    app.include_router(schema.router, dependencies=[ANY_KEY])  # the producers' contract: any key may read it
    app.include_router(dashboard.router)  # the analysts' page and its files: no data, no key (the page asks for one)
    return app
