"""customer_360 gives the same view whatever the arrival order and however the pages split."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from domain.contract import validate_envelope
from domain.customer import Customer
from eventstore.store import InteractionLog
from projections.customer_360 import Customer360, fetch_customer_view
from services.bootstrap import interaction_log, projection_runners, read_pool
from services.settings import Settings
from tests.support import envelope, new_customer_id

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def store(settings: Settings) -> Iterator[InteractionLog]:
    log = interaction_log(settings)
    projection_runners(settings, log)  # creates the read-model tables
    yield log
    log.close()


def history(customer_id: str) -> list[dict]:
    """Events with ties in time, renames, several emails, both survey kinds, two currencies."""
    same_moment = "2026-06-01T12:00:00Z"
    return [
        envelope(customer_id, "call", "2026-01-05T09:00:00Z", {"direction": "inbound", "duration_seconds": 10},
                 event_id=f"{customer_id}:a", name="First Name", email="b@example.com"),
        envelope(customer_id, "email", same_moment, {"direction": "inbound"}, event_id=f"{customer_id}:b",
                 name="Tie Loser", email="a@example.com"),
        envelope(customer_id, "email", same_moment, {"direction": "inbound"}, event_id=f"{customer_id}:c",
                 name="Tie Winner", phone="+15550001"),
        envelope(customer_id, "call", same_moment, {"direction": "inbound", "duration_seconds": 1},
                 event_id=f"{customer_id}:d"),
        envelope(customer_id, "purchase", "2026-03-01T10:00:00+02:00",
                 {"order_id": "o1", "amount": "19.99", "currency": "EUR",
                  "items": [{"sku": "sku-b", "quantity": 1, "unit_price": "19.99"}]}, event_id=f"{customer_id}:e"),
        envelope(customer_id, "purchase", "2026-07-01T10:00:00Z",
                 {"order_id": "o2", "amount": "5", "currency": "USD",
                  "items": [{"sku": "sku-a", "quantity": 5, "unit_price": "1"}]}, event_id=f"{customer_id}:f"),
        envelope(customer_id, "purchase", "2026-08-01T10:00:00Z", {"order_id": "o3", "amount": "10.01", "currency": "EUR"},
                 event_id=f"{customer_id}:g"),
        envelope(customer_id, "survey_response", "2026-09-01T10:00:00Z", {"kind": "nps", "score": 3},
                 event_id=f"{customer_id}:h"),
        envelope(customer_id, "survey_response", "2026-09-01T10:00:00Z", {"kind": "nps", "score": 10},
                 event_id=f"{customer_id}:i"),  # same moment, greater event_id: the latest
        envelope(customer_id, "survey_response", "2026-10-01T10:00:00Z", {"kind": "csat", "score": 2},
                 event_id=f"{customer_id}:j"),
        envelope(customer_id, "survey_response", "2026-10-02T10:00:00Z", {"kind": "csat", "score": 5},
                 event_id=f"{customer_id}:k"),
    ]


def project(store: InteractionLog, customer_id: str, order: list[int], page_size: int) -> dict:
    """Record the history in `order` on a new customer, project it in pages, return the view."""
    messages = history(customer_id)
    customer = Customer(customer_id)
    for index in order:
        customer.record(validate_envelope(messages[index]))
    events = list(customer.collect_events())
    projection = Customer360()
    for start in range(0, len(events), page_size):
        with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            projection.apply(curs, events[start:start + page_size])
    return events


def view(settings: Settings, customer_id: str) -> dict:
    with read_pool(settings, max_size=1) as pool, pool.connection() as conn:
        found = fetch_customer_view(conn, customer_id, AS_OF, settings.thresholds)
    assert found is not None
    found.pop("customer_id")
    return found


def test_same_view_whatever_the_order_and_page_size(settings: Settings, store: InteractionLog) -> None:
    rng = random.Random(7)
    n = len(history("x"))
    reference_id = new_customer_id()
    project(store, reference_id, list(range(n)), page_size=1000)
    expected = view(settings, reference_id)
    assert expected["name"] == "Tie Winner"
    assert expected["emails"] == ["a@example.com", "b@example.com"]
    assert expected["satisfaction"]["last_nps_score"] == 10 and expected["satisfaction"]["last_csat_score"] == 5
    assert expected["purchases"]["revenue"] == {"EUR": "30.00", "USD": "5"}
    assert expected["preferred_channel"] == "email"  # 2 inbound each, last ones at the same instant: README rule
    for trial in range(12):
        order = list(range(n))
        rng.shuffle(order)
        customer_id = new_customer_id()
        project(store, customer_id, order, page_size=[1, 2, 3, 5, 1000][trial % 5])
        assert view(settings, customer_id) == expected, f"order {order}"
