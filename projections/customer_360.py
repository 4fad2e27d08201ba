"""Read model `customer_360`: the single view of the customer (contract §3, `GET /customers/{id}`).

Three merge tables, plain SQL for analysts (and the `analytics` views over them):
- `customer_360`: one row per customer: identifiers, first/last seen, count and latest time per
  event type, inbound contacts, the latest NPS and CSAT answers, NPS sum and count.
- `customer_360_revenue`: revenue and orders per customer and currency.
- `customer_360_products`: the skus each customer bought.
The lifecycle stage comes from the `lifecycle` read model.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from domain.contract import EVENT_TYPES
from domain.customer import TYPE_BY_EVENT_CLASS, Customer
from domain.rules import MONEY_CONTEXT, nps_category
from projections.readmodel import (
    Merge,
    MergeReadModel,
    Rows,
    Table,
    View,
    earliest,
    greatest,
    key,
    latest,
    summed,
    union,
)

NAME = "customer_360"


def count_column(event_type: str) -> str:
    return f"{event_type}_count"


def last_column(event_type: str) -> str:
    return f"last_{event_type}_at"


CUSTOMERS = Table(
    "customer_360",
    (
        key("customer_id"),
        *latest("name", name="text"),
        union("emails"),
        union("phones"),
        earliest("first_seen_at"),
        greatest("last_seen_at"),
        *(summed(count_column(t)) for t in EVENT_TYPES),
        *(greatest(last_column(t)) for t in EVENT_TYPES),
        summed("inbound_calls"),
        greatest("last_inbound_call_at"),
        summed("inbound_emails"),
        greatest("last_inbound_email_at"),
        *latest("last_nps", last_nps_score="int", last_nps_category="text"),
        *latest("last_csat", last_csat_score="int"),
        summed("nps_sum", "bigint"),
        summed("nps_responses"),
    ),
    primary_key=("customer_id",),
    fillfactor=70,
    doc="Single view of the customer: one row per customer key (read model customer_360).",
)
REVENUE = Table(
    "customer_360_revenue",
    (key("customer_id"), key("currency"), summed("revenue", "numeric"), summed("orders")),
    primary_key=("customer_id", "currency"),
    fillfactor=70,
    doc="Revenue and orders per customer and currency (read model customer_360).",
)
PRODUCTS = Table(
    "customer_360_products",
    (key("customer_id"), key("sku")),
    primary_key=("customer_id", "sku"),
    doc="Skus bought per customer (read model customer_360).",
)

_AT = {name: CUSTOMERS.position(name) for name in CUSTOMERS.column_names}
_EMPTY_ROW = [0 if c.merge is Merge.SUM else None for c in CUSTOMERS.columns]
# Column positions, looked up once (the handler runs for every event).
_CUSTOMER_ID, _NAME, _NAME_AT, _NAME_EVENT_ID = (_AT[c] for c in ("customer_id", "name", "name_at", "name_event_id"))
_EMAILS, _PHONES, _FIRST_SEEN, _LAST_SEEN = (_AT[c] for c in ("emails", "phones", "first_seen_at", "last_seen_at"))
_NPS_CATEGORY, _NPS_SUM, _NPS_RESPONSES = (_AT[c] for c in ("last_nps_category", "nps_sum", "nps_responses"))
_BY_TYPE = {t: (_AT[count_column(t)], _AT[last_column(t)]) for t in EVENT_TYPES}
_INBOUND = {t: (_AT[f"inbound_{t}s"], _AT[f"last_inbound_{t}_at"]) for t in ("call", "email")}
_SURVEY = {kind: (_AT[f"last_{kind}_score"], _AT[f"last_{kind}_at"], _AT[f"last_{kind}_event_id"])
           for kind in ("nps", "csat")}


VIEWS = (
    View(
        "customers",
        "SELECT customer_id, name, emails, phones, first_seen_at, last_seen_at,\n"
        + "".join(f"  {count_column(t)}, {last_column(t)},\n" for t in EVENT_TYPES)
        + "  inbound_calls, last_inbound_call_at, inbound_emails, last_inbound_email_at,\n"
        "  last_nps_score, last_nps_category, last_nps_at, last_csat_score, last_csat_at,\n"
        "  nps_responses, round(nps_sum::numeric / NULLIF(nps_responses, 0), 2) AS average_nps_score\n"
        "FROM {customer_360}",
        "One row per customer: identifiers, first and last contact, count and latest time per event type, "
        "latest NPS and CSAT scores (read model customer_360).",
        (("customer_id", "the customer key: customer.id, else the email, else the phone"),
         ("name", "the name on the customer's latest event (by occurred_at, then event_id) that had one"),
         *((count_column(t), f"number of {t} events") for t in EVENT_TYPES),
         *((last_column(t), f"occurred_at of the latest {t} event") for t in EVENT_TYPES),
         ("last_nps_category", "promoter (9-10), passive (7-8) or detractor (0-6) of the latest NPS score"),
         ("average_nps_score", "mean of every NPS score the customer gave, 2 decimals")),
    ),
    View("customer_revenue", "SELECT customer_id, currency, revenue, orders FROM {customer_360_revenue}",
         "Revenue (sum of purchase amounts) and orders per customer and currency (read model customer_360)."),
    View("customer_products", "SELECT customer_id, sku FROM {customer_360_products}",
         "Each sku a customer bought at least once (read model customer_360)."),
)


class Customer360(MergeReadModel):
    """A page of events → three set-based upserts; the same rows whatever the arrival order."""

    name = NAME
    tables = (CUSTOMERS, REVENUE, PRODUCTS)
    views = VIEWS
    handlers = {cls: "on_interaction" for cls in TYPE_BY_EVENT_CLASS}
    decimal_context = MONEY_CONTEXT  # sums of bounded amounts stay exact

    def redact(self, curs: Any, customers: Sequence[str]) -> None:
        curs.execute(f"UPDATE {self.t(CUSTOMERS.name)} SET name = NULL, name_at = NULL, name_event_id = NULL, "  # noqa: S608 - names from constants and the checked schema
                     "emails = '{}', phones = '{}' "
                     "WHERE customer_id = ANY(%s)", (list(customers),))

    def on_interaction(self, event: Customer.Interaction, rows: Rows) -> None:
        event_type = TYPE_BY_EVENT_CLASS[type(event)]
        customer, data, at, customer_id = event.customer, event.data, event.occurred_at, self.owners.of(event)
        row = list(_EMPTY_ROW)
        row[_CUSTOMER_ID] = customer_id
        if name := customer.get("name"):
            row[_NAME], row[_NAME_AT], row[_NAME_EVENT_ID] = name, at, event.event_id
        email, phone = customer.get("email"), customer.get("phone")
        row[_EMAILS] = {email} if email else set()
        row[_PHONES] = {phone} if phone else set()
        row[_FIRST_SEEN] = row[_LAST_SEEN] = at
        count, last = _BY_TYPE[event_type]
        row[count], row[last] = 1, at
        if event_type in _INBOUND and data.get("direction") == "inbound":
            count, last = _INBOUND[event_type]
            row[count], row[last] = 1, at
        if event_type == "survey_response":
            kind, score = data["kind"], int(data["score"])
            score_at, answer_at, answer_event_id = _SURVEY[kind]
            row[score_at], row[answer_at], row[answer_event_id] = score, at, event.event_id
            if kind == "nps":
                row[_NPS_CATEGORY] = nps_category(score)
                row[_NPS_SUM], row[_NPS_RESPONSES] = score, 1
        rows["customer_360"].append(row)
        if event_type == "purchase":
            rows["customer_360_revenue"].append((customer_id, data["currency"], Decimal(data["amount"]), 1))
            for item in data.get("items") or ():
                rows["customer_360_products"].append((customer_id, item["sku"]))
