"""Benchmark (issue 13): point-in-time views and chain verification at size.

Fills a throwaway database with N demo events (default 1,000,000, 50,000 customers) plus one
customer with 100,000 events, stored through the product's own event store path
(`InteractionLog.record`, as ingest does: facts from stream versions, the `event_id` index, the
hash chain), then measures:
  1. `audit verify` over the whole store (`services.audit.verify`, the command's code): events/s;
  2. `GET /customers/{id}?as_of=T` against `rapport api` (a child process), one client in a closed
     loop, for typical customers (their length between the quartiles of a random sample), for
     customers drawn at random (the long tail too) and for the 100,000-event customer: p50/p99 ms;
  3. the same for `?known_at=T`.
It prints a table and, as its LAST line, one JSON object (`verify_eps`, `as_of_p99_ms`,
`heavy_as_of_p99_ms`, ...). It never fails on a time; it is not a test.

    .venv/bin/python -m bench.audit [--events 1000000] [--quick] [--keep] [--database NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import create_database, drop_database, http_get, json_line, rapport_api, say, with_dbname  # noqa: E402
from domain.contract import parse_envelope  # noqa: E402
from domain.customer import Customer, customer_id_for, interaction_after  # noqa: E402
from eventstore.store import EventIdRow, InteractionLog, store_env  # noqa: E402
from services import audit  # noqa: E402
from services.bootstrap import read_pool  # noqa: E402
from services.settings import Settings  # noqa: E402
from tools.demo_data import generate_demo_data  # noqa: E402

BATCH = 5000
HEAVY = "heavy-audit-0001"
TOPIC = "bench-audit"  # the Kafka topic named in the event_id index (nothing is published)


def heavy_messages(n: int, now: datetime) -> list[bytes]:
    """`n` events of one customer over the last three years, all four kinds."""
    start = now - timedelta(days=3 * 365)
    step = (now - start) / n
    out = []
    for i in range(n):
        at = (start + step * i).isoformat().replace("+00:00", "Z")
        kind = ("call", "email", "purchase", "survey_response")[i % 4]
        data = {"call": {"direction": "inbound", "duration_seconds": 60 + i % 600},
                "email": {"direction": "outbound", "subject": f"update {i}"},
                "purchase": {"order_id": f"o-{i}", "amount": f"{10 + i % 90}.99", "currency": "USD"},
                "survey_response": {"kind": "nps", "score": i % 11}}[kind]
        out.append(json.dumps({"event_id": f"{HEAVY}:{i}", "type": kind, "occurred_at": at,
                               "customer": {"id": HEAVY, "name": "Heavy Buyer"}, "source": "bench",
                               "data": data}).encode())
    return out


def load(store: InteractionLog, values: list[bytes]) -> float:
    """Store the messages as ingest does, in batches; seconds taken."""
    versions: dict[uuid.UUID, int] = {}
    offset = 0
    started = time.perf_counter()
    with tqdm(total=len(values), desc="storing", unit="ev", file=sys.stderr) as bar:
        for begin in range(0, len(values), BATCH):
            envelopes = [parse_envelope(v) for v in values[begin:begin + BATCH]]
            ids = {e.customer_key: customer_id_for(e.customer_key) for e in envelopes}
            versions.update(store.stream_versions([i for i in set(ids.values()) if i not in versions]))
            facts: list[Any] = []
            rows = []
            for envelope in envelopes:
                customer_id = ids[envelope.customer_key]
                version = versions.get(customer_id)
                if version is None:
                    customer = Customer(envelope.customer_key)
                    facts.extend(customer.collect_events())
                    version = customer.version
                facts.append(interaction_after(envelope, customer_id, version))
                versions[customer_id] = version + 1
                rows.append(EventIdRow(envelope.event_id, envelope.fingerprint(), customer_id, TOPIC, 0, offset))
                offset += 1
            store.record(facts, event_ids=rows)
            bar.update(len(envelopes))
    return time.perf_counter() - started


def timed_gets(port: int, paths: list[str]) -> list[float]:
    """Milliseconds of each GET, one after another on new connections; every answer must be 200."""
    times = []
    for path in paths:
        started = time.perf_counter()
        status, body = http_get(port, path)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return times


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "n": len(ordered)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="demo events (default 1000000)")
    parser.add_argument("--customers", type=int, default=None, help="customers (default events/20)")
    parser.add_argument("--heavy", type=int, default=100_000, help="events of the heavy customer (default 100000)")
    parser.add_argument("--requests", type=int, default=300, help="as_of requests per set of customers (default 300)")
    parser.add_argument("--heavy-requests", type=int, default=20, help="as_of requests for the heavy one (default 20)")
    parser.add_argument("--quick", action="store_true", help="100,000 events, a heavy customer of 20,000")
    parser.add_argument("--database", help="use (and keep) this database; filled only if empty")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--port", type=int, default=8791, help="port of the API child (default 8791)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.heavy = 100_000, 20_000
    args.customers = args.customers or max(1, args.events // 20)
    return args


def fill(store: InteractionLog, conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Store the demo events and the heavy customer's, unless the database holds events already."""
    if audit.events_estimate(conn) != 0:
        return {}
    now = datetime.now(UTC).replace(microsecond=0)
    say(f"bench: generating {args.events:,} demo events of {args.customers:,} customers and "
        f"{args.heavy:,} of one customer")
    data = generate_demo_data(customers=args.customers, events=args.events, now=now, seed=13,
                              duplicate_rate=0, invalid_rate=0, conflict_rate=0)
    values = [m.value for m in data.messages] + heavy_messages(args.heavy, now)
    random.Random(13).shuffle(values)  # the heavy customer's events among the others
    seconds = load(store, values)
    conn.execute("VACUUM ANALYZE rapport_events")
    return {"store_s": seconds, "store_eps": len(values) / seconds}


