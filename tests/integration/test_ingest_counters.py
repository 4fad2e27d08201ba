"""Ingest's counters (for Prometheus) are kept in the batch's transaction: exact, also across a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from eventstore import tables
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer
from services.settings import Settings
from tests.conftest import ROOT, settings_env
from tests.support import drain, end_offsets, envelope, new_customer_id, publish, wait_for

pytestmark = pytest.mark.integration

EMAIL = {"direction": "outbound"}


def mix(customers: list[str], valid: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[bytes]]:
    """`valid` new events; exact repeats of some; conflicting re-uses of an event_id; invalid messages."""
    events = [envelope(customers[i % len(customers)], "email", f"2026-04-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", EMAIL)
              for i in range(valid)]
    duplicates = [dict(e) for e in events[::7]]
    conflicts = [{**e, "data": {"direction": "inbound"}} for e in events[3::50]]
    invalid = [b"{not json", json.dumps({"event_id": "no-type"}).encode(), b"[1, 2]",
               json.dumps(envelope(customers[0], "email", "2026-04-01T10:00:00", EMAIL)).encode()]  # naive time
    return events, duplicates, conflicts, invalid


def totals(store: InteractionLog, settings: Settings) -> dict[str, int]:
    return store.interactions.ingest_counters(settings.topic)


def partition_rows(store: InteractionLog, settings: Settings) -> list[dict[str, Any]]:
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        return conn.execute(
            f"SELECT partition, stored, duplicates, dead_lettered, batches FROM {tables.INGEST_COUNTERS} "
            "WHERE topic = %s ORDER BY partition", (settings.topic,),
        ).fetchall()


def test_counters_equal_what_was_published(settings: Settings, store: InteractionLog) -> None:
    customers = [new_customer_id() for _ in range(12)]
    events, duplicates, conflicts, invalid = mix(customers, 300)
    publish(settings, events + duplicates + conflicts)
    publish(settings, invalid, key=customers[1].encode())
    consumer = ingest_consumer(settings.model_copy(update={"ingest_max_poll_records": 50}), store)
    drain(consumer, settings)

    counters = totals(store, settings)
    assert {k: counters[k] for k in ("stored", "duplicates", "dead_lettered")} == {
        "stored": len(events), "duplicates": len(duplicates), "dead_lettered": len(conflicts) + len(invalid),
    }
    rows = partition_rows(store, settings)
    ends = end_offsets(settings)
    # one row per partition that had messages; each message counted once, in one of the three
    assert [r["partition"] for r in rows] == sorted(p for p, end in ends.items() if end)
    for row in rows:
        assert row["stored"] + row["duplicates"] + row["dead_lettered"] == ends[row["partition"]]
        assert 1 <= row["batches"] <= ends[row["partition"]]
    assert counters["batches"] == sum(r["batches"] for r in rows)
    assert consumer.stats.batches <= counters["batches"] <= consumer.stats.batches * len(rows)
    # without a topic: the totals over every topic of this database, this one included
    everything = store.interactions.ingest_counters()
    assert all(everything[k] >= counters[k] for k in counters)

    # A second run reads nothing again: the counters stay as they are.
    drain(ingest_consumer(settings, store), settings)
    assert totals(store, settings) == counters


def test_counters_are_exact_across_a_crash(settings: Settings, store: InteractionLog) -> None:
    customers = [new_customer_id() for _ in range(60)]
    events, duplicates, conflicts, invalid = mix(customers, 6000)
    publish(settings, events + duplicates + conflicts)
    publish(settings, invalid, key=customers[1].encode())
    total = len(events) + len(duplicates) + len(conflicts) + len(invalid)

    def counted() -> int:
        c = totals(store, settings)
        return c["stored"] + c["duplicates"] + c["dead_lettered"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "ingest"], cwd=ROOT,
                                env=settings_env(settings, RAPPORT_INGEST_MAX_POLL_RECORDS="100"))

    first = start()
    try:
        wait_for(lambda: counted() >= total // 10, timeout=120, interval=0.01, what="some progress before the kill")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    assert 0 < counted() < total, f"the kill was not mid-stream ({counted()} of {total})"

    second = start()
    try:
        wait_for(lambda: counted() >= total, timeout=180, interval=0.2, what="the restarted ingest to count every message")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    finally:
        second.kill()

    counters = totals(store, settings)
    assert {k: counters[k] for k in ("stored", "duplicates", "dead_lettered")} == {
        "stored": len(events), "duplicates": len(duplicates), "dead_lettered": len(conflicts) + len(invalid),
    }
