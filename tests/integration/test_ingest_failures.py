"""Ingest when things go wrong: poison input, several members, stale caches, lost offsets."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from consumers.ingest import MissingOffsets
from domain.contract import MAX_REASON_CHARS
from domain.customer import customer_id_for
from eventstore import tables
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer, interaction_log
from services.settings import Settings
from services.topics import delete_topics, ensure_topics
from tests.support import (
    drain,
    end_offsets,
    envelope,
    new_customer_id,
    publish,
    read_topic,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

CALL = {"direction": "inbound", "duration_seconds": 60}


POISON = {
    "nested too deeply": b"[" * 100_000,
    "date out of range": json.dumps(envelope("c", "call", "9999-12-31T23:00:00-05:00", CALL)).encode(),
    "NUL in event_id": json.dumps(envelope("c", "call", "2026-01-01T00:00:00Z", CALL, event_id="a\u0000b")).encode(),
    "60,000 broken items": json.dumps(envelope("c", "purchase", "2026-01-01T00:00:00Z", {
        "order_id": "o", "amount": "1", "currency": "USD", "items": [{}] * 60_000})).encode(),
    "customer id too long for an index": json.dumps(envelope("c" * 6000, "call", "2026-01-01T00:00:00Z", CALL)).encode(),
    "1.9 MB, over the 1 MiB limit": b'{"padding": "' + b"x" * 1_900_000 + b'"}',
    "amount beyond any currency": json.dumps(envelope("c", "purchase", "2026-01-01T00:00:00Z", {
        "order_id": "o", "amount": "1E+1000000", "currency": "USD"})).encode(),
}


def test_poison_messages_are_dead_lettered_and_ingest_goes_on(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    after = envelope(customer, "call", "2026-01-02T10:00:00Z", CALL)
    publish(settings, [*POISON.values(), json.dumps(after).encode()], key=customer.encode())
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)

    assert stored_event_ids(store, [customer]) == [after["event_id"]]
    letters = read_topic(settings, settings.dead_letter_topic, expected=len(POISON))
    assert sorted(letter.value for letter in letters) == sorted(POISON.values())
    assert all(0 < len(letter.headers["rapport-error"]) <= MAX_REASON_CHARS for letter in letters)


def _literal(message: dict, literal: str) -> bytes:
    """`message` as JSON with the string "LITERAL" replaced by a raw JSON literal such as 1e5000."""
    text = json.dumps(message)
    assert text.count('"LITERAL"') == 1
    return text.replace('"LITERAL"', literal).encode()


def _huge_numbers(customer: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(rejected: expected reason → message, accepted: event_id → message) with numbers too large."""
    at = "2026-01-01T00:00:00Z"
    purchase = {"order_id": "o", "amount": "1", "currency": "USD"}
    rejected = {
        "data.duration_seconds: must be an integer 0–604,800 (a week at most) (got 1E+400)":
            _literal(envelope(customer, "call", at, {**CALL, "duration_seconds": "LITERAL"}), "1e400"),
        "data.duration_seconds: must be an integer 0–604,800 (a week at most) (got 1E+5000)":
            _literal(envelope(customer, "call", at, {**CALL, "duration_seconds": "LITERAL"}), "1e5000"),
        "data.amount: must have at most 18 digits before the point and 12 after it (got 1E+5000)":
            _literal(envelope(customer, "purchase", at, {**purchase, "amount": "LITERAL"}), "1e5000"),
        "data.score: 1E+5000 is out of range for nps: must be an integer 0–10":
            _literal(envelope(customer, "survey_response", at, {"kind": "nps", "score": "LITERAL"}), "1e5000"),
        "version: must be an integer 1–2,147,483,647 (got 1E+5000)":
            _literal({**envelope(customer, "call", at, CALL), "version": "LITERAL"}, "1e5000"),
        "data.items.0.quantity: must be an integer 1–1,000,000 (got 1E+5000)":
            _literal(envelope(customer, "purchase", at, {**purchase, "items": [
                {"sku": "s", "quantity": "LITERAL", "unit_price": "1"}]}), "1e5000"),
        "data.amount: must have at most 18 digits before the point and 12 after it (got 1234567890123456789)":
            json.dumps(envelope(customer, "purchase", at, {**purchase, "amount": "1234567890123456789"})).encode(),
        "data.note: an integer of 5,000 digits is too long (at most 4,300 digits)":
            _literal(envelope(customer, "call", at, {**CALL, "note": "LITERAL"}), "9" * 5000),
        "data.note: nested too deeply to be stored (300 levels of arrays and objects)":
            _literal(envelope(customer, "call", at, {**CALL, "note": "LITERAL"}), "[" * 300 + "]" * 300),
    }
    accepted = {
        "huge:data": _literal(envelope(customer, "call", at, {**CALL, "note": "LITERAL"}, event_id="huge:data"), "1e5000"),
        "huge:top": _literal({**envelope(customer, "call", at, CALL, event_id="huge:top"), "trace": "LITERAL"}, "1e5000"),
        "huge:week": _literal(envelope(customer, "call", at, {**CALL, "duration_seconds": "LITERAL"}, event_id="huge:week"),
                              "6.048e5"),
    }
    return rejected, accepted


