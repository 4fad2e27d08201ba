"""Read model: the single view of the customer (contract §3, `GET /customers/{id}`).

Tables (plain SQL for analysts):
- `customer_360`: one row per customer: identifiers, counts and latest times per type,
  inbound contacts, latest NPS/CSAT scores, NPS sum/count.
- `customer_360_revenue`: revenue and orders per customer and currency.
- `customer_360_products`: skus bought per customer.
- `customer_360_facts`: per event, what the lifecycle rules need; the stage depends on the
  time asked, so it is evaluated at query time by `domain.rules.lifecycle_at`.
Every merge is commutative (sums, LEAST/GREATEST, latest by (occurred_at, event_id)), so
the rows are the same whatever order the events arrived in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from psycopg.sql import SQL

from domain.contract import EVENT_TYPES, customer_key
from domain.customer import TYPE_BY_EVENT_CLASS, Customer
from domain.lifecycle import LifecycleFact, LifecycleThresholds, lifecycle_at
from domain.rules import MONEY_CONTEXT, average_order_value, nps_category, preferred_channel

NAME = "customer_360"

CREATE_STATEMENTS = [
    SQL(
        """CREATE TABLE IF NOT EXISTS customer_360 (
        customer_id text COLLATE "C" PRIMARY KEY,
        name text, name_at timestamptz, name_event_id text COLLATE "C",
        emails text[] COLLATE "C" NOT NULL DEFAULT '{}', phones text[] COLLATE "C" NOT NULL DEFAULT '{}',
        first_seen_at timestamptz NOT NULL, last_seen_at timestamptz NOT NULL,
        calls int NOT NULL DEFAULT 0, emails_count int NOT NULL DEFAULT 0,
        purchases int NOT NULL DEFAULT 0, survey_responses int NOT NULL DEFAULT 0,
        last_call_at timestamptz, last_email_at timestamptz,
        last_purchase_at timestamptz, last_survey_response_at timestamptz,
        inbound_calls int NOT NULL DEFAULT 0, last_inbound_call_at timestamptz,
        inbound_emails int NOT NULL DEFAULT 0, last_inbound_email_at timestamptz,
        last_nps_score int, last_nps_at timestamptz, last_nps_event_id text COLLATE "C",
        last_csat_score int, last_csat_at timestamptz, last_csat_event_id text COLLATE "C",
        nps_sum bigint NOT NULL DEFAULT 0, nps_responses int NOT NULL DEFAULT 0)"""
    ),
    SQL(
        """CREATE TABLE IF NOT EXISTS customer_360_revenue (
        customer_id text COLLATE "C" NOT NULL, currency char(3) NOT NULL,
        revenue numeric NOT NULL, orders int NOT NULL,
        PRIMARY KEY (customer_id, currency))"""
    ),
    SQL(
        """CREATE TABLE IF NOT EXISTS customer_360_products (
        customer_id text COLLATE "C" NOT NULL, sku text COLLATE "C" NOT NULL, PRIMARY KEY (customer_id, sku))"""
    ),
    SQL(
        """CREATE TABLE IF NOT EXISTS customer_360_facts (
        customer_id text COLLATE "C" NOT NULL, event_id text COLLATE "C" NOT NULL, occurred_at timestamptz NOT NULL,
        type text NOT NULL, survey_kind text, score int,
        PRIMARY KEY (customer_id, event_id))"""
    ),
]

_COUNT_COLUMN = {"call": "calls", "email": "emails_count", "purchase": "purchases",
                 "survey_response": "survey_responses"}
_LAST_COLUMN = {"call": "last_call_at", "email": "last_email_at", "purchase": "last_purchase_at",
                "survey_response": "last_survey_response_at"}


def _later(current: tuple[datetime, str] | None, candidate: tuple[datetime, str]) -> bool:
    return current is None or candidate > current


@dataclass
class _Delta:
    """What one page of events adds to one customer's row, merged the same way as in SQL."""

    customer_id: str
    name: tuple[datetime, str, str] | None = None  # (occurred_at, event_id, name)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    last_at: dict[str, datetime | None] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES))
    inbound: dict[str, int] = field(default_factory=lambda: {"call": 0, "email": 0})
    last_inbound_at: dict[str, datetime | None] = field(default_factory=lambda: {"call": None, "email": None})
    last_score: dict[str, tuple[datetime, str, int] | None] = field(
        default_factory=lambda: {"nps": None, "csat": None}
    )
    nps_sum: int = 0
    nps_responses: int = 0

    def add(self, event: Customer.Interaction, event_type: str) -> None:
        at, event_id = event.occurred_at, event.event_id
        name = event.customer.get("name")
        if name and (self.name is None or (at, event_id) > self.name[:2]):
            self.name = (at, event_id, name)
        if event.customer.get("email"):
            self.emails.add(event.customer["email"])
        if event.customer.get("phone"):
            self.phones.add(event.customer["phone"])
        self.first_seen_at = min(filter(None, (self.first_seen_at, at)))
        self.last_seen_at = max(filter(None, (self.last_seen_at, at)))
        self.counts[event_type] += 1
        self.last_at[event_type] = max(filter(None, (self.last_at[event_type], at)))
        data = event.data
        if event_type in self.inbound and data.get("direction") == "inbound":
            self.inbound[event_type] += 1
            self.last_inbound_at[event_type] = max(filter(None, (self.last_inbound_at[event_type], at)))
        if event_type == "survey_response":
            kind, score = data["kind"], int(data["score"])
            current = self.last_score[kind]
            if current is None or (at, event_id) > current[:2]:
                self.last_score[kind] = (at, event_id, score)
            if kind == "nps":
                self.nps_sum += score
                self.nps_responses += 1


