"""`GET /schema/envelope.json` through the whole API (its lifespan opens PostgreSQL and Kafka): the
producer gets the schema kept in the repository, and what it accepts, `POST /events` accepts."""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from services.contract_files import ENVELOPE_SCHEMA_FILE
from tests.support import new_customer_id

pytestmark = pytest.mark.integration


def test_the_api_serves_the_schema_file_in_the_repo(client: TestClient) -> None:
    response = client.get("/schema/envelope.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/schema+json")
    assert response.content == ENVELOPE_SCHEMA_FILE.read_bytes()


def test_a_message_valid_by_the_served_schema_is_accepted_and_one_invalid_refused(client: TestClient) -> None:
    schema = client.get("/schema/envelope.json").json()
    validator = Draft202012Validator(schema)
    good = copy.deepcopy(schema["examples"][0])
    good["event_id"] = f"schema-route:{new_customer_id()}"
    good["customer"] = {"id": new_customer_id()}
    bad = copy.deepcopy(good) | {"event_id": good["event_id"] + ":bad"}
    bad["data"]["duration_seconds"] = -1
    assert validator.is_valid(good) and not validator.is_valid(bad)
    accepted = client.post("/events", json=good)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"accepted": [good["event_id"]]}
    refused = client.post("/events", json=bad)
    assert refused.status_code == 422, refused.text
    assert "data.duration_seconds" in refused.text
