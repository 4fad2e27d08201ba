"""Customer value and segments (issue 16; contract §6): fitting the value model, scoring customers,
and the segment and cohort queries behind the routes and `rapport value`.

- **Fit.** Purchases of read model `value` in one currency (and one source, when asked) up to
  `calibration_end` are summarised per customer by SQL (distinct purchase days, the papers'
  convention: `domain.value_model`), fitted, and stored as a new version in `rapport_value_models`.
  A fit is a fact about the data at a moment, not a read model: rebuilds never touch it.
- **Scores.** `refresh` writes `value_scores`, one row per customer with purchases: RFM scores and
  segment (in `RAPPORT_VALUE_CURRENCY`, as of now) and, once a model exists, the latest model's
  probability alive, expected purchases and 12-month CLV from the customer's purchases up to now.
  The 360 view reads the row (one index lookup); it is rewritten after every fit and every
  `RAPPORT_VALUE_REFRESH_SECONDS` by `rapport value refresh --every`, which `rapport run` starts.
- **Segments.** RFM scores are quintiles among all customers with purchases, so a segment depends on
  everyone: `GET /segments?as_of=T` ranks them all as of T in one statement (window functions).
  The score rule is that statement's; the names come from `domain.segments`. Without `as_of`, the
  segments and their members are those of the latest refresh (`as_of` says when), read from
  `value_scores` without ranking anyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from domain import segments as segment_rules
from domain.value_model import BgNbd, FitError, GammaGamma, Histories, fit, predict
from projections.value import PURCHASES

MODELS = "rapport_value_models"
SCORES = "value_scores"
CENTS = Decimal("0.01")
_WIDE = Context(prec=80)  # money sums of any size quantize without InvalidOperation
_REFRESH_LOCK = 0x72617076  # one refresh at a time: pg_advisory_xact_lock

SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS {MODELS} (
    version int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    currency text NOT NULL,
    source text,
    calibration_end timestamptz NOT NULL,
    fitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    customers int NOT NULL,
    purchases int NOT NULL,
    r float8 NOT NULL, alpha float8 NOT NULL, a float8 NOT NULL, b float8 NOT NULL,
    p float8 NOT NULL, q float8 NOT NULL, gamma float8 NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCORES} (
    customer_id text COLLATE "C" PRIMARY KEY,
    segment_currency text,
    recency_days int, frequency int, monetary numeric, last_purchase_at timestamptz,
    r_score int, f_score int, m_score int, segment text,
    model_version int,
    model_currency text,
    first_purchase_at timestamptz,
    revenue numeric,
    p_alive float8, expected_purchases_12m float8, clv_12m numeric,
    refreshed_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {SCORES}_segment ON {SCORES} (segment, customer_id);
"""


def create_tables(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_SQL)  # type: ignore[arg-type]  # constant text: names from this module


class ValueRequestError(ValueError):
    """A request the data cannot answer (what to change is in the message)."""


@dataclass(frozen=True)
class ValueModel:
    version: int
    currency: str
    source: str | None
    calibration_end: datetime
    fitted_at: datetime
    customers: int
    purchases: int
    bgnbd: BgNbd
    gamma_gamma: GammaGamma

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> ValueModel:
        return cls(row["version"], row["currency"], row["source"], row["calibration_end"], row["fitted_at"],
                   row["customers"], row["purchases"], BgNbd(row["r"], row["alpha"], row["a"], row["b"]),
                   GammaGamma(row["p"], row["q"], row["gamma"]))


# One customer's purchase days (UTC) in one currency up to a moment, of one source or all: what both
# the value model (the papers count purchases per day) and RFM (frequency in purchase days) start from.
_PURCHASE_DAYS = f"""days AS (
    SELECT customer_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(amount) AS amount, max(occurred_at) AS at
    FROM {PURCHASES.name}
    WHERE currency = %(currency)s AND occurred_at <= %(end)s AND (%(source)s::text IS NULL OR source = %(source)s)
    GROUP BY 1, 2
)"""  # noqa: S608 - names from constants

# Per customer: repeat days, days first → latest, days first → the period's end, the average repeat
# day, the first day, revenue.
_HISTORIES_SQL = f"""
WITH {_PURCHASE_DAYS}
SELECT customer_id, count(*) - 1 AS repeat_days, max(day) - min(day) AS recency_days,
       %(end_day)s::date - min(day) AS age_days,
       coalesce((sum(amount) - (array_agg(amount ORDER BY day))[1]) / nullif(count(*) - 1, 0), 0) AS monetary,
       min(day) AS first_day, sum(amount) AS revenue
FROM days GROUP BY customer_id ORDER BY customer_id
"""  # noqa: S608 - names from constants


