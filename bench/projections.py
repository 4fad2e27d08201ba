"""Benchmark: the projector catching up ALL read models from position 0, and the API reading them.

At a realistic size (default 1,000,000 interaction events of 40,000 customers, ~25 each):
  1. load, THROUGH INGEST: the demo data set (valid events plus the generator's duplicates,
     conflicts and invalid messages) is generated and published by a forked child to a throwaway
     topic, and the real ingest consumer (`services.bootstrap.ingest_consumer`), driven in-process
     as `bench.ingest` drives it, stores it in a throwaway database;
  2. baseline: read and decode the same notification-log pages, applying nothing
     (`select_notifications` + `mapper.to_domain_event`, same page size);
  3. catch-up: the real `Projector` of every read model (`services.bootstrap.projector`),
     `catch_up()` from position 0, with its per-model `stats` and `decode_seconds`, the CPU time
     of this process and of the database's PostgreSQL backends over the same interval;
  4. API: `rapport api` as a child process against the bench database; `GET /lifecycle/stages`
     (default `as_of`, then several `as_of` across the data) and `GET /satisfaction/trend`
     (NPS by month over two years) at a FIXED offered rate from a separate process, latency
     measured from each request's scheduled send time (no coordinated omission);
  5. with --profile DIR: the catch-up again, from position 0, under cProfile (so that the
     headline figures of step 3 are not slowed by the profiler): DIR/catch_up.prof, top 25.
It prints a table and, as its LAST line, one JSON object with every figure. It never fails on a
time; it is not a test.

Isolation: topic `bench-<uuid8>` (+ its `.dlq`), consumer group `bench-<uuid8>`, database
`rapport_bench_projections` (dropped and created); all removed at exit, also on Ctrl-C, unless
--keep. --reuse skips step 1 when the database (kept by an earlier --keep run) holds the events;
the read models are dropped and rebuilt from position 0 each run.

    .venv/bin/python -m bench.projections [--events 1000000] [--customers 40000] [--keep] [--reuse]
                                          [--profile DIR]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import pstats
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import (  # noqa: E402
    PARTITIONS,
    create_database,
    http_get,
    ignore_signals,
    key_headers,
    quietly,
    rapport_api,
    remove_throwaways,
    say,
    with_dbname,
)
from bench.ingest import _peak_rss_mb, _profiled, _rss_mb, ingest, publish_in_child  # noqa: E402
from eventstore import tables  # noqa: E402
from projections.runner import PARKED_TABLE, TRACKING_TABLE, UNAVAILABLE, tracking_name  # noqa: E402
from services import bootstrap  # noqa: E402
from services.cli import tune_garbage_collector  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.topics import ensure_topics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "rapport_bench_projections"
META_TABLE = "bench_projections_meta"  # what the load measured, for --reuse
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU and memory accounting ----------------------------------------------------------------

def _process_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def _process_rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (busy excludes idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: write 5 to clear_refs), to measure one phase's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuMeter:
    """CPU seconds over an interval: this process, the bench database's PostgreSQL backends
    (sampled every half second from pg_stat_activity, so very short-lived ones are missed), and
    the whole machine (busy cores, whoever uses them)."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)

    def _sample(self, first: bool = False) -> None:
        pids = [r[0] for r in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        for pid in pids:
            cpu = _process_cpu_s(pid)
            if cpu is None:
                continue
            if pid not in self.first:
                self.first[pid] = cpu if first else 0.0
            self.last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            quietly("sampling PostgreSQL CPU", self._sample)

    def __enter__(self) -> CpuMeter:
        self._sample(first=True)
        self.own0 = time.process_time()
        self.machine0 = _machine_busy()
        self.wall0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.own = time.process_time() - self.own0
        busy1, total1 = _machine_busy()
        self._stop.set()
        self._thread.join()
        quietly("sampling PostgreSQL CPU", self._sample)
        self.conn.close()
        self.postgres = sum(self.last[p] - self.first[p] for p in self.last)
        busy0, total0 = self.machine0
        cpus = os.cpu_count() or 1
        self.machine_busy_cores = (busy1 - busy0) / max(total1 - total0, 1) * cpus

    def figures(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_process_cpu_s": self.own, f"{prefix}_postgres_cpu_s": self.postgres,
            f"{prefix}_machine_busy_cores": self.machine_busy_cores,
            f"{prefix}_other_busy_cores": max(self.machine_busy_cores - (self.own + self.postgres) / self.wall, 0.0),
        }


# --- 1. load through ingest -------------------------------------------------------------------

def _counts(conninfo: str) -> tuple[int, int]:
    """(rows of the event store, Registered events among them)."""
    with psycopg.connect(conninfo) as conn:
        rows, registered = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE topic LIKE %s) FROM {tables.EVENTS}", ("%Registered",)).fetchone()  # noqa: S608 - names from constants
    return rows, registered