def test_huge_numbers_are_dead_lettered_for_what_they_are_or_kept(settings: Settings, store: InteractionLog) -> None:
    """1e5000 and friends: a known field says which field and why (never "nested too deeply"
    unless it is); an unknown field keeps the value; ingest goes on."""
    customer = new_customer_id()
    rejected, accepted = _huge_numbers(customer)
    publish(settings, [*rejected.values(), *accepted.values()], key=customer.encode())
    drain(ingest_consumer(settings, store), settings)

    letters = read_topic(settings, settings.dead_letter_topic, expected=len(rejected))
    reasons = {letter.value: letter.headers["rapport-error"] for letter in letters}
    assert reasons == {message: reason for reason, message in rejected.items()}
    assert sorted(stored_event_ids(store, [customer])) == sorted(accepted)
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            f"SELECT convert_from(state, 'UTF8')::json AS state FROM {tables.EVENTS} "
            "WHERE originator_id = %s AND originator_version > 1",
            (customer_id_for(customer),),
        ).fetchall()
    stored = {row["state"]["event_id"]: row["state"] for row in rows}
    # Unknown fields are kept, sealed with the customer's personal data (issue 15), and read back as sent.
    assert "note" not in stored["huge:data"]["data"] and "sealed" in stored["huge:data"]
    assert stored["huge:top"]["extra"] == {} and "sealed" in stored["huge:top"]
    assert stored["huge:week"]["data"]["duration_ms"] == 604_800_000  # stored in call data version 2
    events = {e.event_id: e for e in store.events.get(customer_id_for(customer)) if hasattr(e, "event_id")}
    assert events["huge:data"].data["note"] == "1E+5000"
    assert events["huge:top"].extra["trace"] == "1E+5000"


def test_two_members_of_the_group_store_everything_once(settings: Settings, store: InteractionLog) -> None:
    customers = [new_customer_id() for _ in range(60)]
    first = [envelope(c, "email", f"2026-02-{1 + i % 28:02d}T10:00:00Z", {"direction": "outbound"})
             for i, c in enumerate(customers * 20)]
    publish(settings, first)
    small_batches = settings.model_copy(update={"ingest_max_poll_records": 100})
    members = [ingest_consumer(small_batches, interaction_log(settings)) for _ in range(2)]
    stop = threading.Event()
    threads = [threading.Thread(target=m.run, args=(stop,)) for m in members]
    threads[0].start()
    wait_for(lambda: members[0].stats.stored > 0, timeout=60, what="the first member to store events")
    threads[1].start()  # joins mid-stream: a rebalance
    wait_for(lambda: all(m.consumer.assignment() for m in members), timeout=60, what="both members to get partitions")
    second = [envelope(c, "call", f"2026-03-{1 + i % 28:02d}T10:00:00Z", CALL) for i, c in enumerate(customers * 10)]
    publish(settings, second)
    targets = end_offsets(settings)

    def caught_up() -> bool:
        stored = store.interactions.kafka_positions(settings.topic, targets)
        return all(stored.get(p, -1) + 1 >= end for p, end in targets.items())

    try:
        wait_for(caught_up, timeout=120, what="both members to reach the end")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert all(m.stats.batches > 0 for m in members), "both members did some of the work"
    assert Counter(stored_event_ids(store, customers)) == Counter(e["event_id"] for e in first + second)


def test_a_stale_cached_customer_is_detected_and_the_batch_retried(settings: Settings, store: InteractionLog) -> None:
    """Another writer appended to a customer this member has cached (as after a partition moved away
    and back): the save fails the stream's version check, nothing is half-stored, the batch is decided
    again at once from the stored versions (not re-read from Kafka)."""
    customer = new_customer_id()
    other = settings.model_copy(update={"topic": settings.topic + "-other", "consumer_group": settings.consumer_group + "-o"})
    ensure_topics(other.kafka_servers, other.topic, other.dead_letter_topic)
    try:
        member = ingest_consumer(settings, interaction_log(settings))
        publish(settings, [envelope(customer, "call", "2026-04-01T10:00:00Z", CALL)])
        drain_open(member, settings)  # the member now caches the customer
        publish(other, [envelope(customer, "call", "2026-04-02T10:00:00Z", CALL)])
        drain(ingest_consumer(other, interaction_log(other)), other)  # another writer appends
        publish(settings, [envelope(customer, "call", "2026-04-03T10:00:00Z", CALL)])
        drain(member, settings)
    finally:
        delete_topics(other.kafka_servers, [other.topic, other.dead_letter_topic])

    assert (member.stats.redecided_batches, member.stats.retried_batches) == (1, 0)
    assert len(stored_event_ids(store, [customer])) == 3
    assert store.repository.get(customer_id_for(customer)).interactions == 3


def drain_open(consumer, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """Like `drain`, but the member stays in the group (and keeps its cache) afterwards."""
    targets = end_offsets(settings)
    consumer.subscribe()

    def done() -> bool:
        consumer.poll_once()
        stored = consumer.store.interactions.kafka_positions(settings.topic, targets)
        return all(stored.get(p, -1) + 1 >= end for p, end in targets.items())

    wait_for(done, timeout=60, interval=0, what="ingest to reach the end")


def test_messages_deleted_before_ingest_read_them_stop_it_loudly(settings: Settings, store: InteractionLog) -> None:
    customer = new_customer_id()
    publish(settings, [envelope(customer, "call", f"2026-05-0{i}T10:00:00Z", CALL) for i in range(1, 4)])
    drain(ingest_consumer(settings, store), settings)
    publish(settings, [envelope(customer, "call", f"2026-06-0{i}T10:00:00Z", CALL) for i in range(1, 7)])
    [(partition, end)] = [(p, e) for p, e in end_offsets(settings).items() if e]
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    try:
        admin.delete_records({TopicPartition(settings.topic, partition): end - 2})  # as retention would
    finally:
        admin.close()

    restarted = ingest_consumer(settings, interaction_log(settings))
    restarted.subscribe()
    with pytest.raises(MissingOffsets, match="no longer has the messages"):
        wait_for(lambda: restarted.poll_once() and False, timeout=30, what="the missing offsets to be noticed")
    restarted.close()
    assert len(stored_event_ids(store, [customer])) == 3  # nothing after the gap was stored either
