"""`GET /metrics`: Prometheus text with ingest's counters and each read model's position, lag and
parked events, equal to what the test published and projected."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer, projector
from services.http.app import create_app
from services.settings import Settings
from tests.support import api_key, auth, drain, envelope, new_customer_id, publish

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_ingest_stored_and_where_each_read_model_stands(
    settings: Settings, store: InteractionLog
) -> None:
    customer = new_customer_id()
    valid = [envelope(customer, "call", f"2026-02-{d:02d}T10:00:00Z", {"direction": "inbound", "duration_seconds": d})
             for d in range(1, 8)]
    invalid = envelope(customer, "call", "2026-02-10T10:00:00Z", {"direction": "sideways", "duration_seconds": 1})
    publish(settings, [*valid, valid[0], valid[1], invalid])  # 7 new, 2 duplicates, 1 dead letter
    drain(ingest_consumer(settings, store), settings)
    runner = projector(settings, store)
    runner.catch_up()
    head = store.recorder.max_notification_id()

    with TestClient(create_app(settings), headers=auth(api_key(settings, 'admin'))) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    topic = (("topic", settings.topic),)
    assert found[("rapport_ingest_events_stored_total", topic)] == 7
    assert found[("rapport_ingest_duplicates_total", topic)] == 2
    assert found[("rapport_ingest_dead_letters_total", topic)] == 1
    assert found[("rapport_ingest_batches_total", topic)] >= 1
    assert found[("rapport_event_store_head", ())] == head
    for name in ("customer_360", "lifecycle", "satisfaction", "timeline", "value"):
        model = (("read_model", name),)
        assert found[("rapport_projection_position", model)] == head
        assert found[("rapport_projection_lag_events", model)] == 0
        assert found[("rapport_projection_lag_seconds", model)] == 0
        assert found[("rapport_projection_parked_events", model)] == 0