def load(args: argparse.Namespace, settings: Settings, clients: list[Any]) -> dict[str, Any]:
    """Publish the demo data set (valid + dirty messages) and ingest all of it; keep the figures."""
    published = publish_in_child(settings, args.customers, args.events, args.seed, clean=False)
    messages = sum(published["kinds"].values())
    store = bootstrap.interaction_log(settings)
    try:
        r = ingest(settings, store, args.events, args.timeout, None, clients, messages=messages)
    finally:
        for consumer in clients:
            consumer.consumer.close(autocommit=False)
            consumer.dead_letters.producer.close(timeout=10)
        clients.clear()
        store.close()
    r |= {
        "generate_s": published["generate_s"], "publish_s": published["publish_s"],
        "publish_msgs_per_s": messages / published["publish_s"], "message_kinds": published["kinds"],
        "avg_message_bytes": published["value_bytes"] / messages, "publisher_peak_rss_mb": published["peak_rss_mb"],
        "customers": published["customers"],
    }
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (id int PRIMARY KEY, data jsonb NOT NULL)")
        conn.execute(f"INSERT INTO {META_TABLE} VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET data = excluded.data",  # noqa: S608 - names from constants
                     (json.dumps({**r, "events": args.events, "loaded_at": datetime.now(UTC).isoformat()}),))
    return r


def reused(settings: Settings) -> dict[str, Any]:
    """The figures of the run that loaded the kept database."""
    with psycopg.connect(bootstrap.conninfo(settings)) as conn:
        row = conn.execute(f"SELECT data FROM {META_TABLE} WHERE id = 1").fetchone()  # noqa: S608 - names from constants
    if row is None:
        raise RuntimeError(f"{META_TABLE} is empty: load the database again (without --reuse)")
    return row[0]


def database_has_events(admin: Settings, dbname: str) -> bool:
    with psycopg.connect(bootstrap.conninfo(admin), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            return False
    conninfo = bootstrap.conninfo(Settings(database_url=with_dbname(admin.database_url, dbname)))
    with psycopg.connect(conninfo) as conn:
        present = conn.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                               (tables.EVENTS, META_TABLE)).fetchone()[0]
        return bool(present) and conn.execute(f"SELECT EXISTS (SELECT FROM {tables.EVENTS})").fetchone()[0]  # noqa: S608 - names from constants


def prepare_log(conninfo: str) -> float:
    """VACUUM ANALYZE the event store once, so that the baseline and the catch-up read the log in
    the same state (hint bits set, visibility map current) whichever runs first."""
    t0 = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {tables.EVENTS}")
        if _is_superuser(conn):
            conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def _is_superuser(conn: Any) -> bool:
    return bool(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])


# --- 2. baseline: read and decode the pages, apply nothing ------------------------------------

def baseline(store: Any, page_size: int, head: int, conninfo: str) -> dict[str, Any]:
    source, mapper = store.recorder, store.mapper
    read_s = decode_s = 0.0
    count = pages = 0
    start = 0
    with CpuMeter(conninfo) as cpu, tqdm(total=head, desc="baseline read+decode", unit="ev", file=sys.stderr) as bar:
        t0 = time.perf_counter()
        while True:
            began = time.perf_counter()
            notifications = source.select_notifications(start=start, limit=page_size, inclusive_of_start=False)
            read_s += time.perf_counter() - began
            if not notifications:
                break
            began = time.perf_counter()
            for notification in notifications:
                mapper.to_domain_event(notification)
            decode_s += time.perf_counter() - began
            count += len(notifications)
            pages += 1
            start = notifications[-1].id
            bar.update(len(notifications))
        elapsed = time.perf_counter() - t0
    return {"baseline_s": elapsed, "baseline_notifications": count, "baseline_pages": pages,
            "baseline_read_s": read_s, "baseline_decode_s": decode_s,
            "baseline_read_decode_eps": count / elapsed, "baseline_decode_eps": count / decode_s,
            **cpu.figures("baseline")}


# --- 3. catch-up of every read model ----------------------------------------------------------

def reset_read_models(settings: Settings) -> None:
    """Drop every read model's tables and forget its position and parked events: the next
    projector starts from position 0 with new tables."""
    models = bootstrap.read_models(settings)
    names = [tracking_name(m) for m in models]
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn, conn.transaction():
        for model in models:
            for table in model.tables:
                conn.execute(f"DROP TABLE IF EXISTS {model.t(table.name)} CASCADE")
        if conn.execute("SELECT to_regclass(%s)", (TRACKING_TABLE,)).fetchone()[0]:
            conn.execute(f"DELETE FROM {TRACKING_TABLE} WHERE application_name = ANY(%s)", (names,))  # noqa: S608 - names from constants
        if conn.execute("SELECT to_regclass(%s)", (PARKED_TABLE,)).fetchone()[0]:
            conn.execute(f"DELETE FROM {PARKED_TABLE} WHERE read_model = ANY(%s)", (names,))  # noqa: S608 - names from constants


