"""Point-in-time views without I/O: which events a point in time admits, and the rows the
`customer_360` read model's own fold gives from a customer's events (expected values by hand)."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from domain.contract import validate_envelope
from domain.customer import Customer
from projections.customer_360 import CUSTOMERS, PRODUCTS, REVENUE, Customer360
from projections.point_in_time import PointInTime

TICK = timedelta(microseconds=1)


def interactions(*messages: dict[str, Any]) -> list[Customer.Interaction]:
    customer = Customer("c-1")
    for message in messages:
        customer.record(validate_envelope(message))
    return [e for e in customer.collect_events() if isinstance(e, Customer.Interaction)]


def message(event_id: str, event_type: str, at: str, data: dict[str, Any], **customer: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": event_type, "occurred_at": at, "customer": {"id": "c-1", **customer},
            "data": data}


def test_a_point_in_time_admits_events_up_to_and_at_its_instants() -> None:
    [event] = interactions(message("e", "email", "2024-05-01T12:00:00Z", {"direction": "inbound"}))
    occurred = datetime(2024, 5, 1, 12, tzinfo=UTC)
    recorded = datetime(2024, 6, 1, tzinfo=UTC)
    event = dataclasses.replace(event, timestamp=recorded)

    assert PointInTime(as_of=occurred).admits(event)
    assert not PointInTime(as_of=occurred - TICK).admits(event)
    assert PointInTime(known_at=recorded).admits(event)
    assert not PointInTime(known_at=recorded - TICK).admits(event)
    assert PointInTime(as_of=occurred, known_at=recorded).admits(event)
    assert not PointInTime(as_of=occurred, known_at=recorded - TICK).admits(event)


def test_a_view_with_both_times_is_evaluated_at_as_of() -> None:
    as_of, known_at = datetime(2024, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC)
    assert PointInTime(as_of=as_of, known_at=known_at).at == as_of
    assert PointInTime(known_at=known_at).at == known_at
    assert PointInTime(as_of=as_of).at == as_of


def test_the_read_models_fold_gives_the_same_rows_in_any_order() -> None:
    events = interactions(
        message("b", "purchase", "2024-02-01T00:00:00Z", {"order_id": "1", "amount": "10.00", "currency": "USD",
                "items": [{"sku": "z-9", "quantity": 1, "unit_price": "10.00"}]}, name="Ann", email="b@x.org"),
        message("a", "purchase", "2024-03-01T00:00:00Z", {"order_id": "2", "amount": "5.5", "currency": "USD",
                "items": [{"sku": "a-1", "quantity": 1, "unit_price": "5.5"}]}, name="Anne", email="a@x.org"),
        message("c", "purchase", "2024-01-01T00:00:00Z", {"order_id": "3", "amount": "3", "currency": "EUR"}),
        message("d", "survey_response", "2024-03-01T00:00:00Z", {"kind": "nps", "score": 6}),
    )
    model = Customer360()
    every_order = [model.rows_of(list(order)) for order in itertools.permutations(events)]
    assert all(rows == every_order[0] for rows in every_order)

    rows = every_order[0]
    [customer] = rows[CUSTOMERS.name]
    row = dict(zip(CUSTOMERS.column_names, customer, strict=True))
    assert row["name"] == "Anne"  # the latest (occurred_at, event_id) with a name: 2024-03-01, "a"
    assert row["emails"] == ["a@x.org", "b@x.org"]
    assert (row["purchase_count"], row["survey_response_count"]) == (3, 1)
    assert row["first_seen_at"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert row["last_purchase_at"] == datetime(2024, 3, 1, tzinfo=UTC)
    assert (row["last_nps_score"], row["last_nps_category"], row["nps_sum"], row["nps_responses"]) == (6, "detractor",
                                                                                                      6, 1)
    assert rows[REVENUE.name] == [["c-1", "EUR", Decimal("3"), 1], ["c-1", "USD", Decimal("15.50"), 2]]
    assert rows[PRODUCTS.name] == [["c-1", "a-1"], ["c-1", "z-9"]]
