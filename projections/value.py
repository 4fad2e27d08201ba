"""Read model `value`: every purchase, with its source, for customer value and segments (issue 16).

Append-only: one row per purchase event, keyed like the timeline. `services.value` counts them per
customer and UTC day (the papers' repeat purchases), in one currency, up to a moment (a model's
calibration end, a segment's `as_of`), and of one source when asked. Amounts and sources are no one's
personal data: nothing to redact.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from domain.customer import Customer
from projections.readmodel import LIVE_SCHEMA, Column, ModelSettings, ReadModel, Table, View, key

NAME = "value"

PURCHASES = Table(
    "value_purchases",
    (key("customer_id"), key("occurred_at", "timestamptz"), key("event_id"), Column("currency", "text", not_null=True),
     Column("amount", "numeric", not_null=True), Column("source", "text")),
    primary_key=("customer_id", "occurred_at", "event_id"),
    indexes=("(currency, occurred_at)",),
    doc="Every purchase: customer, time, currency, amount and the producing system (read model value).",
)
VIEWS = (
    View("value_purchases", "SELECT customer_id, occurred_at, event_id, currency, amount, source FROM {value_purchases}",
         "Every purchase with its time, currency, amount and source, the producing system (read model value).",
         (("source", "the event's `source`: the system that published it"),)),
)


class Value(ReadModel):
    name = NAME
    version = 1
    tables = (PURCHASES,)
    views = VIEWS

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        super().__init__(schema, settings)

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        rows = [
            (self.owners.of(event), event.occurred_at, event.event_id, event.data["currency"],
             Decimal(event.data["amount"]), event.source)
            for event in events
            if type(event) is Customer.PurchaseRecorded
        ]
        if rows:
            PURCHASES.copy(curs, self.schema, rows)

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        curs.execute(f"DELETE FROM {self.t(PURCHASES.name)} WHERE customer_id = ANY(%s)", (list(customers),))  # noqa: S608 - names from constants and the checked schema