def run_catch_up(settings: Settings, store: Any, head: int, desc: str,
                 catch_up_events: int | None = None) -> tuple[Any, float]:
    projector = bootstrap.projector(settings, store)  # all read models, tables created
    if catch_up_events is not None:
        projector.catch_up_events = catch_up_events
    if any(projector.positions().values()):
        raise RuntimeError(f"read models not at position 0: {projector.positions()}")
    with tqdm(total=head, desc=desc, unit="ev", file=sys.stderr) as bar:
        def progress(position: int, _head: int) -> None:
            bar.update(position - bar.n)

        t0 = time.perf_counter()
        while min(projector.positions().values()) < head:
            if projector.catch_up(progress) == 0:
                raise RuntimeError(f"catch-up stuck at {projector.positions()} of {head}")
        elapsed = time.perf_counter() - t0
    return projector, elapsed


def catch_up(settings: Settings, store: Any, head: int, conninfo: str,
             catch_up_events: int | None = None) -> dict[str, Any]:
    reset_read_models(settings)
    gc.collect()
    tune_garbage_collector()  # as `rapport projector` does
    rss_before, peak_before = _rss_mb(), _peak_rss_mb()
    hwm_reset = _reset_peak_rss()  # also resets ru_maxrss: the process's peak so far is kept above
    with CpuMeter(conninfo) as cpu:
        projector, elapsed = run_catch_up(settings, store, head, "catch-up (all read models)", catch_up_events)
    applied = projector.applied
    models = {name: {"events": s.events, "seconds": s.seconds, "parked": s.parked,
                     "eps": s.events / s.seconds if s.seconds else float("nan")}
              for name, s in projector.stats.items()}
    applying = sum(m["seconds"] for m in models.values())
    return {
        "catch_up_s": elapsed, "catch_up_notifications": applied, "all_eps": applied / elapsed,
        "catch_up_events_per_transaction": projector.catch_up_events,
        "catch_up_pages": -(-applied // projector.page_size),
        "models": models, "per_model_eps": {name: m["eps"] for name, m in models.items()},
        "decode_seconds": projector.decode_seconds,
        "catch_up_apply_s": applying,
        # Reading and decoding pages, positions, locks, commits: whatever of it the main thread
        # waited for (a projector that reads ahead on another thread hides some of it).
        "catch_up_outside_apply_s": elapsed - applying,
        **cpu.figures("catch_up"),
        # CPU per event, whoever else shares the machine: the fairer figure on a busy one.
        "catch_up_process_cpu_us_per_event": cpu.own / applied * 1e6,
        "catch_up_postgres_cpu_us_per_event": cpu.postgres / applied * 1e6,
        "catch_up_rss_before_mb": rss_before, "peak_rss_before_catch_up_mb": peak_before,
        "catch_up_peak_rss_mb": _process_rss_mb(os.getpid(), "VmHWM") if hwm_reset else float("nan"),
    }


def check_read_models(conninfo: str, events: int, customers: int) -> dict[str, Any]:
    """What the read models hold against what was stored (a warning, not a failure)."""
    with psycopg.connect(conninfo) as conn:
        c360, c360_events = conn.execute(
            "SELECT count(*), sum(call_count + email_count + purchase_count + survey_response_count) "
            "FROM customer_360").fetchone()
        timeline = conn.execute("SELECT count(*) FROM timeline_events").fetchone()[0]
        facts = conn.execute("SELECT count(*) FROM lifecycle_facts").fetchone()[0]
        intervals = conn.execute("SELECT count(*) FROM lifecycle_intervals").fetchone()[0]
        answers = conn.execute("SELECT count(*) FROM satisfaction_responses").fetchone()[0]
        parked = conn.execute(f"SELECT count(*) FROM {PARKED_TABLE}").fetchone()[0]  # noqa: S608 - names from constants
    found = {"customer_360_customers": c360, "customer_360_events": int(c360_events or 0),
             "timeline_events": timeline, "lifecycle_facts": facts, "lifecycle_intervals": intervals,
             "satisfaction_responses": answers, "parked": parked}
    expected = {"customer_360_customers": customers, "customer_360_events": events, "timeline_events": events,
                "lifecycle_facts": events, "parked": 0}
    wrong = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    if wrong:
        say(f"WARNING: read models do not match the store (found, expected): {wrong}")
    return {"read_model_rows": found, "read_models_match": not wrong}


def analyze_read_models(settings: Settings) -> None:
    """ANALYZE the read models' tables (autovacuum would, a little later), so the API's queries
    are planned with statistics, as in a running system."""
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn:
        for model in bootstrap.read_models(settings):
            for table in model.tables:
                conn.execute(f"ANALYZE {model.t(table.name)}")


# --- 4. the API at a fixed offered rate -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_rate_load(host: str, port: int, paths: list[str], rate: float, duration: float, connections: int,
                     out: Any) -> None:
    """Child process: send GET paths[i % len] at `rate` per second for `duration` seconds on
    `connections` keep-alive connections (one thread each). Each request has a scheduled send time
    (start + i / rate) and its latency runs from then, so a slow server is charged for the
    requests it delayed (no coordinated omission). Sends back (path index, scheduled offset,
    latency, service time, status) per request."""
    try:
        n = max(1, round(rate * duration))
        todo: queue.Queue[tuple[int, float] | None] = queue.Queue()
        results: list[tuple[int, float, float, float, int] | None] = [None] * n

        headers = key_headers()

        def worker() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            while (item := todo.get()) is not None:
                i, scheduled = item
                sent = time.perf_counter()
                try:
                    conn.request("GET", paths[i % len(paths)], headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                    status = -1
                done = time.perf_counter()
                results[i] = (i % len(paths), scheduled - start, done - scheduled, done - sent, status)
            conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
        for thread in threads:
            thread.start()
        start = time.perf_counter() + 0.05
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            todo.put((i, scheduled))
        for _ in threads:
            todo.put(None)
        for thread in threads:
            thread.join()
        out.send({"results": results, "elapsed": time.perf_counter() - start})
    except BaseException as error:  # noqa: BLE001 - reported by the parent
        out.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        out.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def _latency_figures(latencies: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in latencies)
    return {"p50_ms": _percentile(ms, 0.50), "p90_ms": _percentile(ms, 0.90), "p99_ms": _percentile(ms, 0.99),
            "max_ms": ms[-1] if ms else float("nan"), "requests": len(ms)}


def why_not_wrk() -> str:
    """Why the figures come from the Python generator: Debian's wrk (4.x) runs closed-loop
    connections and has no fixed offered rate (wrk2's -R), so its latencies hide queueing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk is not installed"
    usage = subprocess.run([wrk, "--help"], capture_output=True, text=True, check=False)
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (version.stdout + version.stderr).strip().splitlines()[:1]
    name = first[0].split(" Copyright")[0].split(" [")[0] if first else "wrk"
    if "--rate" not in usage.stdout + usage.stderr:
        return f"{name} is installed but has no fixed-rate option (wrk2's -R)"
    return f"{name} offers -R, but these figures come from the Python generator"


@contextmanager
def api_process(settings: Settings, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        "RAPPORT_DATABASE_URL": settings.database_url, "RAPPORT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "RAPPORT_TOPIC": settings.topic, "RAPPORT_CONSUMER_GROUP": settings.consumer_group,
        "RAPPORT_API_PORT": str(port), "RAPPORT_LOG_LEVEL": "WARNING",  # no access log line per request
    }
    with rapport_api(env, port, log_path, ready_path="/lifecycle/stages", stop_seconds=15) as process:
        yield process


def data_span(conninfo: str) -> tuple[datetime, datetime]:
    with psycopg.connect(conninfo) as conn:
        first, last = conn.execute("SELECT min(first_seen_at), max(last_seen_at) FROM customer_360").fetchone()
    return first.astimezone(UTC), last.astimezone(UTC)


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run_load(ctx: Any, port: int, paths: list[str], rate: float, duration: float, connections: int,
              api_pid: int) -> dict[str, Any]:
    """One fixed-rate load in a child process, with the API process's RSS sampled meanwhile."""
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_fixed_rate_load, name="bench-load",
                        args=("127.0.0.1", port, paths, rate, duration, connections, send))
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            rss.append(_process_rss_mb(api_pid))

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    cpu0 = _process_cpu_s(api_pid) or 0.0
    child.start()
    send.close()
    sampler.start()
    try:
        try:
            answer = receive.recv()
        except EOFError:
            answer = {"error": f"the load process died (exit code {child.exitcode})"}
        child.join(10)
    finally:
        stop.set()
        sampler.join()
        if child.is_alive():
            child.terminate()
            child.join(5)
    if "error" in answer:
        raise RuntimeError(f"load of {paths[0]}: {answer['error']}")
    answer["api_cpu_s"] = (_process_cpu_s(api_pid) or 0.0) - cpu0
    answer["api_rss_max_mb"] = max(rss, default=float("nan"))
    return answer


