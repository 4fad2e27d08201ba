"""`rapport audit ...`: re-check the hash chains, keep the chain heads, read a customer's chain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.settings import Settings

EXIT_BROKEN = 1


def add_parser(sub: Any, epilog: str) -> None:
    p = sub.add_parser(
        "audit", help="tamper evidence: verify the hash chains, keep the chain heads",
        description="Every stored event carries a hash over its stored bytes, chained to the previous event of "
        "its customer. These commands re-check the chains and keep their heads outside the database.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "verify", help="re-check every chain (or one customer's); exit 1 if any is broken",
        description="Recomputes every stored event's hash in PostgreSQL, cross-checks each customer's events "
        "against the event_id index, and reports each altered, removed, reordered or inserted event with its "
        "customer and position. With --heads, also checks that every chain head kept earlier is still stored "
        "unchanged (which catches a chain rewritten whole). Exit code 0 when everything holds, 1 otherwise.")
    a.add_argument("--customer", metavar="ID", help="check only this customer (its customer.id, email or phone)")
    a.add_argument("--heads", type=Path, metavar="FILE", help="chain heads kept by `rapport audit heads --output`")
    a.add_argument("--json", action="store_true", help="print the result as JSON (as GET /audit/verify)")
    a.add_argument("--workers", type=int, default=2, metavar="N",
                   help="PostgreSQL connections checking side by side (default 2; about one core each)")
    a.set_defaults(func=cmd_verify)
    a = actions.add_parser(
        "heads", help="write every chain head (and their digest) to keep outside the database",
        description="Writes one JSON line per customer stream (stream_id, position, hash), then prints the SHA-256 "
        "digest of them all. Keep the file, or publish the digest, somewhere the database's writers cannot "
        "reach; `rapport audit verify --heads FILE` later proves that nothing recorded by then was rewritten.")
    a.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the heads here (default: digest only)")
    a.set_defaults(func=cmd_heads)
    a = actions.add_parser(
        "export", help="write one customer's evidence: stored events with hashes and recorded times, and the view",
        description="Writes every stored event of the customer in stream order (position, event_id, type, "
        "occurred_at, recorded_at, hash, previous_hash, data) with `included` saying whether it counts at the "
        "moment asked, whether its chain holds, and the view built from the included events (GET /customers/{id} "
        "with the same as_of/known_at). jsonl: a header line, one line per event, a last line with the view. "
        "csv: one row per event; the view is the last row (type `view`, JSON in `data`). Every event is written, "
        "so the chain can be re-checked from the file alone.")
    a.add_argument("customer", metavar="CUSTOMER", help="the customer's id (its customer.id, email or phone)")
    a.add_argument("--as-of", metavar="T", help="the view from the events that occurred by T, evaluated at T")
    a.add_argument("--known-at", metavar="T", help="the view from the events Rapport had recorded by T")
    a.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="default jsonl")
    a.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here (default: standard output)")
    a.set_defaults(func=cmd_export)


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from services import audit
    from services.bootstrap import interaction_log, read_pool

    interaction_log(settings).close()  # the event store's tables, linked if made before the hash chain
    kept = _read_heads(args.heads) if args.heads else []
    with read_pool(settings, max_size=args.workers, timeout=30) as pool:
        with pool.connection() as conn:
            total = 1 if args.customer else audit.events_estimate(conn)
        with tqdm(total=total, unit="ev", desc="verifying", file=sys.stderr, disable=args.json or None) as bar:
            result = audit.verify(pool, args.customer, progress=bar.update, workers=args.workers)
        if args.customer and result.streams_checked == 0:
            print(f"rapport audit verify: no customer with id {args.customer!r}", file=sys.stderr)
            return 2
        if kept:
            with pool.connection() as conn:
                result.broken.extend(audit.check_heads(conn, kept))
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(f"checked {result.events_checked:,} events of {result.streams_checked:,} customers"
              + (f" and {len(kept):,} kept chain heads" if kept else "")
              + (": every chain holds" if result.ok else f": {len(result.broken)} broken"))
        for f in result.broken:
            print(f"  {f.customer_id or f.originator_id} position {f.position}: {f.problem}: {f.detail}")
    return 0 if result.ok else EXIT_BROKEN


def cmd_heads(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from services import audit
    from services.bootstrap import interaction_log, read_pool

    interaction_log(settings).close()  # the event store's tables, linked if made before the hash chain
    out = args.output.open("w") if args.output else None
    heads: list[dict[str, Any]] = []
    try:
        with read_pool(settings, max_size=1, timeout=30) as pool, pool.connection() as conn, \
                tqdm(unit=" streams", desc="chain heads", file=sys.stderr) as bar:
            for head in audit.heads(conn):
                if head["hash"] is None:
                    print("rapport audit heads: some stored events have no hash (written outside Rapport's ingest); "
                          "`rapport audit verify` names them", file=sys.stderr)
                    return 2
                heads.append(head)
                if out is not None:
                    out.write(json.dumps(head) + "\n")
                bar.update()
    finally:
        if out is not None:
            out.close()
    digest = audit.heads_digest(heads)
    print(f"{len(heads):,} chain heads, {sum(h['position'] for h in heads):,} events; digest sha256:{digest}")
    if args.output:
        print(f"written to {args.output}; check later with: rapport audit verify --heads {args.output}")
    return 0


def _read_heads(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise SystemExit(f"rapport audit verify: cannot read chain heads from {path}: {error}") from None


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from fastapi import HTTPException

    from projections.point_in_time import PointInTime
    from services import audit
    from services.bootstrap import interaction_log, read_pool
    from services.http import identity, params

    identity.name_identifiers_with(settings.matching_key(), settings.default_phone_region)  # as the API's view does
    try:
        as_of = params.instant_if_given("as_of", args.as_of)
        known_at = params.instant_if_given("known_at", args.known_at)
    except HTTPException as error:
        print(f"rapport audit export: {error.detail}", file=sys.stderr)
        return 2
    if as_of is None and known_at is None:
        known_at = params.utc_now()  # the view as it stands now
    point = PointInTime(as_of, known_at)
    store = interaction_log(settings)
    try:
        with read_pool(settings, max_size=1, timeout=30) as pool, pool.connection() as conn:
            evidence = audit.export(conn, store, settings, args.customer, point)
    finally:
        store.close()
    if evidence is None:
        print(f"rapport audit export: no customer with id {args.customer!r}", file=sys.stderr)
        return 2
    out = args.output.open("w", newline="") if args.output else sys.stdout
    try:
        (audit.write_csv if args.format == "csv" else audit.write_jsonl)(evidence, out)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"{len(evidence.events)} events ({sum(e['included'] for e in evidence.events)} included), chain "
              f"{'holds' if evidence.chain_ok else 'BROKEN'}, view {'written' if evidence.view else 'none (unknown then)'}"
              f": {args.output}", file=sys.stderr)
    return 0
