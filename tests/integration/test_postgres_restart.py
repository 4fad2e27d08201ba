"""Acceptance: PostgreSQL restarts (fast mode, connections cut) while `rapport ingest`, `rapport projector`
and `rapport api` run and events flow. None of them has to be restarted: the API answers a JSON 503
while the database is away and 200 again afterwards; every event is stored exactly once; the view
counts what was published; each process stops on SIGTERM with exit code 0.

It restarts the whole cluster of the test database (as `scripts/stack` manages it): other sessions
on that server lose their connections for a few seconds too.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eventstore.store import InteractionLog
from services.settings import Settings
from tests.integration.pg_faults import answers, free_port, http_get, log_tail, restart_postgres, start_rapport
from tests.support import api_key, end_offsets, envelope, new_customer_id, publish, stored_event_ids, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 40
BEFORE, DURING, AFTER = 2000, 1500, 1000  # events published before, while and after PostgreSQL restarts
TYPES = ("call", "email", "purchase", "survey_response")
PROCESSES = ("ingest", "projector", "api")
PROBES = 3  # clients asking at once: one of them is usually mid-query when the connections are cut
CHUNK = 25  # events published at a time while PostgreSQL restarts, every 0.1 s


def make_events(customers: list[str], count: int, first: int) -> list[dict[str, Any]]:
    events = []
    for i in range(first, first + count):
        customer = customers[i % len(customers)]
        kind = TYPES[(i // len(customers)) % len(TYPES)]  # every customer gets every type
        at = f"2026-{1 + i % 9:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"
        data: dict[str, Any] = {
            "call": {"direction": "inbound", "duration_seconds": i % 600},
            "email": {"direction": "outbound" if i % 2 else "inbound"},
            "purchase": {"order_id": f"o-{i}", "amount": f"{i % 90 + 10}.50", "currency": "USD"},
            "survey_response": {"kind": "nps", "score": i % 11},
        }[kind]
        events.append(envelope(customer, kind, at, data))
    return events


def expected_counts(customers: list[str], events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts = {c: dict.fromkeys(TYPES, 0) for c in customers}
    for e in events:
        counts[e["customer"]["id"]][e["type"]] += 1
    return counts


class Probe(threading.Thread):
    """GET one URL in a tight loop until stopped; every answer kept with the time it came."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(name="api-probe", daemon=True)
        self.url = url
        self.key = key
        self.answers: list[tuple[float, int, dict[str, str], Any]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                status, headers, body = http_get(self.url, timeout=30, key=self.key)
            except OSError as error:  # the API must not stop answering: kept, and asserted on
                self.errors.append(f"{type(error).__name__}: {error}")
                self._stop_event.wait(0.05)
                continue
            self.answers.append((time.monotonic(), status, {k.lower(): v for k, v in headers.items()}, body))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)



def caught_up(store: InteractionLog, settings: Settings) -> bool:
    targets = end_offsets(settings)
    stored = store.interactions.kafka_positions(settings.topic, targets)
    return all(end == 0 or stored.get(p, -1) + 1 >= end for p, end in targets.items())


def stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> dict[str, int | None]:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = None  # did not stop within a minute of SIGTERM
    return codes