def api_latency(settings: Settings, conninfo: str, rate: float, duration: float, connections: int,
                warmup: float) -> dict[str, Any]:
    first, last = data_span(conninfo)
    months = (last - first).days / 30.44
    as_of = [last - timedelta(days=round(30.44 * m)) for m in (0, 3, 6, 9, 12, 15) if m < months]
    as_of.append(first + timedelta(days=15))
    latest_day = last.date()
    trend = (f"/satisfaction/trend?kind=nps&granularity=month&from={_years_before(latest_day, 2).isoformat()}"
             f"&to={(latest_day + timedelta(days=1)).isoformat()}")
    loads = [
        ("stages", "GET /lifecycle/stages (default as_of: now)", ["/lifecycle/stages"]),
        ("stages_as_of", f"GET /lifecycle/stages?as_of=... ({len(as_of)} values in turn)",
         [f"/lifecycle/stages?as_of={_rfc3339(at)}" for at in as_of]),
        ("trend", "GET " + trend, [trend]),
    ]
    port = _free_port()
    log_path = Path(tempfile.gettempdir()) / f"bench-projections-api-{port}.log"
    why = why_not_wrk()
    result: dict[str, Any] = {"load_tool": "python fixed-rate generator (separate process, threads, latency from "
                                           f"the scheduled send time); {why}",
                              "data_first_at": _rfc3339(first), "data_last_at": _rfc3339(last),
                              "offered_rate": rate, "duration_s": duration, "connections": connections, "loads": {}}
    ctx = mp.get_context("spawn")
    with api_process(settings, port, log_path) as api:
        result["api_rss_start_mb"] = _process_rss_mb(api.pid)
        for name, label, paths in loads:
            for path in paths:
                status, body = http_get(port, path)
                if status != 200:
                    raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
            if warmup > 0:  # the read pool grows, plans and caches warm: not measured
                say(f"warm-up: {label} at {rate:g}/s for {warmup:g} s")
                _run_load(ctx, port, paths, rate, warmup, connections, api.pid)
            say(f"load: {label} at {rate:g}/s for {duration:g} s")
            answer = _run_load(ctx, port, paths, rate, duration, connections, api.pid)
            results = [r for r in answer["results"] if r is not None]
            ok = [r for r in results if r[4] == 200]
            figures = _latency_figures([r[2] for r in results])
            figures |= {
                "label": label, "paths": paths, "errors": len(results) - len(ok),
                "achieved_rate": len(results) / answer["elapsed"],
                "service_p50_ms": _percentile(sorted(r[3] * 1000 for r in results), 0.50),
                "service_p99_ms": _percentile(sorted(r[3] * 1000 for r in results), 0.99),
                "api_cpu_ms_per_request": answer["api_cpu_s"] * 1000 / max(len(results), 1),
                "api_rss_max_mb": answer["api_rss_max_mb"],
            }
            if len(paths) > 1:
                figures["by_path"] = {paths[i]: _latency_figures([r[2] for r in results if r[0] == i])
                                      for i in range(len(paths))}
            result["loads"][name] = figures
        result["api_peak_rss_mb"] = _process_rss_mb(api.pid, "VmHWM")
        result["api_rss_end_mb"] = _process_rss_mb(api.pid)
    return result


