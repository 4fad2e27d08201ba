"""The `rapport` command: run the local stack, ingest, projector, API, everything, or the demo."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from projections.catalog import READ_MODELS
from services import audit_cli, customers_cli, keys_cli, projections_cli, value_cli
from services.settings import Settings, describe_settings_errors, settings_help

ROOT = Path(__file__).resolve().parents[1]
READ_MODEL_NAMES = list(READ_MODELS)


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask the loop to finish its batch and stop cleanly."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger("rapport").info("received %s; finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def cmd_stack(args: argparse.Namespace, settings: Settings | None) -> int:
    return subprocess.call([str(ROOT / "scripts" / "stack"), *(args.stack_args or ["up"])])


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import ingest_consumer

    stop = _stop_on_signals()
    consumer = ingest_consumer(settings)
    tune_garbage_collector()
    consumer.run(stop)
    return 0


def cmd_projector(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import interaction_log, projector

    stop = _stop_on_signals()
    store = interaction_log(settings)  # keep a reference: closing the app closes the shared pool
    try:
        runner = projector(settings, store, only=args.only)
        tune_garbage_collector()
        runner.run(stop)
    finally:
        store.close()
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from services.alerts import RaiserAndRelay
    from services.bootstrap import check_database, check_kafka
    from services.topics import ensure_alert_topic

    stop = _stop_on_signals()
    check_database(settings)
    check_kafka(settings)
    ensure_alert_topic(settings.kafka_client_config, settings.alert_topic)
    RaiserAndRelay(settings).run(stop)
    return 0


def tune_garbage_collector() -> None:
    """Batches and pages make many short-lived objects and few cycles: collect less often, and
    never scan the objects made at start-up (modules, settings) again."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.bootstrap import ensure_schema

    ensure_schema(settings)  # also a clear message if PostgreSQL is not there
    host, port = args.host or settings.api_host, args.port or settings.api_port
    workers = args.workers or settings.api_workers
    if workers > 1:
        return _serve_workers(uvicorn.Config(
            "services.cli:api_worker_app", factory=True, host=host, port=port, workers=workers,
            log_level=settings.log_level.lower(),
        ))

    from services.http.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port,
                                           log_level=settings.log_level.lower()))

    def stop(signum: int, _frame: object) -> None:
        if not server.should_exit:
            logging.getLogger("rapport.api").info("received %s; stopping", signal.Signals(signum).name)
        server.should_exit = True

    # uvicorn handles SIGTERM and SIGINT while it serves, and after its graceful shutdown raises
    # the signal again with the handler it found installed: with Python's defaults that killed
    # the process (exit -15) or raised KeyboardInterrupt. Installed first, `stop` is the handler
    # uvicorn restores, so the repeated signal asks only for what is done, and the exit code is 0.
    # A signal before uvicorn serves makes it stop as soon as it has started.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.run()
    # Not started: the port was taken or start-up failed (uvicorn logged why); `uvicorn.run`
    # exits 3 then too.
    return 0 if server.started else 3


def api_worker_app() -> object:
    """The app of one API worker process (`RAPPORT_API_WORKERS` > 1): uvicorn starts each worker
    with a fresh interpreter, which reads the same environment and logs the same way."""
    from services.http.app import create_app

    settings = Settings()
    configure_logging(settings)
    return create_app(settings)


