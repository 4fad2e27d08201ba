"""Fill a database with a large data set for the API benchmarks (`bench.lookups`).

What it does, in order (each step says how long it took; the last line is JSON):
  1. STORE, through the product's own code paths, without Kafka: the demo generator's valid
     events (tools/demo_data.py's `_Generator`, driven customer chunk by customer chunk so that
     20M events never sit in memory; no duplicates, conflicts or invalid messages) are serialised
     to JSON, validated by `domain.contract.parse_envelope` (what ingest runs), recorded on
     `Customer` aggregates and saved by the event store's `InteractionLog.save` with their
     `event_id` index rows and counters (topic `bench-load`) — the rows ingest writes, in batches
     of about 5,000 events. Skipped: Kafka, the duplicate check (the events are new by
     construction) and Kafka positions. `--heavy N` adds one customer (`heavy-000001`) with N events.
  2. PROJECT: the real projector (`services.bootstrap.projector(...).catch_up()`) builds every
     read model from position 0.
  3. COPIES (optional, `--copies K`): to reach a size the pipeline cannot build in the time at
     hand, the read-model tables are multiplied K times by SQL: every row of a table keyed by
     customer gets K-1 copies whose `customer_id` is suffixed `~2` … `~K` (so `crm-000016~3` has
     the same view, history, answers and timeline as `crm-000016`), and the per-day summed
     columns (`satisfaction_days`, `lifecycle_stage_days`) are multiplied by K. The heavy customer
     is not copied. The event store is NOT copied: it keeps the events of step 1 only (the
     lookups read the read models, never the store), and a rebuild would give back step 2's rows.
  4. VACUUM ANALYZE, then a row in `bench_scale_meta` saying what was done, read by bench.lookups.

    .venv/bin/python -m bench.load_at_scale --database rapport_scale --customers 100000 --events 2000000 \\
        --heavy 100000 [--copies 10] [--keep-store]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import create_database, say, with_dbname  # noqa: E402
from domain.contract import parse_envelope  # noqa: E402
from domain.customer import Customer, customer_id_for  # noqa: E402
from eventstore.store import EventIdRow, PartitionCounts  # noqa: E402
from projections.readmodel import Merge  # noqa: E402
from services import bootstrap  # noqa: E402
from services.settings import Settings  # noqa: E402
from tools.demo_data import _Customer, _Generator  # noqa: E402

META_TABLE = "bench_scale_meta"
LOAD_TOPIC = "bench-load"  # the `source_topic` of the event_id index rows and counters it writes
HEAVY_PREFIX = "heavy-"


class _ChunkGenerator(_Generator):
    """The demo generator for customers `first + 1 … first + n` only: ids, emails, phones and
    event ids are numbered from there, so chunks never collide."""

    def __init__(self, first: int, customers: int, events: int, events_before: int, months: float, now: datetime,
                 seed: int, prefix: str = "crm-") -> None:
        super().__init__(customers, events, months, now, seed, 0.0, 0.0, 0.0)
        self.first, self.prefix = first, prefix
        # Event ids grow by 1 or 2 per event of a source: each chunk numbers its own band of them.
        for source in self.counters:
            self.counters[source] += 2 * events_before

    def make_customers(self) -> list[_Customer]:
        result = super().make_customers()
        for c in result:
            num = self.first + c.idx + 1
            local = c.email.split("@")[0].rstrip("0123456789")
            c.email = f"{local}{num}@example.com"
            if c.id is None and self.prefix == "crm-":
                c.key = c.email
            else:
                c.id = c.key = f"{self.prefix}{num:07d}"
            c.key_bytes = c.key.encode()
        return result

    def envelopes(self) -> Iterator[bytes]:
        """The valid events of this chunk as the JSON a producer sends, in time order."""
        custs = self.make_customers()
        plan: list[tuple[int, int, int, int]] = []
        for c, count in zip(custs, self.event_counts(), strict=True):
            self.plan_customer(c, count, plan)
        plan.sort()
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        for t, ci, kind, flag in plan:
            c = custs[ci]
            env = self.build(c, t, kind, flag)
            if kind == 0 and env["data"]["direction"] == "inbound":
                c.last_call = (env["event_id"], t)
            elif kind == 2:
                c.last_purchase = (env["event_id"], t, env["data"]["order_id"])
            yield dumps(env).encode()


def chunks(customers: int, events: int, chunk: int, heavy: int) -> Iterator[tuple[int, int, int, int, str]]:
    """(customers before, customers, events, events before, id prefix) of each chunk; the heavy
    customer last."""
    per = events / customers
    done_customers = done_events = 0
    while done_customers < customers:
        n = min(chunk, customers - done_customers)
        e = max(round(per * (done_customers + n)) - done_events, n)
        yield done_customers, n, e, done_events, "crm-"
        done_customers += n
        done_events += e
    if heavy:
        yield 0, 1, heavy, done_events, HEAVY_PREFIX


def store_events(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    store = bootstrap.interaction_log(settings)
    now = datetime.now(UTC)
    stored = offset = batches = 0
    t0 = time.perf_counter()
    total = args.events + args.heavy
    try:
        with tqdm(total=total, desc="store (validate, aggregate, save)", unit="ev", file=sys.stderr) as bar:
            for number, (first, n, e, before, prefix) in enumerate(
                    chunks(args.customers, args.events, args.chunk, args.heavy)):
                generator = _ChunkGenerator(first, n, e, before, args.months, now, args.seed + number, prefix)
                customers: dict[str, Customer] = {}
                ids: list[EventIdRow] = []
                for raw in generator.envelopes():
                    envelope = parse_envelope(raw)
                    key = envelope.customer_key
                    customer = customers.get(key)
                    if customer is None:
                        customer = customers[key] = Customer(key)
                    customer.record(envelope)
                    ids.append(EventIdRow(envelope.event_id, envelope.fingerprint(), customer_id_for(key),
                                          LOAD_TOPIC, 0, offset))
                    offset += 1
                    if len(ids) >= args.batch and prefix == HEAVY_PREFIX:  # one customer: save as it grows
                        save(store, list(customers.values()), ids)
                        stored, batches = stored + len(ids), batches + 1
                        bar.update(len(ids))
                        ids = []
                if ids:
                    save(store, list(customers.values()), ids)
                    stored, batches = stored + len(ids), batches + 1
                    bar.update(len(ids))
    finally:
        store.close()
    elapsed = time.perf_counter() - t0
    return {"store_s": elapsed, "stored_events": stored, "store_eps": stored / elapsed, "store_batches": batches}


def save(store: Any, customers: list[Customer], ids: list[EventIdRow]) -> None:
    store.save(*customers, event_ids=ids, counters=[PartitionCounts(LOAD_TOPIC, 0, len(ids), 0, 0)])


def project(settings: Settings) -> dict[str, Any]:
    store = bootstrap.interaction_log(settings)
    try:
        projector = bootstrap.projector(settings, store)
        head = store.recorder.max_notification_id() or 0
        t0 = time.perf_counter()
        with tqdm(total=head, desc="project (all read models)", unit="ev", file=sys.stderr) as bar:
            def progress(position: int, _head: int) -> None:
                bar.update(position - bar.n)

            while min(projector.positions().values()) < head:
                if projector.catch_up(progress) == 0:
                    raise RuntimeError(f"catch-up stuck at {projector.positions()} of {head}")
        elapsed = time.perf_counter() - t0
    finally:
        store.close()
    return {"project_s": elapsed, "projected_events": head, "project_eps": head / elapsed}


def copy_read_models(settings: Settings, copies: int) -> dict[str, Any]:
    """Multiply the read models `copies` times (module docstring, step 3)."""
    t0 = time.perf_counter()
    rows: dict[str, int] = {}
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn:
        for model in bootstrap.read_models(settings):
            for table in model.tables:
                name = model.t(table.name)
                started = time.perf_counter()
                columns = table.column_names
                if "customer_id" in columns:
                    values = ", ".join("customer_id || '~' || k" if c == "customer_id" else f'"{c}"' for c in columns)
                    cur = conn.execute(
                        f"INSERT INTO {name} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in columns)}) "  # noqa: S608 - names from declarations
                        f"SELECT {values} FROM {name}, generate_series(2, %s) AS k "
                        f"WHERE customer_id NOT LIKE %s AND position('~' in customer_id) = 0",
                        (copies, HEAVY_PREFIX + "%"))
                else:
                    summed = [c.name for c in table.columns if c.merge is Merge.SUM]
                    cur = conn.execute(f"UPDATE {name} SET " + ", ".join(f'"{c}" = "{c}" * %s' for c in summed),  # noqa: S608 - names from declarations
                                       [copies] * len(summed))
                rows[table.name] = cur.rowcount
                say(f"copies: {table.name}: {cur.rowcount} rows in {time.perf_counter() - started:.0f} s")
    return {"copies": copies, "copy_s": time.perf_counter() - t0, "copied_rows": rows}


def vacuum_analyze(settings: Settings) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - t0


def sizes(settings: Settings) -> dict[str, Any]:
    with psycopg.connect(bootstrap.conninfo(settings)) as conn:
        customers = conn.execute("SELECT count(*) FROM customer_360").fetchone()[0]
        timeline = conn.execute("SELECT count(*) FROM timeline_events").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM rapport_events").fetchone()[0]
        database_mb = conn.execute("SELECT pg_database_size(current_database()) / 1048576").fetchone()[0]
    return {"read_model_customers": customers, "read_model_events": timeline, "event_store_rows": stored,
            "database_mb": int(database_mb)}


def write_meta(settings: Settings, result: dict[str, Any]) -> None:
    with psycopg.connect(bootstrap.conninfo(settings), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (id int PRIMARY KEY, data jsonb NOT NULL)")
        conn.execute(f"INSERT INTO {META_TABLE} VALUES (1, %s) ON CONFLICT (id) DO UPDATE "  # noqa: S608 - names from constants
                     f"SET data = {META_TABLE}.data || excluded.data",
                     (json.dumps(result),))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load_at_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database", default="rapport_scale", help="database to (re)create (default rapport_scale)")
    p.add_argument("--customers", type=int, default=100_000, help="customers generated and stored (default 100000)")
    p.add_argument("--events", type=int, default=2_000_000, help="their events (default 2000000)")
    p.add_argument("--heavy", type=int, default=100_000, help="events of one extra customer, heavy-0000001 (default "
                                                              "100000; 0: none)")
    p.add_argument("--copies", type=int, default=1, help="multiply the read models K times by SQL (default 1: no)")
    p.add_argument("--months", type=float, default=30.0, help="months of history (default 30)")
    p.add_argument("--chunk", type=int, default=250, help="customers generated and saved at a time "
                                                         "(default 250: about 5,000 events a transaction)")
    p.add_argument("--batch", type=int, default=5000, help="events per transaction for the heavy customer")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--copies-only", action="store_true", help="skip steps 1–2: the database holds them already")
    args = p.parse_args(argv)
    if args.database in ("rapport",) or args.database.startswith("rapport_test"):
        p.error(f"refusing to overwrite database {args.database!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin = Settings()
    settings = Settings(database_url=with_dbname(admin.database_url, args.database))
    result: dict[str, Any] = {"database": args.database, "customers": args.customers, "events": args.events,
                              "heavy_events": args.heavy, "heavy_customer": f"{HEAVY_PREFIX}0000001" if args.heavy
                              else None, "months": args.months, "seed": args.seed, "python": platform.python_version(),
                              "started_at": datetime.now(UTC).isoformat()}
    if not args.copies_only:
        say(f"creating database {args.database}")
        create_database(admin, args.database)
        result |= store_events(settings, args)
        say(f"stored {result['stored_events']} events in {result['store_s']:.0f} s "
             f"({result['store_eps']:.0f} events/s)")
        result |= project(settings)
        say(f"projected {result['projected_events']} events in {result['project_s']:.0f} s "
             f"({result['project_eps']:.0f} events/s)")
    if args.copies > 1:
        result |= copy_read_models(settings, args.copies)
    result["vacuum_analyze_s"] = vacuum_analyze(settings)
    result |= sizes(settings)
    write_meta(settings, result)
    say(f"read models: {result['read_model_customers']} customers, {result['read_model_events']} timeline events; "
         f"event store: {result['event_store_rows']} events; database {result['database_mb']} MB")
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
