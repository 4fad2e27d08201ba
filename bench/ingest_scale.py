"""Benchmark (issue 12, target 1): ingest against the bare pipeline, one and several processes.

Publishes N valid demo events to a throwaway topic (6 partitions), then measures in one run:
  1. bare pipeline, one process: kafka-python consume + contract validation (`parse_envelope`)
     + binary COPY of one row per event + an upsert of each partition's offset, one transaction
     per poll: the least any exactly-once ingest into PostgreSQL does (the baseline);
  2. `rapport ingest`, one process, into an empty event store;
  3. `rapport ingest`, P processes in one consumer group (the product's scale-out), into another
     empty event store.
Ingest runs as the real command in child processes; time runs from their start until the event
store's stored offsets reach the end of the topic, and each child's RSS is sampled every 0.5 s.
The last line is one JSON object (`ingest_eps`, `ingest_ratio`, `ingest_processes`, ...).

Throwaway names: topic `bench-scale-<uuid8>`, databases `rapport_bench_scale_{bare,one,many}`,
all dropped at exit (also on Ctrl-C) unless --keep.

    .venv/bin/python -m bench.ingest_scale [--events 2000000] [--processes 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

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
    remove_throwaways,
    say,
    with_dbname,
)
from bench.ingest import publish_in_child  # noqa: E402
from consumers.ingest import kafka_consumer  # noqa: E402
from domain.contract import parse_envelope  # noqa: E402
from domain.customer import customer_id_for  # noqa: E402
from services import bootstrap  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.topics import ensure_topics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bare_pipeline(settings: Settings, n: int, max_poll_records: int, timeout: float) -> dict[str, Any]:
    """Phase 1: consume + validate + COPY + offsets, one transaction per poll, one process."""
    consumer = kafka_consumer(settings.kafka_client_config, None, max_poll_records)  # type: ignore[arg-type]
    partitions = sorted(consumer.partitions_for_topic(settings.topic) or [])
    tps = [TopicPartition(settings.topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    copy_sql = "COPY bare_events (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
    offsets_sql = ("INSERT INTO bare_offsets AS o (partition, last_offset) SELECT * FROM unnest(%b::int4[], %b::int8[]) "
                   "ON CONFLICT (partition) DO UPDATE SET last_offset = EXCLUDED.last_offset "
                   "WHERE o.last_offset < EXCLUDED.last_offset")
    with psycopg.connect(bootstrap.conninfo(settings)) as conn:
        conn.execute("CREATE TABLE bare_events (originator_id uuid NOT NULL, originator_version int8 NOT NULL, "
                     "topic text NOT NULL, state bytea NOT NULL, notification_id bigserial, "
                     "PRIMARY KEY (originator_id, originator_version))")
        conn.execute("CREATE TABLE bare_offsets (partition int4 PRIMARY KEY, last_offset int8 NOT NULL)")
        conn.commit()
        count = 0
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        with conn.cursor() as curs, tqdm(total=n, desc="bare pipeline", unit="ev", file=sys.stderr) as bar:
            while count < n:
                batch = consumer.poll(timeout_ms=settings.ingest_poll_timeout_ms, max_records=max_poll_records)
                records = [r for tp in sorted(batch, key=lambda tp: tp.partition) for r in batch[tp]]
                if not records:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"bare pipeline: {count} of {n} after {timeout:.0f} s")
                    continue
                last: dict[int, int] = {}
                with curs.copy(copy_sql) as copy:
                    copy.set_types(["uuid", "int8", "text", "bytea"])
                    for record in records:
                        envelope = parse_envelope(record.value)
                        # version = offset: unique per partition, as a stream version is per customer
                        copy.write_row((customer_id_for(envelope.customer_key), record.offset * PARTITIONS
                                        + record.partition, envelope.type, record.value))
                        last[record.partition] = record.offset
                curs.execute(offsets_sql, (list(last), list(last.values())))
                conn.commit()
                count += len(records)
                bar.update(len(records))
        elapsed = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM bare_events").fetchone()[0]  # type: ignore[index]
    consumer.close(autocommit=False)
    if stored != n:
        raise RuntimeError(f"bare pipeline stored {stored} rows, expected {n}")
    return {"bare_s": elapsed, "bare_eps": n / elapsed}


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = kafka_consumer(settings.kafka_client_config, None, 1)  # type: ignore[arg-type]
    try:
        partitions = [TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic) or []]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close(autocommit=False)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_ingest(settings: Settings, processes: int, n: int, timeout: float) -> dict[str, Any]:
    """Phases 2 and 3: `rapport ingest` × `processes` until the stored offsets reach the topic's end."""
    targets = end_offsets(settings)
    env = {**os.environ, "RAPPORT_DATABASE_URL": settings.database_url, "RAPPORT_TOPIC": settings.topic,
           "RAPPORT_DLQ_TOPIC": settings.dead_letter_topic, "RAPPORT_CONSUMER_GROUP": settings.consumer_group,
           "RAPPORT_LOG_LEVEL": "WARNING"}
    rapport = str(ROOT / ".venv" / "bin" / "rapport")
    store = bootstrap.interaction_log(settings)  # creates the tables before the children race to
    started = time.perf_counter()
    children = [subprocess.Popen([rapport, "ingest"], env=env, stdout=subprocess.DEVNULL) for _ in range(processes)]
    rss: dict[int, list[float]] = {child.pid: [] for child in children}
    first_stored_at: float | None = None
    try:
        with tqdm(total=n, desc=f"ingest ×{processes}", unit="ev", file=sys.stderr) as bar:
            while True:
                for child in children:
                    if child.poll() is not None:
                        raise RuntimeError(f"rapport ingest (pid {child.pid}) exited with {child.returncode}")
                    if (mb := _rss_mb(child.pid)) is not None:
                        rss[child.pid].append(mb)
                stored = store.interactions.kafka_positions(settings.topic, targets)
                done = sum(stored.get(p, -1) + 1 for p in targets)
                bar.update(done - bar.n)
                if done and first_stored_at is None:
                    first_stored_at = time.perf_counter()
                if all(end == 0 or stored.get(p, -1) + 1 >= end for p, end in targets.items()):
                    break
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"ingest ×{processes}: {done} of {n} after {timeout:.0f} s")
                time.sleep(0.5)
        elapsed = time.perf_counter() - started
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        codes = [child.wait(timeout=60) for child in children]
        counters = store.interactions.ingest_counters(settings.topic)
        store.close()
    if any(codes):
        raise RuntimeError(f"rapport ingest exit codes {codes}")
    if counters["stored"] != n:
        raise RuntimeError(f"ingest ×{processes} stored {counters['stored']} events, expected {n}")
    samples = [s for series in rss.values() for s in series]
    steady = [series[len(series) // 2:] for series in rss.values() if series]
    return {
        "s": elapsed, "eps": n / elapsed,
        "eps_after_first_batch": n / (elapsed - (first_stored_at - started)) if first_stored_at else None,
        "rss_mb_max": max(samples, default=0.0),
        "rss_mb_second_half_spread": max((max(s) - min(s) for s in steady), default=0.0),
    }


def main(argv: list[str] | None = None) -> int:
    admin = Settings()
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events (default 2000000)")
    parser.add_argument("--customers", type=int, default=None, help="customers (default events/20)")
    parser.add_argument("--processes", type=int, default=2, help="ingest processes of phase 3 (default 2)")
    parser.add_argument("--max-poll-records", type=int, default=admin.ingest_max_poll_records,
                        help=f"messages per poll = per transaction (default {admin.ingest_max_poll_records})")
    parser.add_argument("--quick", action="store_true", help="200,000 events")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per phase")
    parser.add_argument("--keep", action="store_true", help="keep the topic and databases")
    args = parser.parse_args(argv)
    n = 200_000 if args.quick else args.events
    customers = args.customers or max(1, n // 20)
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-scale-{tag}"
    databases = {phase: f"rapport_bench_scale_{phase}" for phase in ("bare", "one", "many")}

    def settings_for(phase: str) -> Settings:
        return Settings(database_url=with_dbname(admin.database_url, databases[phase]), topic=topic,
                        consumer_group=f"{topic}-{phase}", ingest_max_poll_records=args.max_poll_records)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    created: list[str] = []
    base = settings_for("bare")
    try:
        for name in databases.values():
            create_database(admin, name)
            created.append(name)
        ensure_topics(base.kafka_servers, topic, base.dead_letter_topic, partitions=PARTITIONS)
        say(f"bench: topic {topic}, {n:,} events, {customers:,} customers")
        published = publish_in_child(base, customers, n, seed=11)
        r: dict[str, Any] = {"events": n, "customers": published["customers"],
                             "publish_eps": n / published["publish_s"]}
        r |= bare_pipeline(base, n, args.max_poll_records, args.timeout)
        one = run_ingest(settings_for("one"), 1, n, args.timeout)
        many = run_ingest(settings_for("many"), args.processes, n, args.timeout)
        r |= {f"one_{k}": v for k, v in one.items()} | {f"many_{k}": v for k, v in many.items()}
        best = many if many["eps"] >= one["eps"] else one
        r |= {
            "ingest_eps": best["eps"], "ingest_processes": args.processes if best is many else 1,
            "ingest_ratio": best["eps"] / r["bare_eps"], "one_process_ratio": one["eps"] / r["bare_eps"],
            "ingest_rss_mb_max": max(one["rss_mb_max"], many["rss_mb_max"]),
        }
        print(f"ingest at scale: {n:,} events, {r['customers']:,} customers, {PARTITIONS} partitions, "
              f"{args.max_poll_records} messages per transaction, {os.cpu_count()} CPUs")
        print(f"  bare pipeline (baseline)  {r['bare_eps']:>10,.0f} events/s")
        print(f"  ingest, 1 process         {one['eps']:>10,.0f} events/s  ratio {r['one_process_ratio']:.2f}  "
              f"RSS max {one['rss_mb_max']:.0f} MB")
        print(f"  ingest, {args.processes} processes       {many['eps']:>10,.0f} events/s  ratio "
              f"{many['eps'] / r['bare_eps']:.2f}  RSS max {many['rss_mb_max']:.0f} MB per process")
        print(json_line(r), flush=True)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        ignore_signals()
        if args.keep:
            say(f"kept: topic {topic}, databases {', '.join(created)}")
        else:
            remove_throwaways(admin, base.kafka_servers, topics=[topic, base.dead_letter_topic],
                              groups=[f"{topic}-{phase}" for phase in databases], databases=created)


if __name__ == "__main__":
    sys.exit(main())
