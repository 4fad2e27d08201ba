"""The projector's pages (`projections/pages.py`) hold exactly what the library's notification log
and mapper give: the same notifications, and domain events equal in class and in every attribute,
whether decoded by the short path or handed to the mapper."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import Notification

from domain.contract import validate_envelope
from domain.customer import Customer
from eventstore.store import InteractionLog
from projections.pages import LogPages
from projections.timeline import json_bytes
from tests.integration.test_read_model_promises import aggregates, history
from tests.support import envelope

pytestmark = pytest.mark.integration


def odd_messages(prefix: str) -> list[dict[str, Any]]:
    """Events whose stored state the short path must not decode itself, next to plain ones."""
    big = 123456789012345678901234567890  # beyond 64 bits: orjson would read a float
    return [
        envelope(f"{prefix}-odd", "call", "2025-01-05T09:00:00.123456+05:30", {"direction": "inbound",
                 "duration_seconds": 5, "ticket": big}, event_id=f"{prefix}:big-in-data", name="Zoë"),
        {**envelope(f"{prefix}-odd", "email", "2025-01-06T09:00:00Z", {"direction": "outbound"},
                    event_id=f"{prefix}:extra"), "campaign": {"id": "c-1", "weights": [1, 2.5, {"x": "1e400"}]}},
        {**envelope(f"{prefix}-odd", "email", "2025-01-07T09:00:00Z", {"direction": "inbound"},
                    event_id=f"{prefix}:big-in-extra"), "ref": big},
        envelope(f"{prefix}-odd", "survey_response", "2025-01-08T09:00:00Z",
                 {"kind": "nps", "score": 9, "comment": 'a "_type_": in a string'}, event_id=f"{prefix}:quote"),
    ]


def stored(store: InteractionLog, after: int) -> list[Notification]:
    return list(store.recorder.select_notifications(start=after, limit=1000, inclusive_of_start=False))


def same_event(fast: Any, slow: Any) -> None:
    assert type(fast) is type(slow)
    assert fast.__dict__ == slow.__dict__
    assert repr(fast.__dict__) == repr(slow.__dict__)  # also the types: 1 is not 1.0, Decimal is not str


def test_pages_hold_the_notifications_and_events_the_library_gives(store: InteractionLog) -> None:
    prefix = f"pages{uuid.uuid4().hex[:8]}"
    head = store.recorder.max_notification_id() or 0
    customers = aggregates(history(prefix) + odd_messages(prefix))
    store.save(*customers)
    pages = LogPages(store.recorder, store.mapper)

    expected = stored(store, head)
    assert pages.read(head, 1000) == expected
    assert pages.read(head, 3) == expected[:3]
    assert pages.read(head, 1000, stop=expected[4].id) == expected[:5]

    short = 0
    for notification in expected:
        slow = store.mapper.to_domain_event(notification)
        same_event(pages.decode(notification), slow)
        if pages.decode_short(notification) is not None:
            short += 1
            same_event(pages.decode_short(notification), slow)
    # Their odd values (an integer beyond 64 bits, unknown fields) are personal fields: sealed, and opened by
    # the transcoder on both paths (eventstore.sealing), so the short path gives the mapper's event for them too.
    odd = {f"{prefix}:big-in-data", f"{prefix}:extra", f"{prefix}:big-in-extra"}
    for notification in expected:
        event = store.mapper.to_domain_event(notification)
        if getattr(event, "event_id", None) in odd:
            assert b'"sealed"' in notification.state, event.event_id
            same_event(pages.decode_short(notification), event)
    assert short >= len(history(prefix)), "plain interaction events take the short path"


def test_a_typed_value_deeper_in_the_state_goes_to_the_mapper(store: InteractionLog) -> None:
    """A Decimal (or any transcoded value) below the top level is revived by the transcoder."""
    customer = Customer(f"deep{uuid.uuid4().hex[:8]}")
    customer.record(validate_envelope(envelope(customer.customer_key, "call", "2025-02-01T00:00:00Z",
                                               {"direction": "inbound", "duration_seconds": 1})))
    [_, event] = customer.collect_events()
    event.__dict__["data"] = {**event.data, "amount": Decimal("1.10"), "when": event.occurred_at}
    stored_event = store.mapper.to_stored_event(event)
    notification = Notification(id=1, **stored_event.__dict__)
    pages = LogPages(store.recorder, store.mapper)
    # Unknown fields of a call are personal: sealed, and revived by the transcoder when opened, on either path.
    assert b'"sealed"' in notification.state and b"1.10" not in notification.state
    same_event(pages.decode_short(notification), store.mapper.to_domain_event(notification))
    same_event(pages.decode(notification), store.mapper.to_domain_event(notification))
    assert pages.decode(notification).data["amount"] == Decimal("1.10")


@pytest.mark.parametrize("data", [
    {"direction": "inbound", "duration_seconds": 5, "agent": "Zoë", "note": 'a "quote" and \\ and \n'},
    {"ticket": 123456789012345678901234567890, "nested": {"list": [1, "2", None, True]}},
    {"emoji": "🙂", "empty": {}, "zero": 0, "negative": -(2**63)},
])
def test_the_timeline_writes_an_events_data_as_the_standard_library_would(data: dict[str, Any]) -> None:
    written = json_bytes(data)
    assert json.loads(written) == data
    assert json.loads(written) == json.loads(json.dumps(data))