def histories(conn: psycopg.Connection[Any], currency: str, end: datetime, source: str | None) -> list[dict[str, Any]]:
    params = {"currency": currency, "end": end, "end_day": end.astimezone(UTC).date(), "source": source}
    with conn.cursor(row_factory=dict_row) as curs:
        return curs.execute(_HISTORIES_SQL, params).fetchall()  # type: ignore[arg-type]


def _histories_of(rows: list[dict[str, Any]]) -> Histories:
    return Histories.of_days([(r["repeat_days"], r["recency_days"], r["age_days"], float(r["monetary"])) for r in rows])


def fit_model(conn: psycopg.Connection[Any], calibration_end: datetime, currency: str, source: str | None,
              now: datetime) -> ValueModel:
    """Fit on the purchases up to `calibration_end` and store the model as a new version."""
    if calibration_end > now:
        raise ValueRequestError(f"calibration_end {calibration_end.isoformat()} is in the future: the model is fitted "
                                "on purchases up to a moment that has passed")
    rows = histories(conn, currency, calibration_end, source)
    if not rows:
        of_source = f" of source {source!r}" if source is not None else ""
        raise ValueRequestError(f"no purchase in {currency}{of_source} by {calibration_end.isoformat()}: pick another "
                                "currency, source or calibration_end")
    try:
        bgnbd, gamma_gamma = fit(_histories_of(rows))
    except FitError as error:
        raise ValueRequestError(str(error)) from None
    with conn.cursor(row_factory=dict_row) as curs:
        row = curs.execute(
            f"INSERT INTO {MODELS} (currency, source, calibration_end, customers, purchases, r, alpha, a, b, p, q, gamma) "  # noqa: S608 - names from constants
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (currency, source, calibration_end, len(rows), sum(r["repeat_days"] + 1 for r in rows),
             bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b, gamma_gamma.p, gamma_gamma.q, gamma_gamma.gamma)).fetchone()
    assert row is not None
    return ValueModel.of_row(row)


def fit_and_rescore(conn: psycopg.Connection[Any], calibration_end: datetime, currency: str, source: str | None,
                    segment_currency: str, annual_discount_rate: float, now: datetime) -> ValueModel:
    """Fit, store the model and score every customer with it, in one transaction: a failure leaves
    no new version behind, and once it returns the view shows this model (until a later fit)."""
    with conn.transaction():
        model = fit_model(conn, calibration_end, currency, source, now)
        refresh(conn, segment_currency, annual_discount_rate, now)
    return model


def latest_model(conn: psycopg.Connection[Any]) -> ValueModel | None:
    with conn.cursor(row_factory=dict_row) as curs:
        row = curs.execute(f"SELECT * FROM {MODELS} ORDER BY version DESC LIMIT 1").fetchone()  # noqa: S608 - names from constants
    return None if row is None else ValueModel.of_row(row)


def model_json(model: ValueModel, rfc3339: Any) -> dict[str, Any]:
    """Contract §6's shape of a model (with its currency and source)."""
    return {
        "version": model.version,
        "bgnbd": {"r": model.bgnbd.r, "alpha": model.bgnbd.alpha, "a": model.bgnbd.a, "b": model.bgnbd.b},
        "gamma_gamma": {"p": model.gamma_gamma.p, "q": model.gamma_gamma.q, "gamma": model.gamma_gamma.gamma},
        "customers": model.customers,
        "purchases": model.purchases,
        "calibration_end": rfc3339(model.calibration_end),
        "fitted_at": rfc3339(model.fitted_at),
        "currency": model.currency,
        "source": model.source,
    }


# RFM of every customer with purchases in a currency up to a moment: scores are quintiles where equal
# values share a score (1 + ⌊5 × customers with a worse value / customers⌋), named by domain.segments.
_RFM_SQL = f"""
WITH {_PURCHASE_DAYS}, customers AS (
    SELECT customer_id, %(end_day)s::date - max(day) AS recency_days, count(*) AS frequency, sum(amount) AS monetary,
           max(at) AS last_purchase_at
    FROM days GROUP BY customer_id
), scored AS (
    SELECT *, 1 + floor(5 * (rank() OVER (ORDER BY recency_days DESC) - 1)::numeric / count(*) OVER ())::int AS r_score,
              1 + floor(5 * (rank() OVER (ORDER BY frequency) - 1)::numeric / count(*) OVER ())::int AS f_score,
              1 + floor(5 * (rank() OVER (ORDER BY monetary) - 1)::numeric / count(*) OVER ())::int AS m_score
    FROM customers
)
SELECT s.*, m.segment FROM scored s JOIN unnest(%(map_r)s::int[], %(map_f)s::int[], %(map_segment)s::text[])
    AS m(r_score, f_score, segment) USING (r_score, f_score)
"""  # noqa: S608 - names from constants


