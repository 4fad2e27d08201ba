"""Benchmark (issue 16): customer value and segments at size.

Fills read model `value`'s table in a throwaway database with the purchases of N customers drawn
from the BG/NBD and Gamma-Gamma processes themselves (parameters of the CDNOW fit: each customer's
purchase rate λ ~ Gamma(r, α) a week, dropout p ~ Beta(a, b) after each repeat purchase, first purchase
within the first 12 weeks, watched for 78 weeks; spend per purchase ~ Gamma(p, ν), ν ~ Gamma(q, γ)),
then times what Rapport does with them:

- `fit`: the SQL summary per customer and day and the maximum-likelihood fit (`services.value.fit_model`),
  with the parameters it recovers beside those drawn from (a check of the whole path, not a test);
- `refresh`: RFM scores, segments and predictions of every customer into `value_scores`;
- `segments`: the statement of `GET /segments?as_of=` (every customer ranked as of a moment), p50/p99 of --repeats;
- the baseline, measured in the same run: one `GROUP BY customer_id` over the same rows, the least
  any per-customer summary costs; the ratios say what ranking, naming and fitting add to it.

Prints figures and, as its LAST line, one JSON object. Never fails on a time; it is not a test.

    .venv/bin/python -m bench.value [--customers 100000] [--repeats 5] [--seed 7]
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import psycopg

from bench.common import create_database, drop_database, json_line, say, with_dbname
from projections.value import PURCHASES, Value
from services import cdnow, value
from services.bootstrap import conninfo
from services.settings import Settings

START = datetime(2024, 1, 1, tzinfo=UTC)
WATCHED_WEEKS = 78


def simulate(customers: int, seed: int) -> io.StringIO:
    """COPY text of `value_purchases` rows drawn from the two models (module docstring)."""
    rng = np.random.default_rng(seed)
    p = cdnow.PUBLISHED
    rates = rng.gamma(p["r"], 1 / p["alpha"], customers)
    dropouts = rng.beta(p["a"], p["b"], customers)
    scales = 1 / rng.gamma(p["q"], 1 / p["gamma"], customers)  # ν ~ Gamma(q, γ); spend ~ Gamma(p, scale 1/ν)
    out = io.StringIO()
    for n in range(customers):
        week = rng.uniform(0, 12)
        k = 0
        while week < WATCHED_WEEKS:
            at = START + timedelta(weeks=float(week))
            amount = Decimal(str(round(float(rng.gamma(p["p"], scales[n])), 2)))
            out.write(f"b-{n:07d}\t{at.isoformat()}\tb-{n}-{k}\tUSD\t{amount}\tbench\n")
            k += 1
            # BG/NBD: a customer may drop out after each *repeat* purchase, never after the first
            if (k > 1 and rng.random() < dropouts[n]) or rates[n] <= 0:
                break
            week += rng.exponential(1 / rates[n])
    out.seek(0)
    return out


def timed(action: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()  # type: ignore[operator]
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the segments query and the baseline")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    admin = Settings()
    dbname = f"rapport_bench_value_{uuid.uuid4().hex[:8]}"
    create_database(admin, dbname)
    settings = admin.model_copy(update={"database_url": with_dbname(admin.database_url, dbname)})
    try:
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            for statement in Value().create_statements():
                conn.execute(statement)  # type: ignore[arg-type]
            value.create_tables(conn)
            say(f"drawing the purchases of {args.customers} customers ...")
            rows = simulate(args.customers, args.seed)
            with conn.cursor().copy(f"COPY {PURCHASES.name} (customer_id, occurred_at, event_id, currency, amount, source) "  # noqa: S608 - names from constants
                                    "FROM STDIN") as copy:
                copy.write(rows.read())
            conn.execute(f"ANALYZE {PURCHASES.name}")
            purchases = conn.execute(f"SELECT count(*) FROM {PURCHASES.name}").fetchone()[0]  # type: ignore[index]  # noqa: S608 - names from constants
            end = START + timedelta(weeks=39)
            now = START + timedelta(weeks=WATCHED_WEEKS)

            baseline = []
            for _ in range(args.repeats):
                seconds, _ = timed(lambda: conn.execute(
                    f"SELECT customer_id, count(*), sum(amount) FROM {PURCHASES.name} GROUP BY customer_id").fetchall())  # noqa: S608 - names from constants
                baseline.append(seconds)
            fit_s, model = timed(lambda: value.fit_model(conn, end, "USD", None, now))
            refresh_s, scored = timed(lambda: value.refresh(conn, "USD", 0.10, now))
            segments = [timed(lambda: value.segment_counts(conn, "USD", now))[0] for _ in range(args.repeats)]
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        drop_database(admin, dbname)

    b, g = model.bgnbd, model.gamma_gamma  # type: ignore[attr-defined]
    base = statistics.median(baseline)
    seg = sorted(segments)
    result = {
        "customers": args.customers, "purchases": purchases,
        "baseline_group_by_s": base,
        "fit_s": fit_s, "fit_ratio": fit_s / base,
        "refresh_s": refresh_s, "refresh_ratio": refresh_s / base, "scored": scored,
        "segments_p50_ms": 1000 * statistics.median(seg), "segments_p99_ms": 1000 * seg[-1],
        "segments_ratio": statistics.median(seg) / base,
        "peak_mb": peak_mb,
        "drawn": {k: cdnow.PUBLISHED[k] for k in ("r", "alpha", "a", "b", "p", "q", "gamma")},
        "fitted": {"r": b.r, "alpha": b.alpha, "a": b.a, "b": b.b, "p": g.p, "q": g.q, "gamma": g.gamma},
    }
    say(f"{args.customers} customers, {purchases} purchases (drawn from BG/NBD + Gamma-Gamma)")
    say(f"  baseline GROUP BY customer: {base * 1000:.0f} ms")
    say(f"  fit (to week 39):           {fit_s:.2f} s   ({fit_s / base:.1f}× the baseline)")
    say(f"  refresh (score everyone):   {refresh_s:.2f} s   ({refresh_s / base:.1f}×), {scored} customers")
    say(f"  segments as of now:         p50 {result['segments_p50_ms']:.0f} ms, p99 {result['segments_p99_ms']:.0f} ms "
        f"({result['segments_ratio']:.1f}×)")
    say(f"  peak memory:                {peak_mb:.0f} MB")
    say("  parameters drawn → fitted:  " + ", ".join(
        f"{k} {result['drawn'][k]} → {result['fitted'][k]:.3f}" for k in result["drawn"]))
    print(json_line({k: v for k, v in result.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
