"""The API when PostgreSQL goes away (a JSON 503 with Retry-After, then it recovers by itself),
and `rapport api` stopping on request (exit code 0)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from services.settings import Settings
from tests.integration.pg_faults import database_away, free_port, http_get, log_tail, start_rapport
from tests.support import api_key, auth, new_customer_id, wait_for

pytestmark = pytest.mark.integration


def test_api_answers_503_while_the_database_is_away_and_recovers_by_itself(settings: Settings) -> None:
    unknown = new_customer_id()
    with TestClient(create_app(settings), headers=auth(api_key(settings, 'admin'))) as client:
        assert client.get(f"/customers/{unknown}").status_code == 404
        with database_away(settings):
            for path in (f"/customers/{unknown}", "/projections"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.status_code, response.text)
                assert response.headers["content-type"] == "application/json"
                assert int(response.headers["retry-after"]) > 0
                detail = response.json()["detail"]
                assert "database is unavailable" in detail and "retry" in detail
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["checks"]["postgresql"].startswith("unavailable")
        # the same application, not restarted: its pool replaces the connections the server closed
        wait_for(lambda: client.get(f"/customers/{unknown}").status_code == 404, timeout=60, interval=0.2,
                 what="the API to answer again once the database is back")
        assert client.get("/health").json()["checks"]["postgresql"] == "ok"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_rapport_api_stops_on_request_with_exit_code_0(settings: Settings, tmp_path: Path,
                                                       stop_signal: signal.Signals) -> None:
    port = free_port()
    api = start_rapport("api", settings.model_copy(update={"api_port": port}), tmp_path)
    try:
        def healthy() -> bool:
            assert api.poll() is None, f"rapport api exited with {api.returncode}\n{log_tail(tmp_path, 'api')}"
            try:
                return http_get(f"http://127.0.0.1:{port}/health")[0] == 200
            except OSError:
                return False

        wait_for(healthy, timeout=60, interval=0.2, what="rapport api to answer /health")
        api.send_signal(stop_signal)
        code = api.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rapport api did not stop within 30 s of {stop_signal.name}\n{log_tail(tmp_path, 'api')}")
    finally:
        api.kill()
    assert code == 0, f"rapport api exited with {code} after {stop_signal.name}\n{log_tail(tmp_path, 'api')}"
