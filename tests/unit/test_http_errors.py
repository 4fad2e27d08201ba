"""services/http/errors.py: no route answers a plain-text 500; the database away is a 503 with Retry-After."""

from __future__ import annotations

import logging

import psycopg
import pytest
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from services.http import errors


def app_raising() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/bug")
    def bug() -> None:
        raise KeyError("a bug of ours")

    @app.get("/async-bug")
    async def async_bug() -> None:
        raise ZeroDivisionError("async")

    @app.get("/pool-timeout")
    def pool_timeout() -> None:
        raise PoolTimeout("couldn't get a connection after 2.00 sec")

    @app.get("/connection-closed")
    def connection_closed() -> None:
        raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    @app.get("/connection-unusable")
    def connection_unusable() -> None:
        raise psycopg.InterfaceError("the connection is closed")

    @app.get("/store-away")
    def store_away() -> None:
        raise StoreOperationalError("the event store's connection was lost")

    @app.get("/not-found")
    def not_found() -> None:
        raise HTTPException(404, "no such thing")

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(app_raising())


@pytest.mark.parametrize("path", ["/bug", "/async-bug"])
def test_an_unexpected_error_is_a_json_500_logged_with_its_traceback(
    client: TestClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rapport.api"):
        response = client.get(path)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": errors.INTERNAL_ERROR_DETAIL}
    [record] = [r for r in caplog.records if r.name == "rapport.api"]
    assert path in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is not None  # the traceback is in the log
    assert "Traceback" in caplog.text


@pytest.mark.parametrize("path", ["/pool-timeout", "/connection-closed", "/connection-unusable", "/store-away"])
def test_the_database_away_is_a_503_with_retry_after(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    detail = response.json()["detail"]
    assert "database is unavailable" in detail and "retry" in detail


def test_other_answers_are_left_alone(client: TestClient) -> None:
    assert (client.get("/not-found").status_code, client.get("/not-found").json()) == (404, {"detail": "no such thing"})
    assert client.get("/ok").json() == {"status": "ok"}
    missing = client.get("/no-such-route")
    assert missing.status_code == 404 and "detail" in missing.json()