def test_everything_rides_through_a_postgres_restart(settings: Settings, store: InteractionLog, tmp_path: Path) -> None:
    port = free_port()
    settings = settings.model_copy(update={"api_port": port})
    base = f"http://127.0.0.1:{port}"
    key = api_key(settings, "analyst")
    customers = [new_customer_id() for _ in range(CUSTOMERS)]
    before = make_events(customers, BEFORE, 0)
    during = make_events(customers, DURING, BEFORE)
    after = make_events(customers, AFTER, BEFORE + DURING)
    duplicates = before[::40] + during[::40]  # exact repeats: ignored
    invalid = [b"{not json", b'{"event_id": "only-an-id"}', b"[]"]  # dead-lettered

    def logs() -> str:
        return "\n".join(log_tail(tmp_path, name) for name in PROCESSES)

    def view(customer: str) -> tuple[int, dict[str, str], Any]:
        return http_get(f"{base}/customers/{urllib.parse.quote(customer)}", key=key)

    publish(settings, before)
    # Small batches and pages: many transactions, so the restart meets both processes mid-stream.
    processes = {name: start_rapport(name, settings, tmp_path, RAPPORT_INGEST_MAX_POLL_RECORDS="250",
                                     RAPPORT_PROJECTION_PAGE_SIZE="250") for name in PROCESSES}
    try:
        def all_running() -> bool:
            exited = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
            assert not exited, f"exited: {exited}\n{logs()}"
            return True

        def healthy() -> bool:
            all_running()
            try:
                return http_get(f"{base}/health")[0] == 200
            except OSError:
                return False

        wait_for(healthy, timeout=90, interval=0.2, what="rapport api to answer /health")
        known = customers[0]
        wait_for(lambda: all_running() and view(known)[0] == 200, timeout=120, interval=0.2,
                 what=f"customer {known} in the view before the restart")

        probes = [Probe(f"{base}/customers/{urllib.parse.quote(known)}", key) for _ in range(PROBES)]
        for probe in probes:
            probe.start()
        # Kafka stays up: events keep coming, a chunk every 0.1 s, while PostgreSQL restarts.
        restart_done = threading.Event()
        published: list[int] = []

        def stream() -> None:
            for i in range(0, len(during), CHUNK):
                published.append(publish(settings, during[i:i + CHUNK]))
                restart_done.wait(0.1)  # paced until the restart is over, then the rest at once
            publish(settings, duplicates)
            publish(settings, invalid, key=known.encode())

        publisher = threading.Thread(target=stream, name="publisher")
        publisher.start()
        wait_for(lambda: published, timeout=60, what="the stream of events to begin")
        try:
            took = restart_postgres(settings)
        finally:
            restart_done.set()
        restarted_at = time.monotonic()
        publisher.join(timeout=120)
        assert not publisher.is_alive() and sum(published) == len(during)
        # the API answers 200 again by itself (an answer that came after the restart ended)
        wait_for(lambda: all(any(t > restarted_at + 0.5 and s == 200 for t, s, _, _ in p.answers[-20:]) for p in probes),
                 timeout=120, interval=0.1, what="the API to answer 200 again after the restart")
        for probe in probes:
            probe.stop()

        answered = sorted((a for p in probes for a in p.answers), key=lambda a: a[0])
        statuses = Counter(status for _, status, _, _ in answered)
        retries = (tmp_path / "ingest.log").read_text().count("PostgreSQL unavailable")
        # shown with -rA: how the restart went
        print(f"PostgreSQL restart took {took:.1f} s; API answers meanwhile: {dict(statuses)}; "
              f"ingest batches retried for the database: {retries}")
        errors = [e for p in probes for e in p.errors]
        assert not errors, f"the API did not answer: {errors[:5]}\n{logs()}"
        assert statuses[503] >= 1, f"no 503 while PostgreSQL restarted ({took:.1f} s): {dict(statuses)}\n{logs()}"
        assert set(statuses) <= {200, 503}, f"unexpected answers: {dict(statuses)}\n{logs()}"
        for _, status, headers, body in answered:
            if status == 503:
                assert isinstance(body, dict) and "database is unavailable" in body["detail"], body
                assert int(headers["retry-after"]) > 0
        last_503 = max(t for t, s, _, _ in answered if s == 503)
        assert any(s == 200 and t > last_503 for t, s, _, _ in answered), "no 200 after the last 503"

        publish(settings, after)
        everything = before + during + after
        wait_for(lambda: all_running() and answers(lambda: caught_up(store, settings)), timeout=180, interval=0.2,
                 what="ingest to reach the end of the topic")
        expected = expected_counts(customers, everything)
        for customer in customers:
            wait_for(lambda c=customer: all_running() and (r := view(c))[0] == 200
                     and r[2]["interaction_counts"] == expected[c],
                     timeout=180, interval=0.2, what=f"the view of {customer} to count every event")
        all_running()

        stored = stored_event_ids(store, customers)
        assert len(stored) == len(everything), f"{len(everything) - len(stored)} events lost (negative: doubled)"
        assert Counter(stored) == Counter(e["event_id"] for e in everything)
        counters = store.interactions.ingest_counters(settings.topic)
        assert {k: counters[k] for k in ("stored", "duplicates", "dead_lettered")} == {
            "stored": len(everything), "duplicates": len(duplicates), "dead_lettered": len(invalid),
        }
    finally:
        codes = stop_all(processes)
    assert codes == dict.fromkeys(PROCESSES, 0), f"exit codes after SIGTERM: {codes}\n{logs()}"