def _latest(value: str, at: str, event_id: str) -> str:
    """SET clause keeping the (value, at, event_id) with the greatest (at, event_id)."""
    pick = ",\n".join(f"CASE WHEN newer THEN excluded.{c} ELSE t.{c} END" for c in (value, at, event_id))
    return (
        f"({value}, {at}, {event_id}) = (SELECT {pick} FROM (SELECT excluded.{at} IS NOT NULL AND "
        f"(t.{at} IS NULL OR (excluded.{at}, excluded.{event_id}) > (t.{at}, t.{event_id})) AS newer) n)"
    )


# (column, type, merge on conflict): every merge is commutative, so arrival order is irrelevant.
# Text is compared and sorted by code point (COLLATE "C" in the tables), as Python does, so the
# SQL merges and the in-page merges in `_Delta` agree whatever the database's collation.
_CUSTOMER_COLUMNS: list[tuple[str, str, str]] = [
    ("customer_id", "text", ""),
    ("name", "text", _latest("name", "name_at", "name_event_id")),
    ("name_at", "timestamptz", ""),
    ("name_event_id", "text", ""),
    ("emails", "json", 'emails = ARRAY(SELECT DISTINCT e COLLATE "C" FROM unnest(t.emails || excluded.emails) e ORDER BY 1)'),
    ("phones", "json", 'phones = ARRAY(SELECT DISTINCT p COLLATE "C" FROM unnest(t.phones || excluded.phones) p ORDER BY 1)'),
    ("first_seen_at", "timestamptz", "LEAST"),
    ("last_seen_at", "timestamptz", "GREATEST"),
    *((column, "int", "+") for column in ("calls", "emails_count", "purchases", "survey_responses")),
    *((column, "timestamptz", "GREATEST") for column in _LAST_COLUMN.values()),
    ("inbound_calls", "int", "+"),
    ("last_inbound_call_at", "timestamptz", "GREATEST"),
    ("inbound_emails", "int", "+"),
    ("last_inbound_email_at", "timestamptz", "GREATEST"),
    ("last_nps_score", "int", _latest("last_nps_score", "last_nps_at", "last_nps_event_id")),
    ("last_nps_at", "timestamptz", ""),
    ("last_nps_event_id", "text", ""),
    ("last_csat_score", "int", _latest("last_csat_score", "last_csat_at", "last_csat_event_id")),
    ("last_csat_at", "timestamptz", ""),
    ("last_csat_event_id", "text", ""),
    ("nps_sum", "bigint", "+"),
    ("nps_responses", "int", "+"),
]


