"""Ingest when PostgreSQL goes away: it backs off and retries from the stored positions (nothing lost,
nothing twice, counters exact), and gives up with an error when the database stays away too long."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from consumers.ingest import DatabaseUnavailable
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer, interaction_log
from services.settings import Settings
from tests.integration.pg_faults import answers, database_away
from tests.support import drain, end_offsets, envelope, new_customer_id, publish, stored_event_ids, wait_for

pytestmark = pytest.mark.integration

CALL = {"direction": "inbound", "duration_seconds": 60}


def calls(customers: list[str], count: int, month: int) -> list[dict[str, Any]]:
    return [envelope(customers[i % len(customers)], "call", f"2026-{month:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", CALL)
            for i in range(count)]


def caught_up(store: InteractionLog, settings: Settings) -> bool:
    targets = end_offsets(settings)
    stored = store.interactions.kafka_positions(settings.topic, targets)
    return all(end == 0 or stored.get(p, -1) + 1 >= end for p, end in targets.items())


def test_ingest_rides_through_the_database_going_away(settings: Settings, store: InteractionLog) -> None:
    customers = [new_customer_id() for _ in range(20)]
    before, during = calls(customers, 600, 1), calls(customers, 600, 2)
    duplicates = before[:30] + during[:20]  # of events stored earlier, and of events in the same batches
    invalid = [b"{not json", b'{"event_id": "x"}', b"[]"]
    publish(settings, before)

    small_batches = settings.model_copy(update={"ingest_max_poll_records": 100})
    consumer = ingest_consumer(small_batches, interaction_log(settings))
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    thread = threading.Thread(target=run, name="ingest")
    thread.start()
    try:
        wait_for(lambda: consumer.stats.stored > 0, timeout=60, what="ingest to store the first events")
        with database_away(settings):
            publish(settings, during + duplicates)  # Kafka is up: ingest has work while the database is away
            publish(settings, invalid, key=customers[0].encode())
            wait_for(lambda: consumer.stats.database_failures >= 2 or failures, timeout=120, interval=0.2,
                     what="ingest to fail on the database and retry")
            assert thread.is_alive() and not failures, f"ingest stopped while the database was away: {failures}"
        wait_for(lambda: answers(lambda: caught_up(store, settings)), timeout=120, interval=0.2,
                 what="ingest to reach the end of the topic once the database is back")
        assert thread.is_alive() and not failures
    finally:
        stop.set()
        thread.join(timeout=60)
        consumer.store.close()
    assert not thread.is_alive() and not failures, failures

    stored = stored_event_ids(store, customers)
    assert Counter(stored) == Counter(e["event_id"] for e in before + during), "events lost or stored twice"
    counters = store.interactions.ingest_counters(settings.topic)
    assert {k: counters[k] for k in ("stored", "duplicates", "dead_lettered")} == {
        "stored": len(before) + len(during), "duplicates": len(duplicates), "dead_lettered": len(invalid),
    }, "a batch that failed was counted, or counted twice"
    assert consumer.stats.stored == len(before) + len(during)


def test_ingest_gives_up_when_the_database_stays_away(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    publish(settings, calls([customer], 5, 3))
    consumer = ingest_consumer(settings, interaction_log(settings))
    consumer.give_up_after_seconds = 3.0  # 300 s in `rapport ingest`
    consumer.subscribe()
    try:
        with database_away(settings):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="PostgreSQL has been unavailable"):
                wait_for(lambda: consumer.poll_once() and False, timeout=180, interval=0,
                         what="ingest to give up")
            assert time.monotonic() - started >= consumer.give_up_after_seconds
            assert consumer.stats.database_failures >= 2, "it gave up without retrying"
    finally:
        consumer.close()
        consumer.store.close()
    assert stored_event_ids(store, [customer]) == []
    assert store.interactions.ingest_counters(settings.topic)["stored"] == 0


def test_a_batch_whose_commit_went_unanswered_is_counted_once(settings: Settings, store: InteractionLog) -> None:
    """The connection is cut just after PostgreSQL committed a batch, before ingest heard so (seen in
    CI when `database_away` terminated the backend mid-commit): the stored offsets decide, so the
    batch is neither read again nor missing from the process's totals."""
    customers = [new_customer_id() for _ in range(5)]
    events = calls(customers, 40, 4)
    publish(settings, events)
    consumer = ingest_consumer(settings.model_copy(update={"ingest_max_poll_records": 10}), interaction_log(settings))
    real_record = consumer.store.record
    cut = []

    def record_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        result = real_record(*args, **kwargs)  # committed in PostgreSQL
        if not cut:
            cut.append(True)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result

    consumer.store.record = record_then_lose_the_answer  # type: ignore[method-assign]
    drain(consumer, settings)
    consumer.store.close()

    assert cut and consumer.stats.database_failures == 1
    assert Counter(stored_event_ids(store, customers)) == Counter(e["event_id"] for e in events)
    assert consumer.stats.stored == len(events) and consumer.stats.duplicates == 0
    assert store.interactions.ingest_counters(settings.topic)["stored"] == len(events)