# --- 5. the profiled catch-up -----------------------------------------------------------------

def profiled_catch_up(settings: Settings, store: Any, head: int, directory: Path,
                      catch_up_events: int | None = None) -> dict[str, Any]:
    reset_read_models(settings)
    with _profiled(directory, "catch_up"):
        projector, elapsed = run_catch_up(settings, store, head, "catch-up under cProfile", catch_up_events)
    path = directory / "catch_up.prof"
    return {"profile_path": str(path), "profiled_catch_up_s": elapsed,
            "profiled_all_eps": projector.applied / elapsed}


def profile_report(path: str, top: int = 25) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    # Time spent in psycopg's execute (adapting parameters, sending, waiting for the server,
    # reading the result), by the function that called it: per read model, roughly.
    lines = ["", "(cProfile sees the thread that enabled it: work on other threads, e.g. a read-ahead, shows as "
                 "waiting for it)", f"cursor.execute by caller (cumulative seconds; profile total {total:.1f} s):"]
    for func, (_cc, _nc, _tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func[2] == "execute" and "psycopg" in func[0] and callers:
            for caller, (_c, n, _t, ct) in sorted(callers.items(), key=lambda kv: -kv[1][3]):
                if ct >= 0.005 * total:
                    lines.append(f"  {ct:8.2f} s {n:7d} calls  {_short(caller)}  -> {_short(func)}")
    waits = [(func, st[2]) for func, st in stats.stats.items()  # type: ignore[attr-defined]
             if "psycopg" in func[0] and func[2] in ("wait", "wait_c", "wait_select", "wait_epoll", "wait_poll")]
    for func, tt in waits:
        lines.append(f"  waiting for the server in {_short(func)}: {tt:.2f} s ({tt / total:.0%} of the profile)")
    return out.getvalue().rstrip() + "\n" + "\n".join(lines)


def _short(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    parts = Path(filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else \
        "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{short}:{line}({name})"


# --- PostgreSQL going away (a restart by someone else on a shared server) ---------------------

def _again_if_postgres_went_away(what: str, phase: Callable[[], dict[str, Any]], retries: int,
                                 settings: Settings) -> dict[str, Any]:
    """Run a measured phase; if PostgreSQL goes away during it, wait for it and measure again
    from the start (a figure across a server restart means nothing). The retries are reported."""
    for attempt in range(retries + 1):
        try:
            return phase() | {f"{what.replace(' ', '_').replace('-', '_')}_attempts": attempt + 1}
        except UNAVAILABLE as error:
            if attempt == retries:
                raise
            say(f"{what}: PostgreSQL went away ({str(error).strip()}); waiting for it, then measuring again")
            deadline = time.monotonic() + 300
            while True:
                time.sleep(2)
                try:
                    bootstrap.check_database(settings)
                    break
                except bootstrap.ServiceUnavailable:
                    if time.monotonic() > deadline:
                        raise
    raise AssertionError("unreachable")


# --- report -----------------------------------------------------------------------------------

def _table(r: dict[str, Any]) -> str:
    n, notes = r["events"], r["notifications"]
    ingest_note = (f"{r['ingest_messages']:,} messages ({r['ingest_duplicates']:,} duplicates, "
                   f"{r['ingest_dead_lettered']:,} dead-lettered), {r['batches']} batches")
    if r["reused"]:
        ingest_note += f"; measured when loaded ({r.get('loaded_at', '?')[:19]}), reused now"
    lines = [
        f"Rapport projections benchmark: {n:,} interaction events + {r['customers']:,} Registered = {notes:,} "
        f"stored events; page size {r['page_size']}, up to {r['catch_up_events_per_transaction']:,} events per "
        f"transaction while far behind; {r['machine']['cpus']} CPUs, load average at start "
        f"{r['machine']['loadavg_start']}",
        f"{'phase':<40}{'seconds':>10}{'events/s':>12}  notes",
    ]
    if not r["reused"]:
        lines.append(f"{'generate + publish (child)':<40}{r['generate_s'] + r['publish_s']:>10.1f}"
                     f"{r['publish_msgs_per_s']:>12,.0f}  publish {r['publish_s']:.1f} s, "
                     f"avg message {r['avg_message_bytes']:.0f} B")
    lines += [
        f"{'ingest: Kafka → event store':<40}{r['ingest_s']:>10.1f}{r['ingest_eps']:>12,.0f}  {ingest_note}",
        f"{'baseline: read + decode pages':<40}{r['baseline_s']:>10.1f}{r['baseline_read_decode_eps']:>12,.0f}  "
        f"read {r['baseline_read_s']:.1f} s + decode {r['baseline_decode_s']:.1f} s, {r['baseline_pages']} pages; "
        f"other processes busy {r['baseline_other_busy_cores']:.2f} cores",
        f"{'catch-up: ALL read models':<40}{r['catch_up_s']:>10.1f}{r['all_eps']:>12,.0f}  "
        f"{r['catch_up_pages']} pages; ratio to baseline {r['ratio_to_baseline']:.3f}; "
        f"{r['all_interactions_eps']:,.0f} interaction events/s",
    ]
    for name, m in r["models"].items():
        lines.append(f"{'  apply ' + name:<40}{m['seconds']:>10.1f}{m['eps']:>12,.0f}  "
                     f"{m['seconds'] / r['catch_up_s']:.0%} of the catch-up; {m['events']:,} events"
                     + (f", {m['parked']} parked" if m["parked"] else ""))
    lines += [
        f"{'  outside apply (main thread)':<40}{r['catch_up_outside_apply_s']:>10.1f}{'':>12}  "
        f"{r['catch_up_outside_apply_s'] / r['catch_up_s']:.0%}: read + decode pages, positions, locks, commit",
        f"{'  decode (once per page, for all)':<40}{r['decode_seconds']:>10.1f}"
        f"{r['notifications'] / r['decode_seconds']:>12,.0f}  = {r['decode_seconds'] / r['catch_up_s']:.0%} of wall; "
        "on a read-ahead thread it overlaps apply",
        f"{'  CPU: this process':<40}{r['catch_up_process_cpu_s']:>10.1f}{'':>12}  "
        f"{r['catch_up_process_cpu_s'] / r['catch_up_s']:.0%} of wall (Python, psycopg, its threads); "
        f"{r['catch_up_process_cpu_us_per_event']:.0f} µs per event",
        f"{'  CPU: PostgreSQL backends of the db':<40}{r['catch_up_postgres_cpu_s']:>10.1f}{'':>12}  "
        f"{r['catch_up_postgres_cpu_s'] / r['catch_up_s']:.0%} of wall (incl. autovacuum seen); "
        f"{r['catch_up_postgres_cpu_us_per_event']:.0f} µs per event",
        f"{'  machine: cores busy (of ' + str(r['machine']['cpus']) + ')':<40}"
        f"{r['catch_up_machine_busy_cores']:>10.2f}{'':>12}  of which other processes "
        f"{r['catch_up_other_busy_cores']:.2f}",
    ]
    if "profiled_catch_up_s" in r:
        lines.append(f"{'catch-up under cProfile (not headline)':<40}{r['profiled_catch_up_s']:>10.1f}"
                     f"{r['profiled_all_eps']:>12,.0f}  {r['profile_path']}")
    elif "profile_error" in r:
        lines.append(f"catch-up under cProfile: none ({r['profile_error']})")
    lines += [
        f"memory: peak RSS of this process {r['peak_rss_mb']:.0f} MiB (catch-up alone {r['catch_up_peak_rss_mb']:.0f} "
        f"MiB, {r['catch_up_rss_before_mb']:.0f} MiB before it); read models match the store: "
        f"{r['read_models_match']}",
        "",
    ]
    if r["api"] is None:
        return "\n".join([*lines, "API: skipped (--skip-api)"])
    lines += [
        f"API ({r['api']['load_tool']})",
        f"offered {r['api']['offered_rate']:g} requests/s for {r['api']['duration_s']:g} s each, "
        f"{r['api']['connections']} connections; data {r['api']['data_first_at']} .. {r['api']['data_last_at']}",
        f"{'endpoint':<48}{'rate':>7}{'err':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'CPU ms/req':>11}",
    ]
    for load in r["api"]["loads"].values():
        label = load["label"] if len(load["label"]) <= 47 else load["label"][:44] + "..."
        lines.append(f"{label:<48}{load['achieved_rate']:>7.1f}{load['errors']:>5}{load['p50_ms']:>9.1f}"
                     f"{load['p90_ms']:>9.1f}{load['p99_ms']:>9.1f}{load['max_ms']:>9.1f}"
                     f"{load['api_cpu_ms_per_request']:>11.1f}")
        for path, f in load.get("by_path", {}).items():
            lines.append(f"{'  ' + path.split('?', 1)[1]:<48}{'':>7}{'':>5}{f['p50_ms']:>9.1f}{f['p90_ms']:>9.1f}"
                         f"{f['p99_ms']:>9.1f}{f['max_ms']:>9.1f}")
    lines.append(f"API process RSS: {r['api']['api_rss_start_mb']:.0f} MiB at start, peak "
                 f"{r['api']['api_peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None, defaults: Settings) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.projections",
        description="Load N events through ingest into a throwaway database, then measure the catch-up of all "
                    "read models from position 0 against reading and decoding the log alone, and the API's "
                    "latency at a fixed rate. The last line of output is one JSON object.",
    )
    p.add_argument("--events", type=int, default=1_000_000, help="valid interaction events (default 1000000)")
    p.add_argument("--customers", type=int, default=None, help="customers (default events/25)")
    p.add_argument("--page-size", type=int, default=defaults.projection_page_size,
                   help=f"projection events per transaction (default {defaults.projection_page_size})")
    p.add_argument("--catch-up-events", type=int, default=None, metavar="N",
                   help="events per transaction while far behind (default: the projector's own; 0: page by page)")
    p.add_argument("--database", default=DATABASE, help=f"throwaway database (default {DATABASE})")
    p.add_argument("--seed", type=int, default=7, help="data set seed (default 7)")
    p.add_argument("--rate", type=float, default=100.0, help="offered API requests per second (default 100)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per endpoint (default 20)")
    p.add_argument("--connections", type=int, default=16, help="load generator connections (default 16)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of unmeasured load at the same rate before each load (default 3)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed for ingest (default 3600)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="after the measured catch-up, catch up again under cProfile: DIR/catch_up.prof, "
                        "top 25 functions printed")
    p.add_argument("--keep", action="store_true", help="keep the bench database and topic")
    p.add_argument("--reuse", action="store_true",
                   help="skip loading if the bench database (kept with --keep) already holds the events")
    p.add_argument("--skip-api", action="store_true", help="do not measure the API")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a phase again when PostgreSQL goes away during it (default 2)")
    args = p.parse_args(argv)
    args.customers = args.customers or max(1, args.events // 25)
    if args.events < args.customers or args.customers < 1:
        p.error("need at least one customer and at least one event per customer")
    if args.database == urlsplit(defaults.database_url).path.strip("/"):
        p.error("--database must not be the application's own database")
    return args


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "loadavg_start": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    admin_settings = Settings()  # the application's database: only used to create/drop the bench one
    args = parse_args(argv, admin_settings)
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        database_url=with_dbname(admin_settings.database_url, args.database),
        topic=f"bench-{tag}", consumer_group=f"bench-{tag}", projection_page_size=args.page_size,
    )
    conninfo = bootstrap.conninfo(settings)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    started = time.perf_counter()
    clients: list[Any] = []
    store = None
    created_db = created_topic = False
    r: dict[str, Any] = {"machine": machine()}
    try:
        reuse = args.reuse and database_has_events(admin_settings, args.database)
        if args.reuse and not reuse:
            say(f"--reuse: database {args.database} holds no events; loading it")
        if reuse:
            loaded = reused(settings)
            say(f"bench: reusing database {args.database} ({loaded['events']:,} events, loaded {loaded['loaded_at']})")
            r |= {k: v for k, v in loaded.items()} | {"reused": True}
        else:
            create_database(admin_settings, args.database)
            created_db = True
            ensure_topics(settings.kafka_servers, settings.topic, settings.dead_letter_topic, partitions=PARTITIONS)
            created_topic = True
            say(f"bench: topic {settings.topic}, database {args.database}, {args.events:,} events, "
                 f"{args.customers:,} customers")
            r |= load(args, settings, clients) | {"events": args.events, "reused": False}
        r["ingest_eps"] = r["ingest_events_per_s"]
        rows, registered = _counts(conninfo)
        if registered != r["customers"] or rows != r["events"] + r["customers"]:
            raise RuntimeError(f"event store holds {rows:,} rows ({registered:,} Registered); expected "
                               f"{r['events']:,} + {r['customers']:,}")
        r["notifications"] = rows
        r["page_size"] = args.page_size
        r["vacuum_analyze_log_s"] = prepare_log(conninfo)

        store = bootstrap.interaction_log(settings)  # a fresh one: ingest's cache is not the projector's
        head = store.recorder.max_notification_id() or 0

        def measure() -> dict[str, Any]:
            return baseline(store, args.page_size, head, conninfo) | catch_up(settings, store, head, conninfo,
                                                                              args.catch_up_events)

        r |= _again_if_postgres_went_away("baseline and catch-up", measure, args.retries, settings)
        r["all_interactions_eps"] = r["events"] / r["catch_up_s"]
        r["ratio_to_baseline"] = r["all_eps"] / r["baseline_read_decode_eps"]
        r |= check_read_models(conninfo, r["events"], r["customers"])
        r["peak_rss_mb"] = max(r["peak_rss_before_catch_up_mb"], _peak_rss_mb())

        if args.skip_api:
            r["api"] = None
        else:
            analyze_read_models(settings)
            r["api"] = api_latency(settings, conninfo, args.rate, args.duration, args.connections, args.warmup)
            for name, prefix in (("stages", "stages"), ("stages_as_of", "stages_as_of"), ("trend", "trend")):
                load_figures = r["api"]["loads"][name]
                r[f"{prefix}_p50_ms"], r[f"{prefix}_p99_ms"] = load_figures["p50_ms"], load_figures["p99_ms"]
            r["api_peak_rss_mb"] = r["api"]["api_peak_rss_mb"]

        profile_text = None
        if args.profile is not None:
            try:  # optional: its failure leaves the figures above standing
                r |= _again_if_postgres_went_away("profiled catch-up", lambda: profiled_catch_up(
                    settings, store, head, args.profile, args.catch_up_events), args.retries, settings)
                profile_text = profile_report(r["profile_path"])
            except UNAVAILABLE as error:
                r["profile_error"] = f"PostgreSQL went away {args.retries + 1} times: {str(error).strip()}"
                say(f"profiled catch-up: {r['profile_error']}; no profile")
        store.close()
        store = None
        r["total_s"] = time.perf_counter() - started
        r["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]

        if profile_text:
            print(f"cProfile of the catch-up ({r['profile_path']}), top 25 by tottime:")
            print(profile_text)
            print()
        print(_table(r))
        headline = {k: r.get(k) for k in (
            "events", "customers", "notifications", "ingest_eps", "all_eps", "all_interactions_eps", "per_model_eps",
            "decode_seconds", "baseline_read_decode_eps", "ratio_to_baseline", "stages_p50_ms", "stages_p99_ms",
            "stages_as_of_p50_ms", "stages_as_of_p99_ms", "trend_p50_ms", "trend_p99_ms", "peak_rss_mb",
            "api_peak_rss_mb", "page_size", "machine")}
        print(json.dumps(_rounded(headline | {k: v for k, v in r.items() if k not in headline})), flush=True)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        ignore_signals()
        for consumer in clients:
            quietly("closing the ingest consumer", lambda c=consumer: c.consumer.close(autocommit=False))
            quietly("closing the dead-letter producer", lambda c=consumer: c.dead_letters.producer.close(timeout=10))
        if store is not None:
            quietly("closing the event store", store.close)
        if args.keep:
            say(f"kept: database {args.database}" + (f", topics {settings.topic} and {settings.dead_letter_topic}"
                                                      if created_topic else ""))
        else:
            remove_throwaways(admin_settings, settings.kafka_servers,
                              topics=[settings.topic, settings.dead_letter_topic] if created_topic else [],
                              groups=[settings.consumer_group] if created_topic else [],
                              databases=[args.database] if args.reuse or created_db else [])

if __name__ == "__main__":
    sys.exit(main())
