"""Keys and roles on every route (issue 15 §1), table-driven over the OpenAPI document: a route added
without a role check, or without a row below, fails here."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from services import access
from services.bootstrap import conninfo
from services.settings import Settings
from tests.conftest import settings_env
from tests.support import api_key, deliver, envelope, new_customer_id, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("producer", "analyst", "auditor", "admin")
OPEN = "open"  # no key needed

# Every route and the roles that may call it (admin may call everything): the operations of the OpenAPI
# document, and the open routes kept out of it.
NEEDS: dict[tuple[str, str], tuple[str, ...] | str] = {
    ("GET", "/health"): OPEN,
    ("POST", "/events"): ("producer",),
    ("GET", "/customers/lookup"): ("analyst",),
    ("GET", "/customers/{customer_id}"): ("analyst",),
    ("GET", "/customers/{customer_id}/lifecycle"): ("analyst",),
    ("GET", "/customers/{customer_id}/timeline"): ("analyst",),
    ("POST", "/customers/{customer_id}/unmerge"): ("admin",),
    ("POST", "/customers/{customer_id}/allow"): ("admin",),
    ("POST", "/customers/{customer_id}/forget"): ("admin",),
    ("GET", "/lifecycle/stages"): ("analyst",),
    ("GET", "/lifecycle/flow"): ("analyst",),
    ("GET", "/satisfaction/trend"): ("analyst",),
    ("GET", "/satisfaction/alarms"): ("analyst",),
    ("GET", "/satisfaction/revenue-by-category"): ("analyst",),
    ("GET", "/alerts"): ("analyst",),
    ("POST", "/value/model/fit"): ("analyst",),
    ("GET", "/value/model"): ("analyst",),
    ("GET", "/value/cohorts"): ("analyst",),
    ("GET", "/value/distribution"): ("analyst",),
    ("GET", "/segments"): ("analyst",),
    ("GET", "/segments/{name}/customers"): ("analyst",),
    ("GET", "/projections"): ("analyst",),
    ("GET", "/metrics"): ("analyst",),
    ("GET", "/audit/customers/{customer_id}/events"): ("auditor",),
    ("GET", "/audit/verify"): ("auditor",),
    ("GET", "/audit/heads"): ("auditor",),
    ("GET", "/schema/envelope.json"): ROLES,
    ("POST", "/keys"): ("admin",),
    ("GET", "/keys"): ("admin",),
    ("POST", "/keys/{key_id}/revoke"): ("admin",),
    # The analysts' dashboard (services/http/dashboard.py), out of the OpenAPI document: a page and files without data.
    ("GET", "/dashboard"): OPEN,
    ("GET", "/dashboard/static/{name}"): OPEN,
}
# Views at a point in time are the auditors' (contract §5), on the routes that build them from the event store.
POINT_IN_TIME = {("GET", "/customers/{customer_id}"), ("GET", "/customers/{customer_id}/lifecycle"),
                 ("GET", "/customers/{customer_id}/timeline")}


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    document = client.get("/openapi.json").json()
    return [(method.upper(), path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-1", path)


@pytest.fixture
def role_keys(client: TestClient, settings: Settings) -> dict[str, str]:
    return {role: api_key(settings, role, name=f"test {role}") for role in ROLES}


def routed(client: TestClient) -> set[tuple[str, str]]:
    """Every method and path the application routes, in the OpenAPI document or not (FastAPI's own
    documentation pages aside), written as the document writes them."""
    contexts = iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
    return {(method, c.path_format) for c in contexts if isinstance(c.original_route, APIRoute) for method in c.methods or ()}


def test_every_route_has_a_role_rule(client: TestClient) -> None:
    found = routed(client)
    documented = {(method, path) for method, path, _ in operations(client)}
    assert documented <= found
    assert found - set(NEEDS) == set(), "a route without a row in NEEDS: say which role may call it, and check it"
    assert set(NEEDS) - found == set(), "NEEDS names a route the API no longer has"
    # The tests below go over the OpenAPI document: a route kept out of it must need no key, and must not ask for one.
    assert {r for r in found - documented if NEEDS[r] != OPEN} == set(), "only open routes may stay out of the document"
    client.headers.pop("Authorization")
    for method, path in found - documented:
        assert client.request(method, concrete(path)).status_code not in (401, 403), (method, path)


def test_every_route_but_health_shows_both_schemes_in_openapi(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "bearer"}
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key `rk_…` (`rapport keys create`)."}
    for method, path, operation in operations(client):
        schemes = {name for requirement in operation.get("security", []) for name in requirement}
        assert schemes == (set() if NEEDS[method, path] == OPEN else {"apiKey", "bearer"}), (method, path)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer rk_AAAAAAAAAAAA_" + "A" * 43},
                                     {"X-API-Key": "not-a-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
                         ids=["none", "unknown", "malformed", "basic"])
def test_without_a_valid_key_every_route_but_health_is_401_saying_how(client: TestClient, headers: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    for method, path, _ in operations(client):
        response = client.request(method, concrete(path), headers=headers)
        if NEEDS[method, path] == OPEN:
            assert response.status_code == 200, (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")
        detail = response.json()["detail"]
        assert "Authorization: Bearer rk_" in detail and "X-API-Key" in detail, detail


def test_each_role_may_call_exactly_its_routes(client: TestClient, role_keys: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    for method, path, _ in operations(client):
        needed = NEEDS[method, path]
        for role, key in role_keys.items():
            response = client.request(method, concrete(path), headers={"X-API-Key": key}, json={})
            allowed = needed == OPEN or role == "admin" or role in needed
            if allowed:
                assert response.status_code not in (401, 403), (method, path, role, response.text)
            else:
                assert response.status_code == 403, (method, path, role, response.status_code)
                detail = response.json()["detail"]
                assert f"needs the {needed[0]} role" in detail and f"has {role}" in detail, detail


def test_point_in_time_views_need_the_auditor_role(client: TestClient, role_keys: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    for method, path in sorted(POINT_IN_TIME):
        for parameter in ("as_of", "known_at"):
            url = f"{concrete(path)}?{parameter}=2026-01-01T00:00:00Z"
            analyst = client.request(method, url, headers={"X-API-Key": role_keys["analyst"]})
            assert analyst.status_code == 403, (path, parameter)
            assert "with these parameters needs the auditor role" in analyst.json()["detail"]
            for role in ("auditor", "admin"):
                assert client.request(method, url, headers={"X-API-Key": role_keys[role]}).status_code == 404, (path, role)


def test_bearer_and_x_api_key_both_work_and_must_agree(client: TestClient, role_keys: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    key = role_keys["analyst"]
    assert client.get("/projections", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/projections", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/projections", headers={"X-API-Key": key, "Authorization": f"Bearer {key}"}).status_code == 200
    both = client.get("/projections", headers={"X-API-Key": key, "Authorization": f"Bearer {role_keys['admin']}"})
    assert both.status_code == 401 and "two different keys" in both.json()["detail"]


def test_the_customer_view_hot_path_checks_keys_like_the_route(client: TestClient, settings: Settings, store: Any,
                                                               role_keys: dict[str, str]) -> None:
    customer = new_customer_id()
    deliver(settings, store, [envelope(customer, "call", "2026-03-01T10:00:00Z", {"direction": "inbound",
                                                                                 "duration_seconds": 10})])
    client.headers.pop("Authorization")
    assert client.get(f"/customers/{customer}").status_code == 401
    assert client.get(f"/customers/{customer}", headers={"X-API-Key": role_keys["producer"]}).status_code == 403
    views = [client.get(f"/customers/{customer}", headers={"X-API-Key": role_keys[r]}) for r in ("analyst", "admin")]
    assert [v.status_code for v in views] == [200, 200]
    assert views[0].json() == views[1].json() and views[0].json()["customer_id"] == customer


def test_a_revoked_key_stops_working_within_seconds(client: TestClient, settings: Settings) -> None:
    key = api_key(settings, "analyst", name="to revoke")
    client.headers.pop("Authorization")
    assert client.get("/projections", headers={"X-API-Key": key}).status_code == 200
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        revoked = access.revoke_key(conn, key)
    assert revoked.revoked_at is not None
    started = time.monotonic()
    wait_for(lambda: client.get("/projections", headers={"X-API-Key": key}).status_code == 401, timeout=10,
             what="the revoked key to be refused")
    assert time.monotonic() - started < 10


def test_auditor_and_admin_requests_are_logged_and_the_log_cannot_be_changed(
        client: TestClient, settings: Settings, role_keys: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        before = conn.execute(f"SELECT coalesce(max(id), 0) FROM {access.ACCESS_LOG}").fetchone()[0]
    client.get("/audit/heads", headers={"X-API-Key": role_keys["auditor"]})
    client.get("/customers/nobody?as_of=2026-01-01", headers={"X-API-Key": role_keys["admin"]})
    client.get("/projections", headers={"X-API-Key": role_keys["analyst"]})  # analysts' reads are not logged
    client.get("/audit/heads", headers={"X-API-Key": role_keys["analyst"]})  # refused: not logged either
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        rows = conn.execute(f"SELECT key_name, roles, method, path, query FROM {access.ACCESS_LOG} WHERE id > %s "
                            "ORDER BY id", (before,)).fetchall()
        assert rows == [("test auditor", ["auditor"], "GET", "/audit/heads", ""),
                        ("test admin", ["admin"], "GET", "/customers/nobody", "as_of=2026-01-01")]
        # The database role Rapport's processes use cannot change or remove the log.
        for statement in (f"UPDATE {access.ACCESS_LOG} SET path = 'x'", f"DELETE FROM {access.ACCESS_LOG}",
                          f"TRUNCATE {access.ACCESS_LOG}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_key_management_over_http(client: TestClient) -> None:
    made = client.post("/keys", json={"name": "pbx-01", "roles": ["producer"]})
    assert made.status_code == 201
    body = made.json()
    assert body["roles"] == ["producer"] and re.fullmatch(r"rk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43}", body["key"])
    listed = client.get("/keys").json()["items"]
    assert {k["key_id"] for k in listed} >= {body["key_id"]} and all("key" not in k for k in listed)
    assert client.post("/keys", json={"name": "x", "roles": ["root"]}).status_code == 422
    assert "no role 'root'" in client.post("/keys", json={"name": "x", "roles": ["root"]}).json()["detail"]
    assert client.post(f"/keys/{body['key_id']}/revoke").json()["revoked_at"] is not None
    assert client.post("/keys/nope/revoke").status_code == 404


def test_rapport_keys_create_list_revoke(settings: Settings) -> None:
    env = settings_env(settings)

    def rapport(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "keys", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    made = rapport("create", "--name", "crm sync", "--role", "producer", "--role", "analyst")
    assert made.returncode == 0, made.stderr
    key = re.search(r"rk_([A-Za-z0-9]{12})_[A-Za-z0-9_-]{43}", made.stdout)
    assert key is not None and "cannot be shown again" in made.stdout
    listed = rapport("list")
    assert key.group(1) in listed.stdout and "producer,analyst" in listed.stdout and key.group(0) not in listed.stdout
    with psycopg.connect(conninfo(settings)) as conn:  # only a hash is stored
        dump = conn.execute(f"SELECT string_agg(t::text, ' ') FROM {access.API_KEYS} t").fetchone()[0]
    assert key.group(0).split("_", 2)[2] not in dump
    revoked = rapport("revoke", key.group(1))
    assert revoked.returncode == 0 and f"revoked {key.group(1)}" in revoked.stdout
    assert rapport("list", "--active").stdout.count(key.group(1)) == 0
    refused = rapport("create", "--name", "x", "--role", "superuser")
    assert refused.returncode == 2 and "no role 'superuser'" in refused.stdout
