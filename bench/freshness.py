"""Benchmark (issue 12, targets 2 and 4): freshness under load, and the memory of each process.

Starts the product as it runs in production — `rapport ingest` (× --ingest-processes),
`rapport projector` and `rapport api` as child processes on a throwaway topic and database — and
offers events at a fixed rate (default 5,000/s for 60 s) from a separate publishing process.
Every `--probe-every`-th event is a probe: the first event of a customer nobody has seen. A
watcher asks `GET /customers/{id}` for each probe in flight every `--tick-ms` until it answers
200; freshness is the time from handing the probe to the Kafka producer to that answer (so it
includes Kafka, ingest, the projector and the API). The RSS of every child (API workers
included) is sampled every second.

The last line is one JSON object: `freshness_p50_ms`, `freshness_p99_ms`, `offered_eps`,
`rss_mb_max` per process kind, and more.

    .venv/bin/python -m bench.freshness [--rate 5000] [--seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import TopicPartition  # noqa: E402

from bench.common import (  # noqa: E402
    PARTITIONS,
    create_database,
    ignore_signals,
    json_line,
    key_headers,
    remove_throwaways,
    say,
    use_bench_key,
    with_dbname,
)
from consumers.ingest import kafka_consumer, kafka_producer  # noqa: E402
from services import bootstrap  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.topics import ensure_topics  # noqa: E402
from tools.demo_data import generate_demo_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _probe(customer: str, sent_at: float) -> bytes:
    return json.dumps({
        "event_id": f"probe:{customer}", "type": "call", "occurred_at": "2026-11-01T10:00:00Z",
        "customer": {"id": customer}, "source": "bench.freshness",
        "data": {"direction": "inbound", "duration_seconds": 60}, "sent_at": sent_at,
    }).encode()


def publish_at_rate(servers: list[str], topic: str, rate: int, seconds: float, probe_every: int,
                    values: list[tuple[bytes | None, bytes]], probes: Any, tag: str) -> None:
    """Child: send `rate` messages a second on a fixed timetable; report each probe (id, time sent)."""
    producer = kafka_producer({"bootstrap_servers": servers}, linger_ms=2)  # the local stack's plain listener
    started = time.monotonic()
    total = int(rate * seconds)
    sent = late = 0
    try:
        for i in range(total):
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:
                late += 1
            if i % probe_every == 0:
                customer = f"probe-{tag}-{i}"
                now = time.monotonic()
                producer.send(topic, key=customer.encode(), value=_probe(customer, now))
                probes.send((customer, now))
            else:
                key, value = values[i % len(values)]
                producer.send(topic, key=key, value=value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
        probes.send(("done", {"sent": sent, "seconds": time.monotonic() - started, "late": late}))
        probes.close()


class Watcher:
    """Polls GET /customers/{id} for every probe in flight, from a few keep-alive connections."""

    def __init__(self, port: int, tick: float, connections: int = 4) -> None:
        self.port, self.tick = port, tick
        self.in_flight: dict[str, float] = {}
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k, connections), daemon=True)
                        for k in range(connections)]

    def add(self, customer: str, sent_at: float) -> None:
        with self.lock:
            self.in_flight[customer] = sent_at

    def _run(self, k: int, of: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            tick_started = time.monotonic()
            with self.lock:
                mine = [(c, t) for i, (c, t) in enumerate(self.in_flight.items()) if i % of == k]
            for customer, sent_at in mine:
                try:
                    conn.request("GET", f"/customers/{customer}", headers=key_headers())
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as error:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    self.errors.append(f"{type(error).__name__}: {error}")
                    continue
                if status == 200:
                    seen = time.monotonic()
                    with self.lock:
                        self.in_flight.pop(customer, None)
                        self.latencies.append(seen - sent_at)
                elif status != 404:
                    self.errors.append(f"HTTP {status} for {customer}")
            self.stop.wait(max(0.0, self.tick - (time.monotonic() - tick_started)))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()


def _tree_rss_mb(pid: int) -> dict[int, float]:
    """RSS of a process and its children (uvicorn's workers), by pid."""
    found: dict[int, float] = {}
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found[p] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return found


@contextmanager
def product(settings: Settings, ingest_processes: int, port: int) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {**os.environ, "RAPPORT_DATABASE_URL": settings.database_url, "RAPPORT_TOPIC": settings.topic,
           "RAPPORT_DLQ_TOPIC": settings.dead_letter_topic, "RAPPORT_CONSUMER_GROUP": settings.consumer_group,
           "RAPPORT_API_PORT": str(port), "RAPPORT_LOG_LEVEL": "WARNING"}
    rapport = str(ROOT / ".venv" / "bin" / "rapport")
    bootstrap.ensure_schema(settings)  # tables first: the children would race to create them
    use_bench_key(settings.database_url)
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(ingest_processes):
            children[f"ingest{i + 1}"] = subprocess.Popen([rapport, "ingest"], env=env, stdout=subprocess.DEVNULL)
        children["projector"] = subprocess.Popen([rapport, "projector"], env=env, stdout=subprocess.DEVNULL)
        children["api"] = subprocess.Popen([rapport, "api"], env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        yield children
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _wait_for_api(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the API did not answer on port {port} within {timeout:.0f} s")


class Backlog:
    """Where events wait, sampled each second: messages in Kafka not yet stored (ingest) and
    events stored but not yet applied (each read model, from the product's GET /projections)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings, self.port = settings, port
        self.consumer = kafka_consumer(settings.kafka_client_config, None, 1)  # type: ignore[arg-type]
        self.store = bootstrap.interaction_log(settings)
        self.ingest: list[int] = []
        self.read_models: dict[str, list[int]] = {}

    def sample(self) -> None:
        tps = [TopicPartition(self.settings.topic, p) for p in
               self.consumer.partitions_for_topic(self.settings.topic) or []]
        ends = {tp.partition: end for tp, end in self.consumer.end_offsets(tps).items()}
        stored = self.store.interactions.kafka_positions(self.settings.topic, ends)
        self.ingest.append(sum(end - (stored.get(p, -1) + 1) for p, end in ends.items()))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/projections")
            for model in json.loads(conn.getresponse().read())["items"]:
                self.read_models.setdefault(model["name"], []).append(model["lag"])
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.store.close()

    def summary(self) -> dict[str, Any]:
        return {"ingest_backlog_max": max(self.ingest, default=0),
                "ingest_backlog_mean": statistics.fmean(self.ingest) if self.ingest else 0.0,
                "read_model_lag_max": {name: max(lags) for name, lags in self.read_models.items()}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    admin = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=5000, help="events offered per second (default 5000)")
    parser.add_argument("--seconds", type=float, default=60, help="how long (default 60)")
    parser.add_argument("--probe-every", type=int, default=250, help="one probe per this many events (default 250)")
    parser.add_argument("--tick-ms", type=float, default=20, help="how often each probe is asked for (default 20)")
    parser.add_argument("--ingest-processes", type=int, default=admin.ingest_processes,
                        help=f"rapport ingest processes (default {admin.ingest_processes})")
    parser.add_argument("--port", type=int, default=8765, help="port of the API under test (default 8765)")
    parser.add_argument("--quick", action="store_true", help="20 s")
    parser.add_argument("--keep", action="store_true", help="keep the topic and database")
    args = parser.parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    tag = uuid.uuid4().hex[:8]
    database = "rapport_bench_fresh"
    settings = Settings(database_url=with_dbname(admin.database_url, database), topic=f"bench-fresh-{tag}",
                        consumer_group=f"bench-fresh-{tag}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    created = False
    try:
        create_database(admin, database)
        created = True
        ensure_topics(settings.kafka_servers, settings.topic, settings.dead_letter_topic, partitions=PARTITIONS)
        data = generate_demo_data(customers=20_000, events=200_000, duplicate_rate=0, invalid_rate=0,
                                  conflict_rate=0)
        values = [(m.key, m.value) for m in data.messages]
        del data
        rss: dict[str, list[float]] = {}
        with product(settings, args.ingest_processes, args.port) as children:
            _wait_for_api(args.port)
            time.sleep(3)  # the ingest consumers join their group
            watcher = Watcher(args.port, args.tick_ms / 1000)
            watcher.start()
            backlog = Backlog(settings, args.port)
            receive, send = mp.get_context("fork").Pipe(duplex=False)
            publisher = mp.get_context("fork").Process(
                target=publish_at_rate, name="bench-publisher",
                args=(settings.kafka_servers, settings.topic, args.rate, seconds, args.probe_every, values, send, tag))
            publisher.start()
            send.close()
            summary: dict[str, Any] = {}
            next_sample = time.monotonic()
            say(f"offering {args.rate:,} events/s for {seconds:.0f} s; a probe every {args.probe_every}")
            while True:
                if receive.poll(0.05):
                    customer, value = receive.recv()
                    if customer == "done":
                        summary = value
                        break
                    watcher.add(customer, value)
                if time.monotonic() >= next_sample:
                    next_sample += 1.0
                    backlog.sample()
                    for name, child in children.items():
                        if child.poll() is not None:
                            raise RuntimeError(f"rapport {name} exited with {child.returncode}")
                        for pid, mb in _tree_rss_mb(child.pid).items():
                            rss.setdefault(f"{name}:{pid}", []).append(mb)
            publisher.join()
            deadline = time.monotonic() + 60
            while watcher.in_flight and time.monotonic() < deadline:
                time.sleep(0.1)
            watcher.stop.set()
            backlog.close()
            unseen = len(watcher.in_flight)
        latencies = [s * 1000 for s in watcher.latencies]
        if not latencies:
            raise RuntimeError(f"no probe became visible; errors: {watcher.errors[:5]}")
        by_kind: dict[str, float] = {}
        flat: dict[str, float] = {}
        for key, series in rss.items():
            kind = key.split(":")[0].rstrip("0123456789")
            by_kind[kind] = max(by_kind.get(kind, 0.0), max(series))
            half = series[len(series) // 2:]
            flat[kind] = max(flat.get(kind, 0.0), max(half) - min(half))
        r = {
            "offered_eps": summary["sent"] / summary["seconds"], "rate": args.rate, "seconds": seconds,
            "late_sends": summary["late"], "probes": len(latencies), "probes_unseen": unseen,
            "watch_errors": len(watcher.errors),
            "freshness_p50_ms": statistics.median(latencies), "freshness_p99_ms": _percentile(latencies, 0.99),
            "freshness_max_ms": max(latencies), "ingest_processes": args.ingest_processes,
            "rss_mb_max": by_kind, "rss_mb_second_half_growth": flat, **backlog.summary(),
        }
        print(f"freshness: {r['offered_eps']:,.0f} events/s offered for {seconds:.0f} s, {len(latencies)} probes "
              f"({unseen} never seen); publish → GET /customers/{{id}}: p50 {r['freshness_p50_ms']:.0f} ms, "
              f"p99 {r['freshness_p99_ms']:.0f} ms, max {r['freshness_max_ms']:.0f} ms")
        print(f"waiting at most: {r['ingest_backlog_max']:,} messages for ingest; events for the read models: "
              + ", ".join(f"{k} {v:,}" for k, v in r["read_model_lag_max"].items()))
        print("peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in by_kind.items())
              + "; growth over the second half: " + ", ".join(f"{k} {v:.0f}" for k, v in flat.items()))
        print(json_line(r, digits=2), flush=True)
        return 0 if not unseen else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        ignore_signals()
        if not args.keep:
            remove_throwaways(admin, settings.kafka_servers, topics=[settings.topic, settings.dead_letter_topic],
                              groups=[settings.consumer_group], databases=[database] if created else [])


if __name__ == "__main__":
    sys.exit(main())