def time_verify(settings: Settings, events: int) -> dict[str, Any]:
    """`audit verify` over the whole store, as `rapport audit verify` runs it (two connections)."""
    with read_pool(settings, max_size=2, timeout=30) as pool, \
            tqdm(total=events, desc="audit verify", unit="ev", file=sys.stderr) as bar:
        started = time.perf_counter()
        verified = audit.verify(pool, progress=bar.update, workers=2)
        seconds = time.perf_counter() - started
    return {"verify_s": seconds, "verify_eps": verified.events_checked / seconds, "verify_ok": verified.ok,
            "verify_events": verified.events_checked, "verify_streams": verified.streams_checked}


Sample = list[tuple[str, datetime, int]]


def sample_customers(conn: Any, n: int) -> tuple[Sample, Sample]:
    """Customers drawn from the store, each with the time of its first recorded interaction
    (position 2, to ask about moments when it already existed) and its stream's length: all of
    them, and the typical ones, those whose length lies between the sample's quartiles. The demo's
    sizes have a long tail (median ~25 events, the top 1% 200-470): a p99 over all customers is
    the first read of that tail's streams."""
    drawn = [(r["k"], datetime.fromisoformat(r["at"]), r["n"]) for r in conn.execute(
        "SELECT s ->> 'customer_key' AS k, (SELECT convert_from(e.state, 'UTF8')::jsonb #>> "
        "'{occurred_at,_data_}' FROM rapport_events e WHERE e.originator_id = r.originator_id "
        "AND e.originator_version = 2) AS at, (SELECT max(originator_version) FROM rapport_events e "
        "WHERE e.originator_id = r.originator_id) AS n FROM (SELECT originator_id, "
        "convert_from(state, 'UTF8')::jsonb AS s FROM rapport_events WHERE originator_version = 1 LIMIT %s) r",
        (n,)).fetchall() if r["k"] != HEAVY]
    sizes = sorted(size for _, _, size in drawn)
    low, high = sizes[len(sizes) // 4], sizes[3 * len(sizes) // 4]
    return drawn, [c for c in drawn if low <= c[2] <= high]


def time_points(settings: Settings, args: argparse.Namespace, drawn: Sample, typical: Sample) -> dict[str, Any]:
    """p50/p99 of `?as_of` and `?known_at` for typical customers, of `?as_of` for customers drawn
    at random, and of both for the heavy one, through `rapport api`."""
    result: dict[str, Any] = {}
    rng = random.Random(5)
    now = datetime.now(UTC)

    def moment(since: datetime) -> str:  # a time between `since` and now
        return (since + (now - since) * rng.random()).isoformat().replace("+00:00", "Z")

    def paths(param: str, customers: Sample) -> list[str]:
        # as_of: a moment of the customer's life; known_at: now (the events were all recorded
        # by the load moments ago, so an earlier time would know nothing).
        return [f"/customers/{quote(key, safe='')}?{param}="
                + quote(moment(since + timedelta(seconds=1)) if param == "as_of" else moment(now))
                for key, since, _ in (rng.choice(customers) for _ in range(args.requests))]

    env = {"RAPPORT_DATABASE_URL": settings.database_url, "RAPPORT_API_WORKERS": "1",
           "RAPPORT_LOG_LEVEL": "WARNING", "RAPPORT_API_PORT": str(args.port)}
    with rapport_api(env, args.port, Path(f"/tmp/bench-audit-api-{os.getpid()}.log")):
        timed_gets(args.port, paths("as_of", drawn)[:10])  # warm-up
        # The baseline: the cheapest route on the same server and client, new connections alike.
        result["health"] = percentiles(timed_gets(args.port, ["/health"] * args.requests))
        for param in ("as_of", "known_at"):
            result[param] = percentiles(timed_gets(args.port, paths(param, typical)))
            heavy = [f"/customers/{HEAVY}?{param}={quote(moment(now - timedelta(days=30 if param == 'as_of' else 0)))}"
                     for _ in range(args.heavy_requests)]
            result[f"heavy_{param}"] = percentiles(timed_gets(args.port, heavy))
        result["any_as_of"] = percentiles(timed_gets(args.port, paths("as_of", drawn)))
    sizes = sorted(size for _, _, size in drawn)
    result["typical_events"] = [min(c[2] for c in typical), max(c[2] for c in typical)]
    result["any_events"] = {"median": sizes[len(sizes) // 2], "p99": sizes[int(len(sizes) * 0.99)], "max": sizes[-1]}
    return result


def report(result: dict[str, Any], heavy: int) -> None:
    """The table, then the JSON last line."""
    print(f"audit at size: {result['events']:,} stored events, a customer with {heavy:,}, {os.cpu_count()} CPUs")
    print(f"  audit verify            {result['verify_eps']:>10,.0f} events/s  ({result['verify_s']:.1f} s, "
          f"{'every chain holds' if result['verify_ok'] else 'BROKEN'})")
    low, high = result["typical_events"]
    print(f"  typical customers: {low}-{high} events (the sample's quartiles)")
    for param in ("as_of", "known_at"):
        t, h = result[param], result[f"heavy_{param}"]
        print(f"  ?{param:<9} typical      p50 {t['p50_ms']:7.1f} ms  p99 {t['p99_ms']:7.1f} ms  ({t['n']} requests)")
        print(f"  ?{param:<9} {heavy:,} events  p50 {h['p50_ms']:7.1f} ms  p99 {h['p99_ms']:7.1f} ms  "
              f"({h['n']} requests)")
    b = result["health"]
    print(f"  /health    baseline     p50 {b['p50_ms']:7.1f} ms  p99 {b['p99_ms']:7.1f} ms  ({b['n']} requests; "
          f"typical as_of p99 = {result['as_of']['p99_ms'] / b['p99_ms']:.1f}x)")
    a, sizes = result["any_as_of"], result["any_events"]
    print(f"  ?as_of     any customer p50 {a['p50_ms']:7.1f} ms  p99 {a['p99_ms']:7.1f} ms  ({a['n']} requests; "
          f"events: median {sizes['median']}, p99 {sizes['p99']}, max {sizes['max']})")
    result |= {"as_of_p50_ms": result["as_of"]["p50_ms"], "as_of_p99_ms": result["as_of"]["p99_ms"],
               "heavy_as_of_p50_ms": result["heavy_as_of"]["p50_ms"],
               "heavy_as_of_p99_ms": result["heavy_as_of"]["p99_ms"],
               "known_at_p99_ms": result["known_at"]["p99_ms"],
               "heavy_known_at_p99_ms": result["heavy_known_at"]["p99_ms"],
               "any_as_of_p99_ms": result["any_as_of"]["p99_ms"], "health_p99_ms": result["health"]["p99_ms"]}
    print(json_line(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    admin = Settings()
    args = parse_args(argv)
    name = args.database or f"rapport_bench_audit_{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=with_dbname(admin.database_url, name))
    owned = args.database is None
    with psycopg.connect(admin.database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if not exists:
        create_database(admin, name)
    result: dict[str, Any] = {"database": name}
    try:
        store = InteractionLog(env=store_env(settings.database))
        with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn:
            result |= fill(store, conn, args)
            result["events"] = audit.events_estimate(conn)
            result |= time_verify(settings, result["events"])
            drawn, typical = sample_customers(conn, max(args.requests, 1) * 3)
        store.close()
        result |= time_points(settings, args, drawn, typical)
        report(result, args.heavy)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if owned and not args.keep:
            drop_database(admin, name)
        elif owned:
            say(f"kept: database {name} (reuse with --database {name})")


if __name__ == "__main__":
    sys.exit(main())