def _rfm_params(currency: str, as_of: datetime) -> dict[str, Any]:
    grid = segment_rules.segment_map()
    return {"currency": currency, "end": as_of, "end_day": as_of.astimezone(UTC).date(), "source": None,
            "map_r": [g[0] for g in grid], "map_f": [g[1] for g in grid], "map_segment": [g[2] for g in grid]}


def segment_counts(conn: psycopg.Connection[Any], currency: str, as_of: datetime) -> list[dict[str, Any]]:
    """Every segment (in `domain.segments` order, empty ones too): customers and revenue as of `as_of`."""
    with conn.cursor(row_factory=dict_row) as curs:
        rows = curs.execute(f"SELECT segment, count(*) AS customers, sum(monetary) AS revenue FROM ({_RFM_SQL}) r "  # noqa: S608 - names from constants
                            "GROUP BY segment", _rfm_params(currency, as_of)).fetchall()
    return every_segment(rows, currency)


def every_segment(rows: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    """Rows of (segment, customers, revenue) as all eight segments in their order, empty ones with 0."""
    found = {r["segment"]: r for r in rows}
    return [{"name": name, "customers": found[name]["customers"] if name in found else 0,
             "revenue": {currency: money(found[name]["revenue"] if name in found else Decimal(0))}}
            for name in segment_rules.SEGMENTS]


def scored_at(conn: psycopg.Connection[Any], currency: str) -> datetime | None:
    """When the latest refresh scored the customers' segments in `currency` (a refresh writes every row
    with one moment); None if none has."""
    row = conn.execute(f"SELECT refreshed_at FROM {SCORES} WHERE segment_currency = %s LIMIT 1",  # noqa: S608 - names from constants
                       (currency,)).fetchone()
    return None if row is None else (row["refreshed_at"] if isinstance(row, dict) else row[0])


def scored_segments(conn: psycopg.Connection[Any], currency: str) -> tuple[datetime, list[dict[str, Any]]] | None:
    """`segment_counts` as of the latest refresh, from `value_scores` (no ranking): its moment and
    counts; None when no refresh has scored anyone in `currency`."""
    with conn.cursor(row_factory=dict_row) as curs:
        rows = curs.execute(
            f"SELECT segment, count(*) AS customers, sum(monetary) AS revenue, max(refreshed_at) AS at FROM {SCORES} "  # noqa: S608 - names from constants
            "WHERE segment IS NOT NULL AND segment_currency = %s GROUP BY segment", (currency,)).fetchall()
    if not rows:
        return None
    return max(r["at"] for r in rows), every_segment(rows, currency)


def scored_members(conn: psycopg.Connection[Any], currency: str, segment: str, after: str | None,
                   limit: int) -> list[dict[str, Any]]:
    """`segment_members` as of the latest refresh, from `value_scores` (an index range); each row
    carries its `refreshed_at` (one statement: the rows and their moment agree)."""
    with conn.cursor(row_factory=dict_row) as curs:
        return curs.execute(
            f"SELECT customer_id, recency_days, frequency, monetary, r_score, f_score, m_score, last_purchase_at, "  # noqa: S608 - names from constants
            "refreshed_at "
            f"FROM {SCORES} WHERE segment = %(segment)s AND segment_currency = %(currency)s AND "
            "(%(after)s::text IS NULL OR customer_id > %(after)s) ORDER BY customer_id LIMIT %(limit)s",
            {"segment": segment, "currency": currency, "after": after, "limit": limit}).fetchall()


def segment_members(conn: psycopg.Connection[Any], currency: str, as_of: datetime, segment: str, after: str | None,
                    limit: int) -> list[dict[str, Any]]:
    """Members of a segment as of `as_of`, by customer id after `after`, at most `limit`."""
    with conn.cursor(row_factory=dict_row) as curs:
        return curs.execute(
            f"SELECT * FROM ({_RFM_SQL}) r WHERE segment = %(segment)s AND (%(after)s::text IS NULL OR "  # noqa: S608 - names from constants
            "customer_id > %(after)s COLLATE \"C\") ORDER BY customer_id COLLATE \"C\" LIMIT %(limit)s",
            {**_rfm_params(currency, as_of), "segment": segment, "after": after, "limit": limit}).fetchall()


def money(amount: Decimal) -> str:
    """A sum of money to the cent, half-even (any size: amounts have 18 whole digits, their sums more)."""
    return str(Decimal(amount).quantize(CENTS, ROUND_HALF_EVEN, context=_WIDE))


def refresh(conn: psycopg.Connection[Any], segment_currency: str, annual_discount_rate: float, now: datetime) -> int:
    """Rewrite `value_scores` in one transaction: RFM and segment of every customer with purchases in
    `segment_currency`, and the latest model's predictions for customers with purchases in its
    currency (and source); rows for no one else. Returns the rows written."""
    rows: dict[str, dict[str, Any]] = {}
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REFRESH_LOCK,))
        with conn.cursor(row_factory=dict_row) as curs:
            for r in curs.execute(_RFM_SQL, _rfm_params(segment_currency, now)):  # type: ignore[arg-type]
                rows[r["customer_id"]] = {
                    "segment_currency": segment_currency, "recency_days": r["recency_days"],
                    "frequency": r["frequency"], "monetary": r["monetary"], "last_purchase_at": r["last_purchase_at"],
                    "r_score": r["r_score"],
                    "f_score": r["f_score"], "m_score": r["m_score"], "segment": r["segment"]}
        model = latest_model(conn)
        if model is not None:
            found = histories(conn, model.currency, now, model.source)
            if found:
                predicted = predict(model.bgnbd, model.gamma_gamma, _histories_of(found), annual_discount_rate)
                for n, h in enumerate(found):
                    rows.setdefault(h["customer_id"], {}).update({
                        "model_version": model.version, "model_currency": model.currency,
                        "first_purchase_at": datetime.combine(h["first_day"], time(), UTC), "revenue": h["revenue"],
                        "p_alive": _finite(predicted.p_alive[n]),
                        "expected_purchases_12m": _finite(predicted.expected_purchases[n]),
                        "clv_12m": _cents(predicted.clv[n])})
        columns = ["segment_currency", "recency_days", "frequency", "monetary", "last_purchase_at", "r_score",
                   "f_score", "m_score", "segment", "model_version", "model_currency", "first_purchase_at", "revenue", "p_alive",
                   "expected_purchases_12m", "clv_12m"]
        conn.execute(f"DELETE FROM {SCORES}")  # noqa: S608 - names from constants
        with conn.cursor().copy(f"COPY {SCORES} (customer_id, {', '.join(columns)}, refreshed_at) FROM STDIN") as copy:  # noqa: S608 - names from constants
            for customer_id in sorted(rows):
                row = rows[customer_id]
                copy.write_row((customer_id, *(row.get(c) for c in columns), now))
    return len(rows)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _cents(value: float) -> Decimal | None:
    return Decimal(repr(float(value))).quantize(CENTS, ROUND_HALF_EVEN, context=_WIDE) if math.isfinite(value) else None


