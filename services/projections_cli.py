"""`rapport projections ...`: status, parked events, retrying them, blue/green rebuilds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from projections.catalog import READ_MODELS
from services.settings import Settings


def add_parser(sub: Any, epilog: str) -> None:
    names = ", ".join(READ_MODELS)
    p = sub.add_parser(
        "projections", help="read models: status, parked events, retry, blue/green rebuild",
        description=f"Look after the read models ({names}).", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("status", help="position, lag and parked events of each read model")
    a.set_defaults(func=cmd_status)
    a = actions.add_parser("parked", help="list the events a read model failed on, with the error",
                           description="Lists parked events (oldest first) with the read model, the error and the "
                           "stored event. A parked event is left out of that read model only, until retried.")
    a.add_argument("name", nargs="?", choices=list(READ_MODELS), help="only this read model")
    a.set_defaults(func=cmd_parked)
    a = actions.add_parser("retry", help="apply parked events again (after fixing their cause)",
                           description="Applies each parked event to its read model again; those that still fail "
                           "stay parked with the new error. Exit code 1 if any stay parked.")
    a.add_argument("name", nargs="?", choices=list(READ_MODELS), help="only this read model")
    a.set_defaults(func=cmd_retry)
    a = actions.add_parser(
        "rebuild", help="build a fresh copy from position 0 beside the live one, compare, swap",
        description="Builds a fresh copy of the read model in schema rapport_rebuild from the whole event store "
        "(progress bar and ETA), catches it up to the head, prints how it differs from the live copy (rows added, "
        "removed, changed, with examples), then swaps it in atomically. The API answers from the live copy until "
        "the swap. This is how a changed read model (new column, fixed rule, new settings) is rolled out.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name", choices=list(READ_MODELS), help="the read model to rebuild")
    a.add_argument("--no-swap", action="store_true",
                   help="build and compare only: the live copy stays; the new one stays in schema rapport_rebuild")
    a.set_defaults(func=cmd_rebuild)


def add_replay_parser(sub: Any, epilog: str) -> None:
    names = ", ".join(READ_MODELS)
    p = sub.add_parser(
        "replay", help="build a read model as it stood at a past moment, in a schema of its own",
        description="Builds the read model (or `all`) from the events Rapport had recorded by --known-at, with the "  # noqa: S608 - help text, not SQL
        "same runner and handlers as the live one, into tables of schema --schema beside the live tables, for "
        "comparison in SQL, e.g.\n  SELECT * FROM public.customer_360 EXCEPT SELECT * FROM audit_2026.customer_360;\n"
        "An earlier replay in that schema is replaced. The live read models are not touched. Drop the schema when "
        f"done. Read models: {names}.", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=[*READ_MODELS, "all"], help="the read model to replay, or all")
    p.add_argument("--known-at", required=True, metavar="T",
                   help="RFC 3339 time with a UTC offset (or a date: its midnight UTC); events recorded later are left out")
    p.add_argument("--schema", required=True, metavar="S", help="schema for the replayed tables (made if missing)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from fastapi import HTTPException
    from tqdm import tqdm

    from projections.rebuild import build_copy, side_schema_problem
    from services.bootstrap import interaction_log, projector
    from services.http import params

    if problem := side_schema_problem(args.schema):
        print(f"rapport replay: --schema {args.schema!r} {problem}", file=sys.stderr)
        return 2
    try:
        known_at = params.instant("known_at", args.known_at)
    except HTTPException as error:
        print(f"rapport replay: {error.detail}", file=sys.stderr)
        return 2
    names = list(READ_MODELS) if args.name == "all" else [args.name]
    store = interaction_log(settings)
    try:
        head = store.recorder.max_notification_id() or 0
        for name in names:
            copy = projector(settings, store, only=[name], schema=args.schema)
            copy.admits = lambda event: event.timestamp <= known_at  # recorded by then
            with tqdm(total=head, desc=f"replaying {name}", unit="ev", file=sys.stderr) as bar:
                def progress(position: int, target: int) -> None:
                    bar.total = max(bar.total or 0, target)
                    bar.update(position - bar.n)

                build_copy(copy, progress)
            print(f"{name}: as Rapport knew it at {params.rfc3339(known_at)}, in schema {args.schema}: "
                  + ", ".join(f"{args.schema}.{t.name}" for t in copy.models[0].tables))
    finally:
        store.close()
    return 0


def _names(args: argparse.Namespace) -> list[str]:
    return [args.name] if getattr(args, "name", None) else list(READ_MODELS)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from projections.status import projection_status
    from services.bootstrap import read_pool

    with read_pool(settings, max_size=1) as pool, pool.connection() as conn:
        items = projection_status(conn, list(READ_MODELS))
    print(f"{'read model':<14} {'position':>10} {'head':>10} {'lag':>8} {'lag s':>8} {'parked':>7}")
    for i in items:
        print(f"{i['name']:<14} {i['position']:>10} {i['head']:>10} {i['lag']:>8} {i['lag_seconds']:>8.1f} "
              f"{i['parked']:>7}")
    return 0


def cmd_parked(args: argparse.Namespace, settings: Settings) -> int:
    from projections.status import parked_events
    from services.bootstrap import read_pool

    with read_pool(settings, max_size=1) as pool, pool.connection() as conn:
        rows = parked_events(conn, _names(args))
    for row in rows:
        print(f"{row['read_model']} notification {row['notification_id']} (customer stream {row['originator_id']} "
              f"v{row['originator_version']}, parked {row['parked_at']:%Y-%m-%d %H:%M:%S}, {row['attempts']} "
              f"attempt(s))\n  error: {row['error']}\n  event: {row['event'][:500]}")
    print(f"{len(rows)} parked event(s)", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import interaction_log, projector

    store = interaction_log(settings)
    try:
        applied, still = projector(settings, store, only=_names(args)).retry_parked()
    finally:
        store.close()
    print(f"{applied} parked event(s) applied, {still} still parked")
    return 1 if still else 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import interaction_log

    store = interaction_log(settings)
    try:
        report = rebuild(settings, store, args.name, swap=not args.no_swap)
    finally:
        store.close()
    print_report(report)
    return 0


def rebuild(settings: Settings, store: Any, name: str, swap: bool = True) -> Any:
    """Build a fresh copy of the read model with a progress bar and ETA, compare, swap."""
    from tqdm import tqdm

    from projections.rebuild import REBUILD_SCHEMA, build_copy, compare_and_swap
    from services.bootstrap import projector

    copy = projector(settings, store, only=[name], schema=REBUILD_SCHEMA)
    live = projector(settings, store, only=[name], check_versions=False)
    head = store.recorder.max_notification_id() or 0
    with tqdm(total=head, desc=f"rebuilding {name}", unit="ev", file=sys.stderr) as bar:
        def progress(position: int, target: int) -> None:
            bar.total = max(bar.total or 0, target)
            bar.update(position - bar.n)

        build_copy(copy, progress)
    return compare_and_swap(live, copy, swap=swap)


def print_report(report: Any) -> None:
    print(f"{report.name} at position {report.position}: "
          + ("identical to the live copy" if report.same else "differs from the live copy"))
    for t in report.tables:
        line = (f"  {t.table}: {t.live_rows} rows live, {t.new_rows} rebuilt; {t.added} added, {t.removed} removed, "
                f"{t.changed} changed")
        if t.new_columns or t.dropped_columns:
            line += f"; new columns {t.new_columns or '-'}, dropped columns {t.dropped_columns or '-'}"
        print(line)
        for example in t.examples:
            print(f"    {example}")
    print("swapped: the rebuilt copy is live" if report.swapped else "not swapped (--no-swap): the live copy is unchanged")
