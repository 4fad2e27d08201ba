"""Benchmark: CPU time per event of each stage of ingest's work, in-process, without I/O.

The machine this runs on is often shared, so wall-clock figures swing; CPU time of this process
(`time.process_time`) does much less. Each stage runs over the same demo events, best of
`--repeat` runs, and prints µs/event; the last line is one JSON object.

  parse      `parse_envelope` (JSON decode, contract validation, canonical form, fingerprint)
  facts      the domain facts of the batch (`interaction_after`, a `Registered` per new customer)
  map        eventsourcing's mapper: facts → stored events (the transcoder's encoding)
  params     psycopg dumping the batch's parameters as ingest sends them (event_id index and
             stored events), to bytes, without a server
  baseline   decoding each message with the stdlib JSON decoder alone (the least any ingest does)

    .venv/bin/python -m bench.ingest_stages [--events 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventsourcing.application import Application  # noqa: E402
from psycopg.adapt import PyFormat, Transformer  # noqa: E402

from domain.contract import parse_envelope  # noqa: E402
from domain.customer import Customer, customer_id_for, interaction_after  # noqa: E402
from eventstore.store import store_env  # noqa: E402
from tools.demo_data import generate_demo_data  # noqa: E402

BATCH = 5000


def _best(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        result = run()
        best = min(best, time.process_time() - started)
    return best, result


def facts_of(envelopes: list[Any]) -> list[Any]:
    versions: dict[Any, int] = {}
    facts: list[Any] = []
    for envelope in envelopes:
        key = envelope.customer_key
        customer_id = customer_id_for(key)
        version = versions.get(customer_id)
        if version is None:
            customer = Customer(key)
            facts.extend(customer.collect_events())
            version = customer.version
        facts.append(interaction_after(envelope, customer_id, version))
        versions[customer_id] = version + 1
    return facts


def dump_params(stored: list[Any], envelopes: list[Any]) -> int:
    """Bytes psycopg produces for the batch's array parameters, as the recorder sends them."""
    transformer = Transformer()
    size = 0
    for start in range(0, len(stored), BATCH):
        events = stored[start:start + BATCH]
        columns = ([e.originator_id for e in events], [e.originator_version for e in events],
                   [e.topic for e in events], [e.state for e in events])
        dumped = transformer.dump_sequence(columns, [PyFormat.BINARY] * 4)
        size += sum(len(d) for d in dumped if d is not None)
    for start in range(0, len(envelopes), BATCH):
        batch = envelopes[start:start + BATCH]
        index = ([e.event_id for e in batch], [e.fingerprint() for e in batch],
                 [customer_id_for(e.customer_key) for e in batch], ["interactions"] * len(batch),
                 [0] * len(batch), list(range(len(batch))))
        dumped = transformer.dump_sequence(index, [PyFormat.BINARY] * 6)
        size += sum(len(d) for d in dumped if d is not None)
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_stages", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="demo events (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the best counts (default 3)")
    args = parser.parse_args(argv)

    data = generate_demo_data(customers=max(1, args.events // 25), events=args.events,
                              duplicate_rate=0, invalid_rate=0, conflict_rate=0)
    values = [m.value for m in data.messages]
    n = len(values)
    app: Application[Any] = Application(env={**store_env({"dbname": "", "host": "", "port": "", "user": "",
                                                          "password": ""}),
                                             "PERSISTENCE_MODULE": "eventsourcing.popo"})
    figures: dict[str, float] = {}
    figures["baseline"], _ = _best(args.repeat, lambda: [json.loads(v) for v in values])
    figures["parse"], envelopes = _best(args.repeat, lambda: [parse_envelope(v) for v in values])
    figures["facts"], facts = _best(args.repeat, lambda: facts_of(envelopes))
    figures["map"], stored = _best(args.repeat, lambda: [app.mapper.to_stored_event(f) for f in facts])
    figures["params"], _ = _best(args.repeat, lambda: dump_params(stored, envelopes))

    per_event = {stage: seconds / n * 1e6 for stage, seconds in figures.items()}
    work = sum(v for k, v in per_event.items() if k != "baseline")
    print(f"ingest stages, CPU time per event over {n:,} demo events ({len(stored) - n:,} new customers), "
          f"best of {args.repeat}")
    for stage, micros in per_event.items():
        print(f"  {stage:<9}{micros:>8.1f} µs")
    print(f"  {'total':<9}{work:>8.1f} µs  (= {1e6 / work:,.0f} events/s of CPU; "
          f"{work / per_event['baseline']:.1f}× the JSON-decode baseline)")
    print(json.dumps({"events": n, **{f"{k}_us": round(v, 2) for k, v in per_event.items()},
                      "total_us": round(work, 2), "ratio_vs_baseline": round(work / per_event["baseline"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