def cohorts(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """CLV by acquisition cohort (UTC month of the first purchase in the model's currency) from the scores."""
    with conn.cursor(row_factory=dict_row) as curs:
        return curs.execute(
            f"SELECT to_char(first_purchase_at AT TIME ZONE 'UTC', 'YYYY-MM') AS cohort, count(*) AS customers, "  # noqa: S608 - names from constants
            "sum(revenue) AS historical, sum(clv_12m) AS clv_12m, avg(p_alive) AS p_alive "
            f"FROM {SCORES} WHERE model_version IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()


def distribution(conn: psycopg.Connection[Any], buckets: int) -> list[dict[str, Any]]:
    """Customers by predicted 12-month CLV: `buckets` equal ranges from 0 to the 99th percentile
    (rounded up to a whole number), the last open-ended, so a few very large values do not squash
    the rest into one bar."""
    with conn.cursor(row_factory=dict_row) as curs:
        top = curs.execute(f"SELECT ceil(percentile_cont(0.99) WITHIN GROUP (ORDER BY clv_12m)) AS top "  # noqa: S608 - names from constants
                           f"FROM {SCORES} WHERE clv_12m IS NOT NULL").fetchone()
        top_value = Decimal(top["top"]) if top and top["top"] is not None else Decimal(0)
        width = max(top_value / buckets, CENTS).quantize(CENTS, ROUND_HALF_EVEN)
        counts = {r["bucket"]: r["customers"] for r in curs.execute(
            f"SELECT least(floor(clv_12m / %s), %s)::int AS bucket, count(*) AS customers FROM {SCORES} "  # noqa: S608 - names from constants
            "WHERE clv_12m IS NOT NULL GROUP BY 1", (width, buckets - 1))}
    return [{"from": money(width * n), "to": None if n == buckets - 1 else money(width * (n + 1)),
             "customers": counts.get(n, 0)} for n in range(buckets)]
