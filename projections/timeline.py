"""Read model `timeline`: every event of a customer, for `GET /customers/{id}/timeline` (contract §3).

Append-only: one row per event, keyed so that the newest-first keyset on `(occurred_at, event_id)`
is an index scan, however many events the customer has.

`data` is the stored event's: in the latest version of its type, whatever version the producer
sent (a call's duration is `duration_ms`, calls stored before version 2 upcast), so that one
query reads every event of a type alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from domain.customer import TYPE_BY_EVENT_CLASS
from domain.personal import NOT_PERSONAL_DATA
from projections.readmodel import LIVE_SCHEMA, Column, ModelSettings, ReadModel, Table, View, key

NAME = "timeline"

EVENTS = Table(
    "timeline_events",
    (key("customer_id"), key("occurred_at", "timestamptz"), key("event_id"), Column("type", "text", not_null=True),
     Column("source", "text"), Column("data", "jsonb", not_null=True)),
    primary_key=("customer_id", "occurred_at", "event_id"),
    doc="Every interaction of every customer, its data in the latest version of its type (read model timeline).",
)


VIEWS = (
    View("events", "SELECT customer_id, occurred_at, event_id, type, source, data FROM {timeline_events}",
         "Every interaction of every customer: type call, email, purchase or survey_response, and its data as "
         "JSON in the latest version of its type, e.g. a call's duration_ms (read model timeline)."),
)


def json_bytes(value: Any) -> bytes:
    """JSON of an event's data, by orjson; what orjson cannot write (an integer beyond 64 bits)
    by the standard library. The same jsonb either way."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


class Timeline(ReadModel):
    name = NAME
    version = 2  # 2: calls' data in call data version 2 (duration_ms); rows of version 1 hold duration_seconds
    tables = (EVENTS,)
    views = VIEWS

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        super().__init__(schema, settings)

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        rows = [
            (self.owners.of(event), event.occurred_at, event.event_id, event_type, event.source,
             Jsonb(event.data, dumps=json_bytes))
            for event in events
            if (event_type := TYPE_BY_EVENT_CLASS.get(type(event))) is not None
        ]
        if rows:
            EVENTS.copy(curs, self.schema, rows)

    def redact(self, curs: Any, customers: Sequence[str]) -> None:
        """Each event's data keeps only the fields known to be no one's personal data (`domain.personal`)."""
        types = list(NOT_PERSONAL_DATA)
        kept = " ".join("WHEN %s THEN %s::text[]" for _ in types)
        curs.execute(
            f"UPDATE {self.t(EVENTS.name)} AS t SET data = (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{{}}') "  # noqa: S608 - names from constants and the checked schema
            f"FROM jsonb_each(t.data) AS e WHERE e.key = ANY(CASE t.type {kept} END)) WHERE customer_id = ANY(%s)",
            (*(value for t in types for value in (t, sorted(NOT_PERSONAL_DATA[t]))), list(customers)))

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        curs.execute(f"DELETE FROM {self.t(EVENTS.name)} WHERE customer_id = ANY(%s)", (list(customers),))  # noqa: S608 - names from constants and the checked schema
