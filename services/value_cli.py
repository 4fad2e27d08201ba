"""`rapport value fit|model|refresh`: the customer value model and the customers' scores (issue 16)."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from typing import Any

from services.settings import Settings

EXIT_REFUSED = 2
log = logging.getLogger("rapport.value")


def add_parser(sub: Any, epilog: str) -> None:
    p = sub.add_parser(
        "value", help="customer value: fit the model, show it, refresh the customers' scores and segments",
        description="BG/NBD (expected purchases, probability alive) and Gamma-Gamma (expected order value) fitted on "
        "the purchases of read model `value`, counted per distinct day with time in weeks (days/7). Every fit is "
        "stored as a new version; the latest scores the customers (GET /customers/{id}: value, segment).",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fit on the purchases up to a moment, store it as a new version, rescore",
                             description="Fit on the purchases in CURRENCY (of SOURCE only, when given) with occurred_at "
                             "up to --calibration-end; store the model as a new version; score every customer with it.")
    fit.add_argument("--calibration-end", required=True, metavar="T",
                     help="RFC 3339 time or a date (its midnight UTC), e.g. 1997-09-30")
    fit.add_argument("--currency", default="USD", help="ISO 4217 currency of the purchases (default USD)")
    fit.add_argument("--source", help="only purchases this system published (the events' `source`), e.g. cdnow")
    fit.add_argument("--json", action="store_true", help="print the model as JSON (the shape of GET /value/model)")
    fit.set_defaults(func=cmd_value)
    model = actions.add_parser("model", help="print the latest model", description="The latest model, as JSON.")
    model.set_defaults(func=cmd_value)
    refresh = actions.add_parser(
        "refresh", help="score every customer now: RFM segment and the latest model's predictions",
        description="Rewrite the customers' scores (table value_scores) as of now. With --every, again every N "
        "seconds until SIGTERM/Ctrl-C (what `rapport run` starts, every RAPPORT_VALUE_REFRESH_SECONDS).")
    refresh.add_argument("--every", type=float, metavar="SECONDS", help="repeat every SECONDS until stopped")
    refresh.set_defaults(func=cmd_value)


def cmd_value(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from domain.contract import utc_now
    from services import value
    from services.bootstrap import check_database, conninfo, ensure_schema
    from services.http.params import rfc3339

    check_database(settings)
    ensure_schema(settings)
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        if args.action == "fit":
            from fastapi import HTTPException

            from services.http.params import instant
            try:
                end = instant("--calibration-end", args.calibration_end)
                found = value.fit_and_rescore(conn, end, args.currency.upper(), args.source, settings.value_currency,
                                              settings.value_discount_rate, utc_now())
            except (value.ValueRequestError, HTTPException) as error:
                print(f"rapport value fit: {getattr(error, 'detail', error)}")
                return EXIT_REFUSED
            if args.json:
                print(json.dumps(value.model_json(found, rfc3339), indent=2))
            else:
                b, g = found.bgnbd, found.gamma_gamma
                print(f"model {found.version}: {found.customers} customers, {found.purchases} purchase days in "
                      f"{found.currency}{f' from {found.source}' if found.source else ''} up to {rfc3339(end)}\n"
                      f"  BG/NBD      r {b.r:.4f}  alpha {b.alpha:.4f}  a {b.a:.4f}  b {b.b:.4f}\n"
                      f"  Gamma-Gamma p {g.p:.4f}  q {g.q:.4f}  gamma {g.gamma:.4f}\n"
                      "every customer scored with it")
        elif args.action == "model":
            latest = value.latest_model(conn)
            if latest is None:
                print("rapport value model: no model yet; fit one with `rapport value fit --calibration-end T`")
                return EXIT_REFUSED
            print(json.dumps(value.model_json(latest, rfc3339), indent=2))
        else:
            return _refresh(conn, settings, args.every)
    return 0


def _refresh(conn: Any, settings: Settings, every: float | None) -> int:
    import signal

    from domain.contract import utc_now
    from services import value

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while True:
        try:
            scored = value.refresh(conn, settings.value_currency, settings.value_discount_rate, utc_now())
            log.info("scored %d customers", scored)
            if every is None:
                print(f"scored {scored} customers")
        except Exception as error:  # a database outage: say so and try again next time, as the other processes do
            if every is None:
                raise
            log.warning("value refresh failed, retrying in %.0f s: %s", every, error)
            conn = _reconnect(conn, settings)
        if every is None or stop.wait(every):
            return 0


def _reconnect(conn: Any, settings: Settings) -> Any:
    import psycopg

    from services.bootstrap import conninfo

    if not conn.closed:
        try:
            conn.execute("SELECT 1")
            return conn
        except psycopg.Error:
            conn.close()
    try:
        return psycopg.connect(conninfo(settings), autocommit=True)
    except psycopg.Error:
        return conn  # still away; the next round tries again
