"""A read model that fails on one event parks it and goes on; a rebuild swaps a fresh copy in while
queries run, without an error or a partial answer."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from domain.contract import validate_envelope
from domain.customer import Customer
from eventstore.store import InteractionLog
from projections.rebuild import REBUILD_SCHEMA, build_copy, compare_and_swap
from projections.runner import PARKED_TABLE, TRACKING_TABLE, Projector
from projections.status import parked_events
from projections.timeline import EVENTS, Timeline
from services.bootstrap import projector, read_pool
from services.http.app import create_app
from services.settings import Settings
from tests.support import api_key, auth, envelope, new_customer_id

pytestmark = pytest.mark.integration


def store_history(store: InteractionLog, customer_id: str, n: int) -> list[str]:
    customer = Customer(customer_id)
    ids = []
    for i in range(n):
        message = envelope(customer_id, "call", f"2024-03-{1 + i:02d}T10:00:00Z",
                           {"direction": "inbound", "duration_seconds": i}, event_id=f"{customer_id}:{i}")
        customer.record(validate_envelope(message))
        ids.append(message["event_id"])
    store.save(customer)
    return ids


class PoisonedTimeline(Timeline):
    """A timeline whose handler raises on the events named in `poisoned` (a bug, for the test)."""

    poisoned: set[str] = set()

    def apply(self, curs: Any, events: Any) -> None:
        for event in events:
            if getattr(event, "event_id", None) in self.poisoned:
                raise ValueError(f"cannot handle {event.event_id}")
        super().apply(curs, events)


@pytest.fixture
def side_schema(store: InteractionLog) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
        curs.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize(("page_size", "catch_up_events"), [(5, 0), (2, 6)], ids=["page by page", "in batches"])
def test_an_event_a_read_model_fails_on_is_parked_and_the_others_are_applied(
    settings: Settings, store: InteractionLog, side_schema: str, page_size: int, catch_up_events: int
) -> None:
    """Page by page, or far behind in batches of pages (a batch that fails is applied again page by page)."""
    model = PoisonedTimeline(side_schema)
    runner = projector(settings, store, only=["timeline"])  # for its store and source
    poisoned_runner = Projector(store.recorder, store.mapper, runner.store, [model], page_size=page_size,
                                catch_up_events=catch_up_events)
    poisoned_runner.create_tables()
    name = poisoned_runner.names[0]
    with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
        curs.execute(f"INSERT INTO {TRACKING_TABLE} VALUES (%s, %s)", (name, store.recorder.max_notification_id() or 0))
    customer_id = new_customer_id()
    ids = store_history(store, customer_id, 12)
    PoisonedTimeline.poisoned = {ids[3], ids[7]}

    poisoned_runner.catch_up()

    def stored() -> list[str]:
        with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            return [r["event_id"] for r in conn.execute(
                f"SELECT event_id FROM {model.t(EVENTS.name)} WHERE customer_id = %s ORDER BY event_id",
                (customer_id,)).fetchall()]

    assert sorted(stored()) == sorted(set(ids) - PoisonedTimeline.poisoned)
    assert poisoned_runner.positions()[name] == store.recorder.max_notification_id()
    with read_pool(settings, max_size=1) as pool, pool.connection() as conn:
        parked = parked_events(conn, [name])
    assert len(parked) == 2
    assert {i for i in ids if any(f'"{i}"' in p["event"] for p in parked)} == {ids[3], ids[7]}
    assert all("ValueError: cannot handle" in p["error"] for p in parked)
    assert poisoned_runner.stats[name].parked == 2

    PoisonedTimeline.poisoned = {ids[7]}  # the cause of one is fixed
    assert poisoned_runner.retry_parked() == (1, 1)
    assert sorted(stored()) == sorted(set(ids) - {ids[7]})
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        left = conn.execute(f"SELECT attempts FROM {PARKED_TABLE} WHERE read_model = %s", (name,)).fetchall()
    assert [r["attempts"] for r in left] == [2]


def test_a_rebuild_swaps_in_while_queries_run_without_an_error_or_a_partial_answer(
    settings: Settings, store: InteractionLog
) -> None:
    customer_id = new_customer_id()
    store_history(store, customer_id, 20)
    live = projector(settings, store)
    live.catch_up()
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    with TestClient(create_app(settings), headers=auth(api_key(settings, 'admin'))) as client:
        expected = [client.get(url).json() for url in (f"/customers/{customer_id}", f"/customers/{customer_id}/lifecycle",
                                                        "/lifecycle/stages?as_of=2024-03-15T00:00:00Z")]

        def ask() -> None:
            while not stop.is_set():
                for url, want in zip((f"/customers/{customer_id}", f"/customers/{customer_id}/lifecycle",
                                      "/lifecycle/stages?as_of=2024-03-15T00:00:00Z"), expected, strict=True):
                    response = client.get(url)
                    answers.append((response.status_code, response.json() == want or response.json()))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for name in ("lifecycle", "customer_360"):
                copy = projector(settings, store, only=[name], schema=REBUILD_SCHEMA)
                build_copy(copy)
                report = compare_and_swap(projector(settings, store, only=[name]), copy)
                assert report.swapped and report.same, report
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    failures = [a for a in answers if a != (200, True)]
    assert len(answers) > 30 and not failures, failures[:3]