def _merge(column: str, rule: str) -> str | None:
    if rule == "+":
        return f"{column} = t.{column} + excluded.{column}"
    if rule in ("LEAST", "GREATEST"):
        return f"{column} = {rule}(t.{column}, excluded.{column})"
    return rule or None


def _upsert_customers_sql() -> str:
    names = [c for c, _, _ in _CUSTOMER_COLUMNS]
    arrays = ", ".join("%s::text[]" if t == "json" else f"%s::{t}[]" for _, t, _ in _CUSTOMER_COLUMNS)
    # A text[] per customer cannot be a row of a 2-D array, so emails and phones travel as JSON.
    select = ", ".join(
        f"ARRAY(SELECT json_array_elements_text(d.{c}::json))" if t == "json" else f"d.{c}"
        for c, t, _ in _CUSTOMER_COLUMNS
    )
    merges = ",\n    ".join(m for c, _, rule in _CUSTOMER_COLUMNS if (m := _merge(c, rule)))
    return (
        f"INSERT INTO customer_360 AS t ({', '.join(names)})\n"
        f"SELECT {select}\nFROM unnest({arrays}) AS d({', '.join(names)})\n"
        f"ON CONFLICT (customer_id) DO UPDATE SET\n    {merges}"
    )


_UPSERT_CUSTOMERS = SQL(_upsert_customers_sql())  # type: ignore[arg-type]

_UPSERT_REVENUE = SQL(
    """INSERT INTO customer_360_revenue AS t (customer_id, currency, revenue, orders)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::int[])
    ON CONFLICT (customer_id, currency) DO UPDATE
    SET revenue = t.revenue + excluded.revenue, orders = t.orders + excluded.orders"""
)
_INSERT_PRODUCTS = SQL(
    """INSERT INTO customer_360_products (customer_id, sku)
    SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING"""
)
_INSERT_FACTS = SQL(
    """INSERT INTO customer_360_facts (customer_id, event_id, occurred_at, type, survey_kind, score)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::int[])
    ON CONFLICT DO NOTHING"""
)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


class Customer360:
    """The projection: a page of events → four set-based statements."""

    name = NAME
    create_statements = CREATE_STATEMENTS

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        with localcontext(MONEY_CONTEXT):  # sums of bounded amounts stay exact
            self._apply(curs, events)

    def _apply(self, curs: Any, events: Sequence[Any]) -> None:
        deltas: dict[str, _Delta] = {}
        revenue: dict[tuple[str, str], list[Any]] = {}
        products: set[tuple[str, str]] = set()
        facts: list[tuple[Any, ...]] = []
        for event in events:
            event_type = TYPE_BY_EVENT_CLASS.get(type(event))
            if event_type is None:
                continue  # e.g. Customer.Registered: the row starts with the first interaction
            customer_id = customer_key(event.customer)
            assert customer_id is not None
            delta = deltas.get(customer_id) or deltas.setdefault(customer_id, _Delta(customer_id))
            delta.add(event, event_type)
            data = event.data
            survey_kind = data.get("kind") if event_type == "survey_response" else None
            score = int(data["score"]) if survey_kind else None
            facts.append((customer_id, event.event_id, event.occurred_at, event_type, survey_kind, score))
            if event_type == "purchase":
                entry = revenue.setdefault((customer_id, data["currency"]), [Decimal(0), 0])
                entry[0] += Decimal(data["amount"])
                entry[1] += 1
                for item in data.get("items") or []:
                    products.add((customer_id, item["sku"]))
        if deltas:
            curs.execute(_UPSERT_CUSTOMERS, _columns([self._row(d) for d in deltas.values()], len(_CUSTOMER_COLUMNS)))
        if revenue:
            curs.execute(_UPSERT_REVENUE, _columns([(c, cur, r, n) for (c, cur), (r, n) in revenue.items()], 4))
        if products:
            curs.execute(_INSERT_PRODUCTS, _columns(sorted(products), 2))
        if facts:
            curs.execute(_INSERT_FACTS, _columns(facts, 6))

    @staticmethod
    def _row(d: _Delta) -> tuple[Any, ...]:
        name_at, name_event_id, name = d.name if d.name else (None, None, None)
        nps = d.last_score["nps"] or (None, None, None)
        csat = d.last_score["csat"] or (None, None, None)
        return (
            d.customer_id, name, name_at, name_event_id, json.dumps(sorted(d.emails)), json.dumps(sorted(d.phones)),
            d.first_seen_at, d.last_seen_at,
            *(d.counts[t] for t in EVENT_TYPES), *(d.last_at[t] for t in EVENT_TYPES),
            d.inbound["call"], d.last_inbound_at["call"], d.inbound["email"], d.last_inbound_at["email"],
            nps[2], nps[0], nps[1], csat[2], csat[0], csat[1],
            d.nps_sum, d.nps_responses,
        )


