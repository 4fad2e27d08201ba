"""`GET /customers/{id}` answered on its hot path (services/http/lookup.py) is the route's answer;
the read pools replace a connection the server closed before handing it out; `rapport api` with
several worker processes serves and stops on request with exit code 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from eventstore.store import InteractionLog
from services.bootstrap import conninfo, read_pool
from services.http.resources import check_idle_async_connection
from services.settings import Settings
from tests.integration.pg_faults import admin_conninfo, free_port, http_get, log_tail, start_rapport
from tests.support import api_key, deliver, envelope, iso, new_customer_id, wait_for

pytestmark = pytest.mark.integration


def test_the_hot_path_answers_exactly_as_the_route(settings: Settings, store: InteractionLog,
                                                   client: TestClient) -> None:
    plain, slashed = new_customer_id(), new_customer_id() + "/ä b"
    day = [iso(datetime.now(UTC) - timedelta(days=n)) for n in range(5)]
    deliver(settings, store, [
        envelope(plain, "purchase", day[4],
                 {"order_id": "o-1", "amount": "120.00", "currency": "USD",
                  "items": [{"sku": "sku-9", "quantity": 1, "unit_price": "120.00"}]}, email=f"ana.{plain}@example.com"),
        envelope(plain, "purchase", day[3],
                 {"order_id": "o-2", "amount": "10.5", "currency": "EUR",
                  "items": [{"sku": "sku-1", "quantity": 1, "unit_price": "10.5"}]}),
        envelope(plain, "survey_response", day[2], {"kind": "nps", "score": 9}),
        envelope(plain, "call", day[1], {"direction": "inbound", "duration_seconds": 60}),
        envelope(slashed, "email", day[1], {"direction": "inbound", "subject": "hi"}),
    ])
    for customer_id, status in ((plain, 200), (slashed, 200), (new_customer_id(), 404)):
        path = "/customers/" + quote(customer_id)
        hot = client.get(path)
        # Any query string goes to the FastAPI route (an unknown parameter is ignored there).
        route = client.get(path + "?via=route")
        assert (hot.status_code, route.status_code) == (status, status), (hot.text, route.text)
        assert hot.content == route.content
        assert hot.headers["content-type"] == route.headers["content-type"] == "application/json"
    view = client.get("/customers/" + quote(plain)).json()
    assert view["purchases"]["revenue"] == {"EUR": "10.5", "USD": "120.00"}
    assert view["purchases"]["products"] == ["sku-1", "sku-9"]
    assert view["lifecycle"]["stage"] == "advocate"
    # The routes under /customers/{id}/... are not taken by the hot path.
    assert client.get(f"/customers/{quote(plain)}/lifecycle").json()["customer_id"] == plain
    assert "items" in client.get(f"/customers/{quote(plain)}/timeline").json()


def _terminate(pid: int, settings: Settings) -> None:
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        wait_for(lambda: admin.execute("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                                       (pid,)).fetchone()[0], timeout=10, what="the backend to end")


def test_the_read_pool_replaces_a_connection_the_server_closed(settings: Settings) -> None:
    with read_pool(settings, max_size=1) as pool:
        with pool.connection() as conn:
            first = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        _terminate(first, settings)
        with pool.connection() as conn:  # not the closed one: that would raise here
            assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] != first
        with pool.connection() as conn:  # a sound idle connection is handed out as it is
            second = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        with pool.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == second


def test_the_asyncio_read_pool_replaces_a_connection_the_server_closed(settings: Settings) -> None:
    async def pids() -> list[Any]:
        async with AsyncConnectionPool(conninfo(settings), min_size=1, max_size=1, open=False, timeout=5,
                                       check=check_idle_async_connection,
                                       kwargs={"autocommit": True, "row_factory": dict_row}) as pool:
            async def pid() -> Any:
                async with pool.connection() as conn:
                    return (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]

            first = await pid()
            await asyncio.to_thread(_terminate, first, settings)
            return [first, await pid(), await pid()]

    first, replaced, again = asyncio.run(pids())
    assert replaced != first
    assert again == replaced


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        kids = [int(p) for p in children.read_text().split()] if children.exists() else []
        found += kids
        todo += kids
    return found


@pytest.mark.parametrize("workers", [1, 3])
def test_rapport_api_with_workers_serves_and_stops_with_exit_code_0(settings: Settings, tmp_path: Path,
                                                                    workers: int) -> None:
    port = free_port()
    key = api_key(settings, "analyst")
    api = start_rapport("api", settings.model_copy(update={"api_port": port}), tmp_path,
                        RAPPORT_API_WORKERS=str(workers))
    unknown = new_customer_id()
    try:
        def answered() -> bool:
            assert api.poll() is None, f"rapport api exited with {api.returncode}\n{log_tail(tmp_path, 'api')}"
            try:
                return http_get(f"http://127.0.0.1:{port}/customers/{unknown}", key=key)[0] == 404
            except OSError:
                return False

        wait_for(answered, timeout=90, interval=0.2, what="rapport api to answer")
        pythons = [p for p in _descendants(api.pid) if "services.cli" in Path(f"/proc/{p}/cmdline").read_text()
                   or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
        # Workers are spawned interpreters (uvicorn's supervisor), beside multiprocessing's resource tracker.
        assert len([p for p in pythons if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]) == (
            workers if workers > 1 else 0)
        for _ in range(2 * workers):
            assert http_get(f"http://127.0.0.1:{port}/customers/{unknown}", key=key)[0] == 404
        api.send_signal(signal.SIGTERM)
        code = api.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rapport api did not stop within 30 s of SIGTERM\n{log_tail(tmp_path, 'api')}")
    finally:
        api.kill()
    assert code == 0, f"rapport api exited with {code}\n{log_tail(tmp_path, 'api')}"
