"""A crash at any instant loses nothing and counts nothing twice: SIGKILL mid-stream, restart, compare."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal

import pytest

from domain.contract import EVENT_TYPES
from eventstore import tables
from eventstore.store import InteractionLog
from projections import customer_360, lifecycle, timeline
from services.bootstrap import ingest_consumer, projector
from services.settings import Settings
from tests.conftest import ROOT, settings_env
from tests.support import drain, end_offsets, envelope, new_customer_id, publish, stored_event_ids, wait_for

pytestmark = pytest.mark.integration

EVENTS = 20_000
CUSTOMERS = 200


def workload() -> tuple[list[str], list[dict]]:
    customers = [new_customer_id() for _ in range(CUSTOMERS)]
    events = []
    for i in range(EVENTS):
        customer = customers[i % CUSTOMERS]
        day = f"2026-{1 + i % 9:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"
        kind = i % 4
        if kind == 0:
            events.append(envelope(customer, "call", day, {"direction": "inbound", "duration_seconds": i % 600}))
        elif kind == 1:
            events.append(envelope(customer, "email", day, {"direction": "outbound"}))
        elif kind == 2:
            events.append(envelope(customer, "purchase", day,
                                   {"order_id": f"o-{i}", "amount": f"{i % 100}.{i % 100:02d}", "currency": "USD"}))
        else:
            events.append(envelope(customer, "survey_response", day, {"kind": "nps", "score": i % 11}))
    return customers, events


def start(command: str, settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "services.cli", command], cwd=ROOT,
                            env=settings_env(settings, **env))


def stored_count(store: InteractionLog, topic: str) -> int:
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        row = conn.execute(f"SELECT count(*) AS n FROM {tables.EVENT_IDS} WHERE source_topic = %s", (topic,)).fetchone()
    return int(row["n"])


def kill_mid_stream(process: subprocess.Popen[bytes], progress: callable, total: int) -> int:
    """SIGKILL the process once it has made some progress but is not done; the progress then."""
    wait_for(lambda: progress() >= total // 10, timeout=120, interval=0.01, what="some progress before the kill")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done = progress()
    assert 0 < done < total, f"the kill was not mid-stream ({done} of {total})"
    return done


def test_ingest_killed_mid_stream_loses_nothing_and_doubles_nothing(settings: Settings, store: InteractionLog) -> None:
    customers, events = workload()
    publish(settings, events)

    first = start("ingest", settings, RAPPORT_INGEST_MAX_POLL_RECORDS="300")
    try:
        kill_mid_stream(first, lambda: stored_count(store, settings.topic), EVENTS)
    finally:
        first.kill()

    second = start("ingest", settings, RAPPORT_INGEST_MAX_POLL_RECORDS="300")
    try:
        targets = end_offsets(settings)

        def caught_up() -> bool:
            stored = store.interactions.kafka_positions(settings.topic, targets)
            return all(stored.get(p, -1) + 1 >= end for p, end in targets.items())

        wait_for(caught_up, timeout=180, interval=0.2, what="the restarted ingest to reach the end")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, "ingest did not stop cleanly on SIGTERM"
    finally:
        second.kill()

    stored = stored_event_ids(store, customers)
    assert len(stored) == EVENTS, f"{EVENTS - len(stored)} lost" if len(stored) < EVENTS else f"{len(stored) - EVENTS} doubled"
    assert Counter(stored) == Counter(e["event_id"] for e in events)


def expected_rows(customers: list[str], events: list[dict]) -> dict[str, tuple]:
    counts: dict[str, Counter] = {c: Counter() for c in customers}
    revenue: dict[str, Decimal] = {c: Decimal(0) for c in customers}
    for e in events:
        counts[e["customer"]["id"]][e["type"]] += 1
        if e["type"] == "purchase":
            revenue[e["customer"]["id"]] += Decimal(e["data"]["amount"])
    return {c: (counts[c]["call"], counts[c]["email"], counts[c]["purchase"], counts[c]["survey_response"], revenue[c])
            for c in customers}


def test_projector_killed_mid_stream_loses_nothing_and_doubles_nothing(settings: Settings, store: InteractionLog) -> None:
    customers, events = workload()
    publish(settings, events)
    drain(ingest_consumer(settings, store), settings, timeout=180)
    runner = projector(settings, store)
    start_position = min(runner.positions().values())
    head = store.recorder.max_notification_id()

    def progress() -> int:  # the read model furthest behind
        return min(runner.positions().values()) - start_position

    # Ten pages per transaction while far behind (catch-up batches), so the kill lands mid-stream
    # and mid-batch as well as between pages.
    batches = {"RAPPORT_PROJECTION_PAGE_SIZE": "100", "RAPPORT_PROJECTION_CATCH_UP_EVENTS": "1000"}
    first = start("projector", settings, **batches)
    try:
        kill_mid_stream(first, progress, head - start_position)
    finally:
        first.kill()

    second = start("projector", settings, **batches)
    try:
        wait_for(lambda: progress() >= head - start_position, timeout=180, interval=0.1,
                 what="the restarted projector to bring every read model to the head")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, "projector did not stop cleanly on SIGTERM"
    finally:
        second.kill()

    counts = ", ".join(f"c.{customer_360.count_column(t)}" for t in EVENT_TYPES)
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            f"SELECT c.customer_id, {counts}, COALESCE(r.revenue, 0) AS revenue FROM {customer_360.CUSTOMERS.name} c "
            f"LEFT JOIN {customer_360.REVENUE.name} r ON r.customer_id = c.customer_id AND r.currency = 'USD' "
            "WHERE c.customer_id = ANY(%s)", (customers,)).fetchall()
        per_model = {
            table.name: conn.execute(f"SELECT count(*) AS n FROM {table.name} WHERE customer_id = ANY(%s)",
                                     (customers,)).fetchone()["n"]
            for table in (lifecycle.FACTS, timeline.EVENTS)
        }
    actual = {r["customer_id"]: tuple(r.values())[1:] for r in rows}
    assert actual == expected_rows(customers, events)
    assert per_model == {lifecycle.FACTS.name: EVENTS, timeline.EVENTS.name: EVENTS}
