"""Which requests the hot path of `GET /customers/{id}` takes (services/http/lookup.py)."""

from __future__ import annotations

import pytest

from services.http.lookup import plain_lookup


def scope(path: str, method: str = "GET", query: bytes = b"") -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(("path", "customer_id"), [
    ("/customers/crm-42", "crm-42"),
    ("/customers/ana@example.com", "ana@example.com"),
    ("/customers/a/b", "a/b"),  # ids may hold '/', as the route's `:path` allows
    ("/customers/x/lifecycle/", "x/lifecycle/"),  # the route takes it as an id too
])
def test_a_plain_lookup_is_taken(path: str, customer_id: str) -> None:
    assert plain_lookup(scope(path)) == customer_id


@pytest.mark.parametrize("request_scope", [
    scope("/customers/crm-42", query=b"as_of=2026-01-01"),  # parameters: the route answers (point in time)
    scope("/customers/crm-42", method="HEAD"),
    scope("/customers/crm-42/lifecycle"),
    scope("/customers/crm-42/timeline"),
    scope("/customers/"),
    scope("/customers/a\x00b"),  # the route's 422 names the parameter
    scope("/lifecycle/stages"),
    {"type": "websocket", "path": "/customers/crm-42"},
])
def test_anything_else_goes_to_the_route(request_scope: dict[str, object]) -> None:
    assert plain_lookup(request_scope) is None
