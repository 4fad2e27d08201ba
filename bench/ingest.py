"""Benchmark: Kafka → event store (ingest) → customer_360 (projection), against raw baselines.

Publishes N valid events to a throwaway topic, then measures in one run:
  1. raw consume: a plain kafka-python consumer reading the N messages (ingest's fetch settings);
  2. ingest: the real `IngestConsumer` built by `services.bootstrap`, driven in-process;
  3. projection: the real `Projector` of customer_360 alone, `catch_up()` to the event store's head;
  4. raw COPY: psycopg 3 `COPY` of N of the stored event rows (same bytes) into a plain table,
     in transactions of the ingest batches' size.
It prints a table, the ratios, and as its LAST line one JSON object with every figure.

Isolation: topic `bench-<uuid8>` (+ its `.dlq`), consumer group `bench-<uuid8>`, database
`rapport_bench` (dropped and created); all removed at exit, also on Ctrl-C, unless --keep.
The data set is generated and published by a forked child process, so the benchmark process's
peak RSS is that of consuming, ingesting and projecting, not of holding the data set.

    .venv/bin/python -m bench.ingest [--events 200000] [--keep] [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from kafka import TopicPartition  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import (  # noqa: E402
    PARTITIONS,
    create_database,
    ignore_signals,
    json_line,
    quietly,
    remove_throwaways,
    say,
    with_dbname,
)
from consumers.ingest import kafka_consumer, kafka_producer  # noqa: E402
from services import bootstrap  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.topics import ensure_topics  # noqa: E402
from tools.demo_data import generate_demo_data  # noqa: E402

MB = 1024 * 1024


def _rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set size of this process, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the data set, in a child process ---------------------------------------------------------

def _generate_and_publish(servers: list[str], topic: str, customers: int, events: int, seed: int,
                          out: Any, clean: bool = True) -> None:
    """Child: generate the events (only valid ones when `clean`, else with the generator's
    duplicates, conflicts and invalid messages), publish them (acks=all), send the figures back."""
    try:
        t0 = time.perf_counter()
        rates = {"duplicate_rate": 0, "invalid_rate": 0, "conflict_rate": 0} if clean else {}
        data = generate_demo_data(customers=customers, events=events, seed=seed, **rates)
        generate_s = time.perf_counter() - t0
        messages = data.messages
        kinds = Counter(m.kind for m in messages)
        if data.valid_events != events or kinds["valid"] != events or (clean and len(messages) != events):
            raise RuntimeError(f"data set has {len(messages)} messages of kinds {dict(kinds)}; expected {events} valid")
        value_bytes = sum(len(m.value) for m in messages)
        key_bytes = sum(len(m.key or b"") for m in messages)
        errors: list[BaseException] = []
        producer = kafka_producer({"bootstrap_servers": servers})  # the local stack's plain listener
        t0 = time.perf_counter()
        with tqdm(total=len(messages), desc="publish", unit="msg", file=sys.stderr) as bar:
            for i, message in enumerate(messages):
                producer.send(topic, key=message.key, value=message.value).add_errback(errors.append)
                if i % 2000 == 1999:
                    bar.update(2000)
            producer.flush()
            bar.update(len(messages) - bar.n)
        publish_s = time.perf_counter() - t0
        producer.close()
        if errors:
            raise RuntimeError(f"{len(errors)} messages not acknowledged, first: {errors[0]!r}")
        out.send({
            "customers": data.customers, "messages": len(messages), "generate_s": generate_s,
            "publish_s": publish_s, "value_bytes": value_bytes, "key_bytes": key_bytes,
            "peak_rss_mb": _peak_rss_mb(), "kinds": dict(kinds),
        })
    except BaseException as error:  # noqa: BLE001 - reported by the parent
        out.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        out.close()


def publish_in_child(settings: Settings, customers: int, events: int, seed: int, clean: bool = True) -> dict[str, Any]:
    if threading.active_count() != 1:
        say(f"warning: forking with {threading.active_count()} threads alive")
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_generate_and_publish, name="bench-publisher",
                        args=(settings.kafka_servers, settings.topic, customers, events, seed, send, clean))
    child.start()
    send.close()
    try:
        try:
            result = receive.recv()
        except EOFError:
            child.join(5)
            raise RuntimeError(f"the publisher process died (exit code {child.exitcode})") from None
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join(5)
    if "error" in result:
        raise RuntimeError(f"publishing failed: {result['error']}")
    return result


# --- the phases -------------------------------------------------------------------------------

@contextmanager
def _profiled(directory: Path | None, name: str) -> Iterator[None]:
    if directory is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        directory.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(directory / f"{name}.prof")


@contextmanager
def _progress_thread(desc: str, total: int, done: Callable[[], int]) -> Iterator[None]:
    """A progress bar fed by a thread that reads a counter (for calls that report nothing)."""
    stop = threading.Event()
    with tqdm(total=total, desc=desc, unit="ev", file=sys.stderr) as bar:
        def feed() -> None:
            while not stop.wait(0.5):
                bar.update(done() - bar.n)
        thread = threading.Thread(target=feed, name="bench-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            bar.update(done() - bar.n)


def raw_consume(settings: Settings, n: int, max_poll_records: int, timeout: float) -> dict[str, Any]:
    """Phase 1: a bare kafka-python consumer (no group, ingest's fetch settings) reading all N."""
    consumer = kafka_consumer(settings.kafka_client_config, None, max_poll_records)  # type: ignore[arg-type]
    try:
        partitions = None
        deadline = time.monotonic() + 30
        while not partitions:
            partitions = consumer.partitions_for_topic(settings.topic)
            if not partitions and time.monotonic() > deadline:
                raise TimeoutError(f"no partitions for {settings.topic}")
        tps = [TopicPartition(settings.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count = value_bytes = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        with tqdm(total=n, desc="raw consume", unit="msg", file=sys.stderr) as bar:
            while count < n:
                batch = consumer.poll(timeout_ms=settings.ingest_poll_timeout_ms, max_records=max_poll_records)
                for records in batch.values():
                    count += len(records)
                    value_bytes += sum(len(r.value) for r in records)
                bar.update(count - bar.n)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw consume: {count} of {n} after {timeout:.0f} s")
        elapsed = time.perf_counter() - t0
    finally:
        consumer.close(autocommit=False)
    if count != n:
        raise RuntimeError(f"raw consume read {count} messages, expected {n}")
    return {"raw_consume_s": elapsed, "raw_consume_per_s": n / elapsed,
            "raw_consume_mb_per_s": value_bytes / MB / elapsed}


def ingest(settings: Settings, store: Any, n: int, timeout: float, profile_dir: Path | None,
           clients: list[Any], messages: int | None = None) -> dict[str, Any]:
    """Phase 3: the real ingest consumer (group member, exactly-once store), polled in-process,
    until it has consumed `messages` (default N, all valid); N of them must be stored."""
    messages = n if messages is None else messages
    consumer = bootstrap.ingest_consumer(settings, store)
    clients.append(consumer)
    # Record when the first records arrive (after the group join), without changing behaviour.
    kafka_poll = consumer.consumer.poll
    first_records_at: list[float] = []

    def poll(*args: Any, **kwargs: Any) -> Any:
        batch = kafka_poll(*args, **kwargs)
        if batch and not first_records_at:
            first_records_at.append(time.perf_counter())
        return batch

    consumer.consumer.poll = poll  # type: ignore[method-assign]
    rss_before = _rss_mb()
    consumer.subscribe()
    deadline = time.monotonic() + timeout
    with _profiled(profile_dir, "ingest"), tqdm(total=messages, desc="ingest", unit="msg", file=sys.stderr) as bar:
        t0, cpu0 = time.perf_counter(), time.process_time()
        while consumer.stats.messages < messages:
            consumer.poll_once()
            bar.update(consumer.stats.messages - bar.n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"ingest: {consumer.stats.messages} of {messages} messages after {timeout:.0f} s")
        elapsed = time.perf_counter() - t0
        # CPU of this process (ingest and kafka-python's threads): what the code costs, less
        # moved by other work on the machine than the elapsed time is.
        cpu = time.process_time() - cpu0
    stats = consumer.stats
    if stats.stored != n or stats.messages != messages or (messages == n and (stats.duplicates, stats.dead_lettered) != (0, 0)):
        raise RuntimeError(f"ingest stats unexpected: {stats}")
    join_s = first_records_at[0] - t0 if first_records_at else float("nan")
    return {
        "ingest_s": elapsed, "ingest_events_per_s": n / elapsed, "ingest_cpu_us_per_event": cpu / n * 1e6,
        "ingest_group_join_s": join_s, "ingest_events_per_s_after_join": n / (elapsed - join_s),
        "batches": stats.batches, "avg_batch_messages": stats.messages / stats.batches,
        "retried_batches": stats.retried_batches, "ingest_messages": stats.messages,
        "ingest_duplicates": stats.duplicates, "ingest_dead_lettered": stats.dead_lettered,
        "rss_before_ingest_mb": rss_before, "peak_rss_after_ingest_mb": _peak_rss_mb(),
    }


def project(settings: Settings, store: Any, n: int, profile_dir: Path | None) -> dict[str, Any]:
    """Phase 4: the projector of customer_360 alone, catch_up() until its position is the log's head."""
    runner = bootstrap.projector(settings, store, only=["customer_360"])
    head = store.recorder.max_notification_id() or 0
    with _profiled(profile_dir, "projection"), _progress_thread("projection", head, lambda: runner.applied):
        t0 = time.perf_counter()
        while min(runner.positions().values()) < head:
            if runner.catch_up() == 0:
                raise RuntimeError(f"projection stuck at {runner.positions()} of {head}")
        elapsed = time.perf_counter() - t0
    return {
        "projection_s": elapsed, "projection_notifications": runner.applied,
        "projection_notifications_per_s": runner.applied / elapsed, "projection_events_per_s": n / elapsed,
        "projection_pages": -(-runner.applied // settings.projection_page_size),
        "peak_rss_after_projection_mb": _peak_rss_mb(),
    }


def check_store_and_view(conninfo: str, n: int, customers: int) -> dict[str, Any]:
    """The event store holds N interactions + one Registered per customer; the view counts N."""
    with psycopg.connect(conninfo) as conn:
        rows, avg_state = conn.execute("SELECT count(*), avg(length(state)) FROM rapport_events").fetchone()
        view_customers, view_events = conn.execute(
            "SELECT count(*), sum(call_count + email_count + purchase_count + survey_response_count) FROM customer_360"
        ).fetchone()
        event_ids = conn.execute("SELECT count(*) FROM rapport_event_ids").fetchone()[0]
    expected = (n + customers, n, customers, n)
    if (rows, event_ids, view_customers, view_events) != expected:
        raise RuntimeError(f"store/view mismatch: events rows, event_ids, view customers, view events = "
                           f"{(rows, event_ids, view_customers, view_events)}, expected {expected}")
    return {"stored_rows": rows, "avg_state_bytes": float(avg_state)}


def raw_copy(conninfo: str, n: int, rows_per_tx: int, timeout: float) -> dict[str, Any]:
    """Phase 2: COPY N stored event rows (same bytes) into a plain table, rows_per_tx per transaction."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM rapport_events "
            "ORDER BY notification_id LIMIT %s", (n,)
        ).fetchall()
        avg_state = sum(len(r[3]) for r in rows) / len(rows)
        avg_row = sum(16 + 4 + len(r[2]) + len(r[3]) for r in rows) / len(rows)
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (id bigserial, originator_id uuid NOT NULL, "
                     "originator_version int NOT NULL, topic text NOT NULL, state bytea NOT NULL)")
        statement = "COPY bench_copy (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        deadline = time.monotonic() + timeout
        with conn.cursor() as curs, tqdm(total=n, desc="raw COPY", unit="row", file=sys.stderr) as bar:
            t0 = time.perf_counter()
            for start in range(0, n, rows_per_tx):
                with conn.transaction(), curs.copy(statement) as copy:
                    copy.set_types(["uuid", "int4", "text", "bytea"])
                    for row in rows[start:start + rows_per_tx]:
                        copy.write_row(row)
                bar.update(min(rows_per_tx, n - start))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw COPY: not done after {timeout:.0f} s")
            elapsed = time.perf_counter() - t0
        copied = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]
        conn.execute("DROP TABLE bench_copy")
    if copied != len(rows):
        raise RuntimeError(f"raw COPY stored {copied} rows, expected {len(rows)}")
    return {"raw_copy_rows": copied, "raw_copy_s": elapsed, "raw_copy_rows_per_s": copied / elapsed,
            "raw_copy_rows_per_tx": rows_per_tx, "raw_copy_avg_state_bytes": avg_state,
            "raw_copy_avg_row_bytes": avg_row}


# --- report -----------------------------------------------------------------------------------

def _table(r: dict[str, Any]) -> str:
    n = r["events"]
    lines = [
        f"Rapport ingest benchmark: {n:,} events, {r['customers']:,} customers, "
        f"{r['settings']['partitions']} partitions, max_poll_records={r['settings']['max_poll_records']}, "
        f"projection page={r['settings']['projection_page_size']}",
        f"{'phase':<34}{'seconds':>10}{'per second':>14}  notes",
        f"{'generate data set (child)':<34}{r['generate_s']:>10.2f}{'':>14}",
        f"{'publish (acks=all)':<34}{r['publish_s']:>10.2f}{r['publish_msgs_per_s']:>14,.0f}  "
        f"avg message {r['avg_message_bytes']:.0f} B value + {r['avg_key_bytes']:.0f} B key",
        f"{'raw kafka-python consume':<34}{r['raw_consume_s']:>10.2f}{r['raw_consume_per_s']:>14,.0f}  "
        f"{r['raw_consume_mb_per_s']:.1f} MiB/s",
        f"{'ingest → event store':<34}{r['ingest_s']:>10.2f}{r['ingest_events_per_s']:>14,.0f}  "
        f"{r['batches']} batches of {r['avg_batch_messages']:.0f}; group join {r['ingest_group_join_s']:.2f} s "
        f"({r['ingest_events_per_s_after_join']:,.0f}/s after it)",
        f"{'projection customer_360':<34}{r['projection_s']:>10.2f}{r['projection_events_per_s']:>14,.0f}  "
        f"{r['projection_notifications']:,} notifications incl. Registered = "
        f"{r['projection_notifications_per_s']:,.0f}/s",
        f"{'ingest + projection (sequential)':<34}{r['pipeline_s']:>10.2f}{r['pipeline_events_per_s']:>14,.0f}  "
        "not concurrent publish-to-view",
        f"{'raw psycopg COPY (binary)':<34}{r['raw_copy_s']:>10.2f}{r['raw_copy_rows_per_s']:>14,.0f}  "
        f"{r['raw_copy_rows_per_tx']} rows/tx, avg state {r['raw_copy_avg_state_bytes']:.0f} B",
        f"event store: {r['stored_rows']:,} rows (avg state {r['avg_state_bytes']:.0f} B); "
        f"peak RSS {r['peak_rss_mb']:.0f} MiB (before ingest {r['rss_before_ingest_mb']:.0f} MiB; "
        f"publisher child {r['publisher_peak_rss_mb']:.0f} MiB)",
        "",
        f"ratio ingest / raw consume        {r['ratio_ingest_vs_consume']:.3f}",
        f"ratio ingest / raw COPY           {r['ratio_ingest_vs_copy']:.3f}",
        f"ratio projection / raw COPY       {r['ratio_projection_vs_copy']:.3f}  "
        "(interaction events/s vs rows/s; the projection reads Postgres, so no consume ratio)",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None, defaults: Settings) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Publish N valid events to a throwaway topic and measure Kafka → event store → "
                    "customer_360 against a raw kafka-python consume and a raw psycopg COPY. "
                    "The last line of output is one JSON object.",
    )
    p.add_argument("--events", type=int, default=200_000, help="events to publish (default 200000)")
    p.add_argument("--customers", type=int, default=None, help="customers (default events/25)")
    p.add_argument("--max-poll-records", type=int, default=defaults.ingest_max_poll_records,
                   help=f"messages per poll = per event-store transaction (default {defaults.ingest_max_poll_records})")
    p.add_argument("--page-size", type=int, default=defaults.projection_page_size,
                   help=f"projection events per transaction (default {defaults.projection_page_size})")
    p.add_argument("--database", default="rapport_bench", help="throwaway database (default rapport_bench)")
    p.add_argument("--seed", type=int, default=7, help="data set seed (default 7)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per phase (default 1800)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="write cProfile stats of ingest and projection to DIR/{ingest,projection}.prof "
                        "(slows them down: not for the headline figures)")
    p.add_argument("--keep", action="store_true", help="keep the bench database and topic")
    args = p.parse_args(argv)
    args.customers = args.customers or max(1, args.events // 25)
    if args.events < args.customers or args.customers < 1:
        p.error("need at least one customer and at least one event per customer")
    if args.database == urlsplit(defaults.database_url).path.strip("/"):
        p.error("--database must not be the application's own database")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    admin_settings = Settings()  # the application's database: only used to create/drop the bench one
    args = parse_args(argv, admin_settings)
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        database_url=with_dbname(admin_settings.database_url, args.database),
        topic=f"bench-{tag}", consumer_group=f"bench-{tag}",
        ingest_max_poll_records=args.max_poll_records, projection_page_size=args.page_size,
    )
    n = args.events
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    started = time.perf_counter()
    clients: list[Any] = []
    store = None
    created_db = created_topic = False
    try:
        create_database(admin_settings, args.database)
        created_db = True
        ensure_topics(settings.kafka_servers, settings.topic, settings.dead_letter_topic, partitions=PARTITIONS)
        created_topic = True
        say(f"bench: topic {settings.topic}, database {args.database}, {n:,} events, {args.customers:,} customers")

        published = publish_in_child(settings, args.customers, n, args.seed)
        r: dict[str, Any] = {
            "events": n, "customers": published["customers"],
            "generate_s": published["generate_s"], "publish_s": published["publish_s"],
            "publish_msgs_per_s": n / published["publish_s"],
            "avg_message_bytes": published["value_bytes"] / n, "avg_key_bytes": published["key_bytes"] / n,
            "publisher_peak_rss_mb": published["peak_rss_mb"],
        }
        r |= raw_consume(settings, n, args.max_poll_records, args.timeout)
        store = bootstrap.interaction_log(settings)
        r |= ingest(settings, store, n, args.timeout, args.profile, clients)
        for consumer in clients:  # leave the group before the projection phase
            consumer.consumer.close(autocommit=False)
            consumer.dead_letters.producer.close(timeout=10)
        clients.clear()
        r |= project(settings, store, n, args.profile)
        r["peak_rss_mb"] = _peak_rss_mb()  # before the COPY baseline, which holds N rows in memory
        store.close()
        store = None
        conninfo = bootstrap.conninfo(settings)
        r |= check_store_and_view(conninfo, n, r["customers"])
        r |= raw_copy(conninfo, n, max(1, round(r["avg_batch_messages"])), args.timeout)

        r["pipeline_s"] = r["ingest_s"] + r["projection_s"]
        r["pipeline_events_per_s"] = n / r["pipeline_s"]
        r["ratio_ingest_vs_consume"] = r["ingest_events_per_s"] / r["raw_consume_per_s"]
        r["ratio_ingest_vs_copy"] = r["ingest_events_per_s"] / r["raw_copy_rows_per_s"]
        r["ratio_projection_vs_copy"] = r["projection_events_per_s"] / r["raw_copy_rows_per_s"]
        r["peak_rss_mb_incl_copy_baseline"] = _peak_rss_mb()
        r["settings"] = {
            "max_poll_records": settings.ingest_max_poll_records, "projection_page_size": settings.projection_page_size,
            "poll_timeout_ms": settings.ingest_poll_timeout_ms, "aggregate_cache_size": settings.aggregate_cache_size,
            "partitions": PARTITIONS, "topic": settings.topic, "database": args.database, "seed": args.seed,
            "profiled": args.profile is not None, "cpus": os.cpu_count(), "python": platform.python_version(),
        }
        r["total_s"] = time.perf_counter() - started
        print(_table(r))
        print(json_line(r), flush=True)
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
            say(f"kept: database {args.database}, topics {settings.topic} and {settings.dead_letter_topic}")
        else:
            remove_throwaways(admin_settings, settings.kafka_servers,
                              topics=[settings.topic, settings.dead_letter_topic] if created_topic else [],
                              groups=[settings.consumer_group] if created_topic else [],
                              databases=[args.database] if created_db else [])

if __name__ == "__main__":
    sys.exit(main())