def _serve_workers(config: object) -> int:
    """Serve with uvicorn's supervisor: one listening socket, `workers` processes accepting on it,
    each with its own read pool; a worker that dies is replaced. SIGTERM or SIGINT stops them all
    gracefully (each finishes the requests it has) and the exit code is 0; 3 if they could not start."""
    from uvicorn.supervisors import Multiprocess

    requested: list[int] = []

    def early(signum: int, _frame: object) -> None:
        requested.append(signum)

    signal.signal(signal.SIGTERM, early)  # until the supervisor installs its own handlers
    signal.signal(signal.SIGINT, early)

    class Supervisor(Multiprocess):
        def handle_int(self) -> None:
            requested.append(signal.SIGINT)
            super().handle_int()

        def handle_term(self) -> None:
            requested.append(signal.SIGTERM)
            super().handle_term()

    try:
        sock = config.bind_socket()  # type: ignore[attr-defined]
    except SystemExit:  # uvicorn logged why (the port is taken)
        return 3
    supervisor = Supervisor(config, sockets=[sock])  # type: ignore[arg-type]
    if requested:
        sock.close()
        return 0
    supervisor.run()
    sock.close()
    return 0 if requested else 3


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from services.processes import Processes

    with Processes() as processes:
        processes.start_all(["ingest"] * settings.ingest_processes + ["projector", "alerts", "api"])
        processes.start("value", "refresh", "--every", str(settings.value_refresh_seconds))
        return processes.wait()


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from services.bootstrap import check_kafka
    from services.topics import ensure_topics

    check_kafka(settings)

    ensure_topics(settings.kafka_client_config, settings.topic, settings.dead_letter_topic, partitions=args.partitions)
    print(f"topics ready: {settings.topic}, {settings.dead_letter_topic}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services.demo import run_demo

    return run_demo(settings, customers=args.customers, events=args.events, seed=args.seed,
                    republish=args.republish, serve=not args.exit_when_ready)


def build_parser() -> argparse.ArgumentParser:
    epilog = settings_help()
    parser = argparse.ArgumentParser(
        prog="rapport",
        description="Rapport: every call, email, purchase and survey response as an immutable event; "
        "the single customer view built from them.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="start/stop the local PostgreSQL and Kafka (scripts/stack)",
                       description="Install what is missing, start or stop PostgreSQL and the Kafka broker on 127.0.0.1.",
                       add_help=False)
    p.add_argument("stack_args", nargs=argparse.REMAINDER, help="up (default), down [--keep-postgres], status, --help")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("ingest", help="consume the topic into the event store (exactly once) until SIGTERM",
                       description="One member of the ingest consumer group: validates each message, stores new "
                       "events and the consumed offsets in one PostgreSQL transaction, dead-letters bad ones to "
                       "<topic>.dlq. Start several to split the partitions. Stops cleanly on SIGTERM/Ctrl-C.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("projector", help="keep the read models up to date with the event store until SIGTERM",
                       description="Follows the event store's log a page at a time and updates every read model "
                       f"({', '.join(READ_MODEL_NAMES)}), or those named with --only: each page is read and "
                       "decoded once; each read model's rows and position are written in one transaction. An event "
                       "a read model fails on is parked (see `rapport projections parked`). Stops cleanly on "
                       "SIGTERM/Ctrl-C; exits non-zero if the database stays away.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="NAME", choices=READ_MODEL_NAMES,
                   help="run only this read model (repeat for several); default: all")
    p.set_defaults(func=cmd_projector)

    p = sub.add_parser("alerts", help="raise alerts by the passing of time and publish every alert to Kafka until SIGTERM",
                       description="Publishes each alert Rapport raises (an alarm answer, a customer entering at_risk "
                       "or churned) to RAPPORT_ALERTS_TOPIC (default <topic>.alerts, created if missing), keyed by "
                       "customer, exactly once for consumers reading with isolation_level=read_committed: the "
                       "projector writes alerts into the table `alerts` in the lifecycle read model's transaction, and "
                       "this process relays them in Kafka transactions (its transactional id fences any earlier "
                       "relay), reading back what it published before a crash. Every "
                       "RAPPORT_ALERT_RAISE_INTERVAL_SECONDS it also raises the alerts of "
                       "changes by the passing of time (no purchase for RAPPORT_AT_RISK_DAYS, no interaction for "
                       "RAPPORT_CHURN_DAYS) whose moment has come. A change older than RAPPORT_ALERT_MAX_AGE_DAYS "
                       "when Rapport learns of it raises none. Rides through outages of Kafka and PostgreSQL; stops "
                       "cleanly on SIGTERM/Ctrl-C. Run one (a second one waits).",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_alerts)

    projections_cli.add_parser(sub, epilog)
    projections_cli.add_replay_parser(sub, epilog)
    audit_cli.add_parser(sub, epilog)

    customers_cli.add_parser(sub, epilog)
    keys_cli.add_parser(sub, epilog)
    value_cli.add_parser(sub, epilog)

    p = sub.add_parser("api", help="serve the HTTP API (OpenAPI page at /docs)",
                       description="Serves GET /customers/{id}, POST /events, GET /health and GET /projections.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="address to bind (default RAPPORT_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default RAPPORT_API_PORT, 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default RAPPORT_API_WORKERS, 2)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("run", help="run ingest, projector and API together until Ctrl-C",
                       description="Starts `rapport ingest`, `rapport projector`, `rapport alerts`, `rapport api` and "
                       "`rapport value refresh --every RAPPORT_VALUE_REFRESH_SECONDS` as child processes; Ctrl-C or "
                       "SIGTERM stops them all; if one ends on its own, the others are stopped and the "
                       "exit code is 1.", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("topics", help="create the topic and its dead-letter topic if missing",
                       description="Creates RAPPORT_TOPIC and RAPPORT_DLQ_TOPIC on the broker if they do not exist.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partitions", type=int, default=6, help="partitions of a new topic (default 6)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("demo", help="publish a generated data set through Kafka, run everything, print where to look",
                       description="Generates a realistic data set (with duplicates, late, conflicting and invalid "
                       "messages), publishes it to the topic unless the topic already holds messages, runs ingest, "
                       "projector and API, waits until the customer view is caught up and prints where to look. "
                       "Expects PostgreSQL and Kafka up (scripts/demo starts them).",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=2000, help="customers to generate (default 2000)")
    p.add_argument("--events", type=int, default=50_000, help="valid events to generate (default 50000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--republish", action="store_true",
                   help="publish again even if the store already holds the demo data (all are then duplicates)")
    p.add_argument("--exit-when-ready", action="store_true",
                   help="stop once the view is caught up and checked, instead of serving until Ctrl-C")
    p.set_defaults(func=cmd_demo)
    return parser


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kafka-python warns about routine things (no group on a metadata-only consumer, joins).
    logging.getLogger("kafka").setLevel(max(logging.ERROR, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stack"]:  # everything after it, --help included, is the script's
        return subprocess.call([str(ROOT / "scripts" / "stack"), *(argv[1:] or ["up"])])
    args = build_parser().parse_args(argv)
    if args.func is cmd_stack:  # needs no settings of the application
        return cmd_stack(args, None)  # type: ignore[arg-type]
    try:
        settings = Settings()
    except Exception as error:  # noqa: BLE001 - reported, with the variable names
        print(f"rapport: invalid settings:\n{describe_settings_errors(error)}", file=sys.stderr)
        return 2
    configure_logging(settings)
    from consumers.ingest import MissingOffsets
    from services.bootstrap import ServiceUnavailable

    try:
        return int(args.func(args, settings) or 0)
    except ServiceUnavailable as error:
        print(f"rapport {args.command}: {error}", file=sys.stderr)
        return 3
    except MissingOffsets as error:
        logging.getLogger("rapport.ingest").error("%s", error)
        return 4
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
