"""`GET /schema/envelope.json` (services/http/schema.py) serves the schema file kept in the repository."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from services.contract_files import ENVELOPE_SCHEMA_FILE
from services.http import schema
from services.http.app import create_app
from services.settings import Settings

PATH = "/schema/envelope.json"


def app_with_the_router() -> FastAPI:
    """The router alone. Access checks put on it (services/http/auth.py) are the auth tests' to
    prove; they are passed over here, so that this test is about what is served."""
    app = FastAPI()
    app.include_router(schema.router)
    for route in app.routes:
        if isinstance(route, APIRoute):
            for dependency in route.dependencies:
                app.dependency_overrides[dependency.dependency] = lambda: None
    return app


def test_the_served_schema_is_the_file_in_the_repo_byte_for_byte() -> None:
    response = TestClient(app_with_the_router()).get(PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/schema+json"
    assert response.content == ENVELOPE_SCHEMA_FILE.read_bytes()
    assert response.json()["$id"] == json.loads(ENVELOPE_SCHEMA_FILE.read_text(encoding="utf-8"))["$id"]


def test_the_api_has_the_route_in_its_openapi_document_under_contract() -> None:
    document = create_app(Settings()).openapi()
    operation = document["paths"][PATH]["get"]
    assert operation["tags"] == ["contract"]
    assert "application/schema+json" in operation["responses"]["200"]["content"]
