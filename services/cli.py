"""The `rapport` command: run the local stack, ingest, projector, API, everything, or the demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_HELP = "Settings come from RAPPORT_* environment variables; see the README's table."


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask the loop to finish its batch and stop cleanly."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger("rapport").info("received %s; finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    return subprocess.call([str(ROOT / "scripts" / "stack"), *args.stack_args])


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import ingest_consumer

    stop = _stop_on_signals()
    ingest_consumer(settings).run(stop)
    return 0


def cmd_projector(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import interaction_log, projection_runners

    stop = _stop_on_signals()
    store = interaction_log(settings)  # keep a reference: closing the app closes the shared pool
    runners = projection_runners(settings, store)
    threads = [threading.Thread(target=r.run, args=(stop,), name=r.name) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.api import create_app

    uvicorn.run(create_app(settings), host=args.host or settings.api_host, port=args.port or settings.api_port,
                log_level=settings.log_level.lower())
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from services.processes import Processes

    with Processes() as processes:
        processes.start_all(["ingest", "projector", "api"])
        return processes.wait()


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from services.topics import ensure_topics

    ensure_topics(settings.kafka_servers, [settings.topic, settings.dead_letter_topic], partitions=args.partitions)
    print(f"topics ready: {settings.topic}, {settings.dead_letter_topic}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services.demo import run_demo

    return run_demo(settings, customers=args.customers, events=args.events, seed=args.seed,
                    republish=args.republish, serve=not args.exit_when_ready)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rapport",
        description="Rapport: every call, email, purchase and survey response as an immutable event; "
        "the single customer view built from them.",
        epilog=SETTINGS_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="start/stop the local PostgreSQL and Kafka (scripts/stack)")
    p.add_argument("stack_args", nargs="*", default=["up"], help="up (default), down, status")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("ingest", help="consume the topic into the event store (exactly once) until SIGTERM",
                       epilog=SETTINGS_HELP)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("projector", help="keep the read models up to date with the event store until SIGTERM",
                       epilog=SETTINGS_HELP)
    p.set_defaults(func=cmd_projector)

    p = sub.add_parser("api", help="serve the HTTP API (OpenAPI page at /docs)", epilog=SETTINGS_HELP)
    p.add_argument("--host", help="address to bind (default RAPPORT_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default RAPPORT_API_PORT, 8000)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("run", help="run ingest, projector and API together until Ctrl-C", epilog=SETTINGS_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("topics", help="create the topic and its dead-letter topic if missing")
    p.add_argument("--partitions", type=int, default=6, help="partitions of a new topic (default 6)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("demo", help="publish a generated data set through Kafka, run everything, print where to look",
                       epilog=SETTINGS_HELP)
    p.add_argument("--customers", type=int, default=2000, help="customers to generate (default 2000)")
    p.add_argument("--events", type=int, default=50_000, help="valid events to generate (default 50000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--republish", action="store_true",
                   help="publish again even if the store already holds the demo data (all are then duplicates)")
    p.add_argument("--exit-when-ready", action="store_true",
                   help="stop once the view is caught up and checked, instead of serving until Ctrl-C")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as error:  # pydantic names the variable and the rule
        print(f"rapport: invalid settings: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python warns about routine things (no group on a metadata-only consumer, joins).
    logging.getLogger("kafka").setLevel(max(logging.ERROR, logging.getLogger().level))
    from services.bootstrap import ServiceUnavailable

    try:
        return int(args.func(args, settings) or 0)
    except ServiceUnavailable as error:
        print(f"rapport {args.command}: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
