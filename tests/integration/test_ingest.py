"""Ingest against the real broker and database: stored once, duplicates ignored, bad input dead-lettered."""

from __future__ import annotations

import json
import threading

import pytest

from domain.customer import customer_id_for
from eventstore import tables
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer, interaction_log
from services.settings import Settings
from tests.support import drain, encode, envelope, new_customer_id, publish, read_topic, stored_event_ids, wait_for

pytestmark = pytest.mark.integration

CALL = {"direction": "inbound", "duration_seconds": 60}


def test_valid_events_are_stored_once_and_duplicates_are_ignored(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    events = [envelope(customer, "call", f"2026-01-0{i}T10:00:00Z", CALL) for i in range(1, 6)]
    reserialized = [json.dumps(dict(reversed(list(e.items()))), indent=2).encode() for e in events[:2]]
    publish(settings, [*events, events[0], events[3]])
    publish(settings, reserialized, key=customer.encode())
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)

    assert sorted(stored_event_ids(store, [customer])) == sorted(e["event_id"] for e in events)
    assert consumer.stats.duplicates == 4
    assert consumer.stats.dead_lettered == 0
    assert store.repository.get(customer_id_for(customer)).interactions == 5


def test_duplicate_of_an_event_stored_by_an_earlier_run_is_ignored(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    first = envelope(customer, "email", "2026-02-01T09:00:00+05:30", {"direction": "outbound"})
    publish(settings, [first])
    drain(ingest_consumer(settings, store), settings)
    publish(settings, [first])
    later = ingest_consumer(settings, interaction_log(settings))  # a new process: nothing cached
    drain(later, settings)

    assert stored_event_ids(store, [customer]) == [first["event_id"]]
    assert later.stats.duplicates == 1


def test_conflicting_reuse_of_an_event_id_is_dead_lettered(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    original = envelope(customer, "purchase", "2026-03-01T10:00:00Z",
                        {"order_id": "o-1", "amount": "10.00", "currency": "USD"})
    altered = {**original, "data": {**original["data"], "amount": "99.00"}}
    publish(settings, [original, altered])
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)

    assert stored_event_ids(store, [customer]) == [original["event_id"]]
    [letter] = read_topic(settings, settings.dead_letter_topic, expected=1)
    assert letter.value == encode(altered)
    assert "conflict" in letter.headers["rapport-error"]
    assert original["event_id"] in letter.headers["rapport-error"]


INVALID_MESSAGES: dict[str, bytes] = {
    "not JSON": b"{this is not json",
    "not UTF-8": b'{"event_id": "\xff\xfe"}',
    "a JSON array": b"[1, 2, 3]",
    "missing event_id": encode({"type": "call", "occurred_at": "2026-01-01T00:00:00Z",
                                "customer": {"id": "c"}, "data": CALL}),
    "event_id too long": encode(envelope("c", "call", "2026-01-01T00:00:00Z", CALL, event_id="x" * 201)),
    "unknown type": encode({**envelope("c", "call", "2026-01-01T00:00:00Z", CALL), "type": "sms"}),
    "naive occurred_at": encode(envelope("c", "call", "2026-01-01T00:00:00", CALL)),
    "customer without identifiers": encode({**envelope("c", "call", "2026-01-01T00:00:00Z", CALL),
                                            "customer": {"name": "Nobody"}}),
    "missing data": encode({k: v for k, v in envelope("c", "call", "2026-01-01T00:00:00Z", CALL).items()
                            if k != "data"}),
    "call direction": encode(envelope("c", "call", "2026-01-01T00:00:00Z",
                                      {"direction": "sideways", "duration_seconds": 1})),
    "negative duration": encode(envelope("c", "call", "2026-01-01T00:00:00Z",
                                         {"direction": "inbound", "duration_seconds": -1})),
    "negative amount": encode(envelope("c", "purchase", "2026-01-01T00:00:00Z",
                                       {"order_id": "o", "amount": "-5", "currency": "USD"})),
    "bad currency": encode(envelope("c", "purchase", "2026-01-01T00:00:00Z",
                                    {"order_id": "o", "amount": "5", "currency": "usd1"})),
    "item quantity 0": encode(envelope("c", "purchase", "2026-01-01T00:00:00Z",
                                       {"order_id": "o", "amount": "5", "currency": "USD",
                                        "items": [{"sku": "s", "quantity": 0, "unit_price": "5"}]})),
    "NPS out of range": encode(envelope("c", "survey_response", "2026-01-01T00:00:00Z", {"kind": "nps", "score": 11})),
    "CSAT out of range": encode(envelope("c", "survey_response", "2026-01-01T00:00:00Z", {"kind": "csat", "score": 0})),
    "unknown survey kind": encode(envelope("c", "survey_response", "2026-01-01T00:00:00Z", {"kind": "ces", "score": 3})),
    "email without direction": encode(envelope("c", "email", "2026-01-01T00:00:00Z", {"subject": "hi"})),
}


def test_every_kind_of_invalid_message_is_dead_lettered_with_its_reason(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    valid_before = envelope(customer, "call", "2026-01-01T10:00:00Z", CALL)
    valid_after = envelope(customer, "call", "2026-01-02T10:00:00Z", CALL)
    # All on one partition, between two valid events: the consumer must keep going.
    publish(settings, [encode(valid_before), *INVALID_MESSAGES.values(), encode(valid_after)], key=customer.encode())
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)

    assert sorted(stored_event_ids(store, [customer])) == sorted([valid_before["event_id"], valid_after["event_id"]])
    letters = read_topic(settings, settings.dead_letter_topic, expected=len(INVALID_MESSAGES))
    assert sorted(letter.value for letter in letters) == sorted(INVALID_MESSAGES.values())
    by_value = {letter.value: letter for letter in letters}
    offsets = set()
    for kind, raw in INVALID_MESSAGES.items():
        headers = by_value[raw].headers
        assert len(headers["rapport-error"]) > 10, kind
        assert headers["rapport-source-topic"] == settings.topic
        assert by_value[raw].key == customer.encode()
        offsets.add((headers["rapport-source-partition"], headers["rapport-source-offset"]))
    assert len(offsets) == len(INVALID_MESSAGES)  # each names its own source offset
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        kept = conn.execute(f"SELECT count(*) AS n FROM {tables.DEAD_LETTERS} WHERE source_topic = %s",
                            (settings.topic,)).fetchone()
    assert kept["n"] == len(INVALID_MESSAGES)


@pytest.mark.parametrize(("kind", "field"), [
    ("naive occurred_at", "occurred_at"), ("negative duration", "data.duration_seconds"),
    ("bad currency", "data.currency"), ("item quantity 0", "data.items.0.quantity"),
    ("NPS out of range", "data.score"), ("missing event_id", "event_id"),
])
def test_dead_letter_reason_names_the_field(settings: Settings, store: InteractionLog, kind: str, field: str) -> None:
    publish(settings, [INVALID_MESSAGES[kind]], key=b"c")
    drain(ingest_consumer(settings, store), settings)
    [letter] = read_topic(settings, settings.dead_letter_topic, expected=1)
    assert letter.headers["rapport-error"].startswith(f"{field}:")


def test_a_restarted_consumer_resumes_after_the_stored_offsets(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    first = [envelope(customer, "call", f"2026-04-0{i}T10:00:00Z", CALL) for i in range(1, 4)]
    publish(settings, first)
    drain(ingest_consumer(settings, store), settings)
    second = [envelope(customer, "call", f"2026-05-0{i}T10:00:00Z", CALL) for i in range(1, 4)]
    publish(settings, second)
    restarted = ingest_consumer(settings, interaction_log(settings))
    drain(restarted, settings)

    assert restarted.stats.messages == 3  # only the new ones were read again
    assert sorted(stored_event_ids(store, [customer])) == sorted(e["event_id"] for e in first + second)


def test_a_stop_request_finishes_the_batch_and_leaves_the_group(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    publish(settings, [envelope(customer, "call", "2026-06-01T10:00:00Z", CALL)])
    consumer = ingest_consumer(settings, store)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    wait_for(lambda: consumer.stats.stored == 1, timeout=60, what="the event to be stored")
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