def _utc(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, with `Z`."""
    if value is None:
        return None
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat()
    return (text.rstrip("0") if "." in text else text) + "Z"


def fetch_customer_view(
    conn: Any, customer_id: str, as_of: datetime, thresholds: LifecycleThresholds
) -> dict[str, Any] | None:
    """The contract §3 JSON of one customer, or None if unknown (`conn` returns dict rows)."""
    # One snapshot for the four reads, so the view never mixes two projector commits.
    with conn.transaction(), conn.cursor() as curs:
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        curs.execute("SELECT * FROM customer_360 WHERE customer_id = %s", (customer_id,))
        row = curs.fetchone()
        if row is None:
            return None
        curs.execute(
            "SELECT currency, revenue, orders FROM customer_360_revenue WHERE customer_id = %s ORDER BY currency",
            (customer_id,),
        )
        revenue = [(r["currency"], r["revenue"], r["orders"]) for r in curs.fetchall()]
        curs.execute("SELECT sku FROM customer_360_products WHERE customer_id = %s ORDER BY sku", (customer_id,))
        products = [r["sku"] for r in curs.fetchall()]
        curs.execute(
            "SELECT occurred_at, event_id, type, survey_kind, score FROM customer_360_facts WHERE customer_id = %s",
            (customer_id,),
        )
        facts = [
            LifecycleFact(**r) for r in curs.fetchall()
        ]
    orders = sum(n for _, _, n in revenue)
    lifecycle = lifecycle_at(facts, as_of, thresholds)
    return {
        "customer_id": row["customer_id"],
        "name": row["name"],
        "emails": list(row["emails"]),
        "phones": list(row["phones"]),
        "first_seen_at": _utc(row["first_seen_at"]),
        "last_seen_at": _utc(row["last_seen_at"]),
        "interaction_counts": {t: row[_COUNT_COLUMN[t]] for t in EVENT_TYPES},
        "last_contact_at": {t: _utc(row[_LAST_COLUMN[t]]) for t in EVENT_TYPES},
        "preferred_channel": preferred_channel(
            row["inbound_calls"], row["last_inbound_call_at"], row["inbound_emails"], row["last_inbound_email_at"]
        ),
        "purchases": {
            "count": orders,
            "revenue": {currency: str(amount) for currency, amount, _ in revenue},
            "average_order_value": {
                currency: str(average_order_value(amount, n)) for currency, amount, n in revenue if n
            },
            "last_purchase_at": _utc(row["last_purchase_at"]),
            "products": products,
        },
        "satisfaction": {
            "responses": row["survey_responses"],
            "last_nps_score": row["last_nps_score"],
            "nps_category": nps_category(row["last_nps_score"]),
            "average_nps_score": (
                round(row["nps_sum"] / row["nps_responses"], 2) if row["nps_responses"] else None
            ),
            "last_csat_score": row["last_csat_score"],
        },
        "lifecycle": (
            {"stage": str(lifecycle.stage), "since": _utc(lifecycle.since)}
            if lifecycle
            else {"stage": None, "since": None}
        ),
    }
