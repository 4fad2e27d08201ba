"""No stalled consumer (issue 15): a few hundred hostile messages, interleaved with valid events, go
through the real ingest consumer, and every one of them is accounted for exactly once.

The mix is random but seeded (`RAPPORT_FUZZ_SEED`, printed on failure; `RAPPORT_FUZZ_SCALE=10` makes
ten times as many): garbage bytes, tombstones (no value), empty and blank values, JSON that is not
an object, NaN tokens, duplicate keys, nesting deeper than any decoder goes, integers of thousands
of digits under keys holding NUL or a lone surrogate, envelopes that break one rule each, messages
just under and just over 1 MiB, exact repeats of valid events and conflicting re-uses of their
`event_id`; keys that are None, empty or binary, and headers with binary values or Rapport's own
names. Each message's expected fate (stored, duplicate, dead-lettered) is known by construction.

After ingest has read to the end of the topic: what it counted (its stats and the counters kept in
the database) adds up to what was published; the dead-letter topic and table hold exactly the
messages expected there, with their original bytes, a reason and their source position; every
valid event is stored once; and ingest's stored position is at the end of every partition.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from consumers.ingest import ERROR_HEADER, kafka_producer
from domain.contract import MAX_MESSAGE_BYTES
from eventstore import tables
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer
from services.settings import Settings
from tests.support import drain, end_offsets, envelope, new_customer_id, stored_event_ids

pytestmark = pytest.mark.integration

SCALE = max(1, int(os.environ.get("RAPPORT_FUZZ_SCALE", "1")))
SEED = int(os.environ.get("RAPPORT_FUZZ_SEED", "20260315"))
HOSTILE = 300 * SCALE  # besides them: valid events, their repeats and conflicting re-uses
VALID = 150 * SCALE

STORED, DUPLICATE, DEAD = "stored", "duplicate", "dead-lettered"
AT = "2026-05-{day:02d}T{hour:02d}:15:00+05:30"


@dataclass
class Message:
    """One message to publish, with what ingest must do with it."""

    value: bytes | None
    key: bytes | None
    fate: str
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    event_id: str | None = None  # of a valid event (stored or duplicate)
    what: str = ""
    partition: int = -1  # where Kafka put it
    offset: int = -1


def valid_data(rng: random.Random, event_type: str) -> dict[str, Any]:
    return {
        "call": lambda: {"direction": rng.choice(["inbound", "outbound"]), "duration_seconds": rng.randint(0, 604_800)},
        "email": lambda: {"direction": rng.choice(["inbound", "outbound"]), "subject": rng.choice(["", "hi", "ü\u2028"])},
        "purchase": lambda: {"order_id": f"o-{rng.randrange(10**9)}", "currency": rng.choice(["USD", "EUR", "LKR"]),
                             "amount": f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}"},
        "survey_response": lambda: rng.choice([{"kind": "nps", "score": rng.randint(0, 10)},
                                               {"kind": "csat", "score": rng.randint(1, 5)}]),
    }[event_type]()


def valid_event(rng: random.Random, customers: list[str]) -> dict[str, Any]:
    event_type = rng.choice(["call", "email", "purchase", "survey_response"])
    at = AT.format(day=rng.randint(1, 28), hour=rng.randint(0, 23))
    return envelope(rng.choice(customers), event_type, at, valid_data(rng, event_type))


def encoded(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def with_raw(obj: dict[str, Any], path: tuple[str, ...], raw_json: str) -> bytes:
    """`obj` as JSON with the value at `path` written as the raw JSON text `raw_json`."""
    marker = "\x01RAW\x01"
    target = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = marker
    text = json.dumps(obj)
    return text.replace(json.dumps(marker), raw_json).encode()


def padded_to(obj: dict[str, Any], size: int) -> bytes:
    """`obj` with a `padding` field making its JSON exactly `size` bytes."""
    obj = {**obj, "padding": ""}
    room = size - len(encoded(obj))
    assert room >= 0
    obj["padding"] = "x" * room
    raw = encoded(obj)
    assert len(raw) == size
    return raw


def broken_envelopes(rng: random.Random, base: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Envelopes that each break a rule of contract §1 (or carry what no store can hold)."""
    def changed(**fields: Any) -> bytes:
        return encoded({**base, **fields})

    def data(**fields: Any) -> bytes:
        return encoded({**base, "data": {**base["data"], **fields}})

    deep = "[" * 300 + "]" * 300
    long_integer = "9" * 5000
    return [
        ("naive time", changed(occurred_at="2026-05-01T10:00:00")),
        ("time past the year 9999 in UTC", changed(occurred_at="9999-12-31T23:00:00-05:00")),
        ("unknown type", changed(type="sms")),
        ("type not text", changed(type={"call": 1})),
        ("empty event_id", changed(event_id="")),
        ("event_id of 201 characters", changed(event_id="e" * 201)),
        ("NUL in event_id", changed(event_id=f"nul\x00{rng.randrange(10**6)}")),
        ("lone surrogate in event_id", with_raw({**base}, ("event_id",), '"x\\ud800y"')),
        ("customer without identifiers", changed(customer={"name": "Nobody"})),
        ("unreadable email", changed(customer={"email": "not an email"})),
        ("unreadable phone", changed(customer={"phone": "call me maybe"})),
        ("customer id too long", changed(customer={"id": "c" * 201})),
        ("data missing", encoded({k: v for k, v in base.items() if k != "data"})),
        ("data a list", changed(data=[1, 2])),
        ("unknown version", changed(version=7)),
        ("version 1e5000", with_raw({**base}, ("version",), "1e5000")),
        ("NaN in data", with_raw({**base, "data": {**base["data"]}}, ("data", "note"), "NaN")),
        ("Infinity in data", with_raw({**base, "data": {**base["data"]}}, ("data", "note"), "-Infinity")),
        ("integer of 5,000 digits", with_raw({**base, "data": {**base["data"]}}, ("data", "note"), long_integer)),
        ("nested 300 deep", with_raw({**base, "data": {**base["data"]}}, ("data", "note"), deep)),
        ("NUL in a key", encoded({**base, "extra": {"\x00": 1}})),
        ("NUL key holding a long integer", with_raw({**base, "data": {**base["data"]}}, ("data", "\x00"), long_integer)),
        ("lone-surrogate key holding a long integer",
         encoded({**base, "data": {**base["data"], "X": 0}}).replace(b'"X": 0', b'"\\ud800": ' + long_integer.encode())),
        ("lone-surrogate key nested too deeply",
         encoded({**base, "data": {**base["data"], "X": 0}}).replace(b'"X": 0', b'"\\udfff": ' + deep.encode())),
        ("duplicate key, the last broken", encoded(base)[:-1] + b', "type": "fax"}'),
        ("trailing data", encoded(base) + b" {}"),
        ("UTF-16", json.dumps(base).encode("utf-16")),
        ("Latin-1 text", encoded({**base, "source": "S"}).replace(b'"S"', '"café"'.encode("latin-1"))),
        ("UTF-8-encoded surrogate", encoded({**base, "source": "S"}).replace(b'"S"', b'"\xed\xa0\x80"')),
        ("over 1 MiB", padded_to(base, MAX_MESSAGE_BYTES + rng.randint(1, 64))),
        ("call of more than a week", data(duration_seconds=604_801)) if base["type"] == "call" else
        ("missing required data field", encoded({**base, "data": {}})),
    ]


GARBAGE_VALUES = [b"", b" ", b"\n\t", b"null", b"[]", b"[1, 2]", b'"an event"', b"1e999999999", b"NaN", b"{",
                  b"{}", b"\x00", b"\xff\xfe\x00", b"[" * 100_000, b'{"event_id": "x"}']


def hostile_key(rng: random.Random, customer: str) -> bytes | None:
    return rng.choice([None, b"", rng.randbytes(rng.randint(1, 16)), b"\xff\x00\xfe", customer.encode()])


def hostile_headers(rng: random.Random) -> list[tuple[str, bytes]]:
    return rng.choice([[], [], [("trace", rng.randbytes(8))], [("rapport-error", b"")],
                       [("rapport-source-offset", b"-1"), ("x", b"")]])


def mix(rng: random.Random, customers: list[str]) -> list[Message]:
    """Valid events, their exact repeats and conflicting re-uses, and hostile messages, shuffled: a
    repeat or conflict is keyed like its original, so it comes after it in the same partition."""
    valid = [valid_event(rng, customers) for _ in range(VALID)]
    messages = [Message(encoded(e), e["customer"]["id"].encode(), STORED, event_id=e["event_id"], what="valid")
                for e in valid]
    # Some valid events under odd keys and headers: the key does not decide validity.
    for message in rng.sample(messages, len(messages) // 5):
        message.key, message.headers = rng.choice([None, b"", rng.randbytes(4)]), hostile_headers(rng)
    tail: list[Message] = []
    for message in rng.sample([m for m in messages if m.key], len(messages) // 5):
        tail.append(Message(message.value, message.key, DUPLICATE, event_id=message.event_id, what="exact repeat"))
    for message in rng.sample([m for m in messages if m.key], len(messages) // 10):
        other = {**json.loads(message.value or b""), "source": "someone else"}
        tail.append(Message(encoded(other), message.key, DEAD, what="conflicting re-use of an event_id"))
    hostile: list[Message] = []
    for _ in range(HOSTILE):
        customer = rng.choice(customers)
        kind = rng.random()
        if kind < 0.15:
            value: bytes | None = rng.randbytes(rng.randint(0, 400))
            what = "random bytes"
        elif kind < 0.25:
            value, what = None, "tombstone"
        elif kind < 0.40:
            value, what = rng.choice(GARBAGE_VALUES), "not an envelope"
        else:
            what, value = rng.choice(broken_envelopes(rng, valid_event(rng, [customer])))
        key = hostile_key(rng, customer)
        if value is None and key is None:  # a tombstone has a key (Kafka clients send no message with neither)
            key = rng.choice([b"", customer.encode(), rng.randbytes(3)])
        hostile.append(Message(value, key, DEAD, hostile_headers(rng), what=what))
    # Two valid events just under the limit.
    for size in (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES - rng.randint(1, 64)):
        event = valid_event(rng, customers)
        hostile.append(Message(padded_to(event, size), None, STORED, event_id=event["event_id"], what="1 MiB"))
    # Originals first within each key (a repeat must meet a stored event); all else interleaved.
    shuffled = messages + hostile
    rng.shuffle(shuffled)
    return shuffled + tail


def publish_all(settings: Settings, messages: list[Message]) -> None:
    """Publish in order, noting where Kafka put each message."""
    producer = kafka_producer(settings.kafka_client_config)
    try:
        futures = [producer.send(settings.topic, value=m.value, key=m.key, headers=m.headers) for m in messages]
        producer.flush()
        for message, future in zip(messages, futures, strict=True):
            metadata = future.get(timeout=60)
            message.partition, message.offset = metadata.partition, metadata.offset
    finally:
        producer.close()


def read_all(settings: Settings, topic: str, expected: int) -> list[Any]:
    """Every record of `topic` from the beginning (at least `expected` of them, or what came in 60 s)."""
    consumer = KafkaConsumer(**settings.kafka_client_config, enable_auto_commit=False, consumer_timeout_ms=2000,
                             max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        for _ in range(30):
            records += list(consumer)
            if len(records) >= expected and all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
        return records
    finally:
        consumer.close()


def dead_letter_rows(store: InteractionLog, topic: str) -> list[dict[str, Any]]:
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        return conn.execute(
            f"SELECT source_partition, source_offset, reason, message_value FROM {tables.DEAD_LETTERS} "
            "WHERE source_topic = %s", (topic,),
        ).fetchall()


def test_hostile_messages_never_stall_ingest_and_every_message_is_accounted_for_once(
        settings: Settings, store: InteractionLog) -> None:
    rng = random.Random(SEED)
    customers = [new_customer_id() for _ in range(25)]
    messages = mix(rng, customers)
    publish_all(settings, messages)
    seed = f"RAPPORT_FUZZ_SEED={SEED}"
    fates = Counter(m.fate for m in messages)
    assert fates[STORED] and fates[DUPLICATE] and fates[DEAD] > HOSTILE // 2, fates

    # Small batches: many of them, each a different mix of kinds and partitions.
    consumer = ingest_consumer(settings.model_copy(update={"ingest_max_poll_records": 41}), store)
    drain(consumer, settings, timeout=180)  # raises if ingest stops on a message or stalls

    # Ingest's stored position is at the end of every partition.
    ends = end_offsets(settings)
    positions = store.interactions.kafka_positions(settings.topic, list(ends))
    assert {p: positions.get(p, -1) + 1 for p, end in ends.items() if end} == {p: e for p, e in ends.items() if e}, seed
    assert sum(ends.values()) == len(messages)

    # Every message counted once, in the right one of the three, by ingest and by the stored counters.
    counted = {STORED: consumer.stats.stored, DUPLICATE: consumer.stats.duplicates, DEAD: consumer.stats.dead_lettered}
    assert consumer.stats.messages == len(messages), seed
    assert counted == dict(fates), seed
    stored_counters = store.interactions.ingest_counters(settings.topic)
    assert {STORED: stored_counters["stored"], DUPLICATE: stored_counters["duplicates"],
            DEAD: stored_counters["dead_lettered"]} == dict(fates), seed

    # Every valid event is stored, once.
    expected_ids = Counter(m.event_id for m in messages if m.fate == STORED)
    assert Counter(stored_event_ids(store, customers)) == expected_ids, seed

    # The dead letters: exactly the expected messages, each with its original bytes, a reason and its source.
    dead = {(m.partition, m.offset): m for m in messages if m.fate == DEAD}
    rows = dead_letter_rows(store, settings.topic)
    assert sorted((r["source_partition"], r["source_offset"]) for r in rows) == sorted(dead), seed
    assert all(r["reason"].strip() and bytes(r["message_value"]) == (dead[r["source_partition"], r["source_offset"]].value
                                                                    or b"") for r in rows), seed
    letters = read_all(settings, settings.dead_letter_topic, expected=len(dead))
    seen: set[tuple[int, int]] = set()
    for letter in letters:
        headers = letter.headers or []
        ours = {name: value for name, value in headers[-4:]}  # ingest appends its four headers last
        assert list(ours) == [ERROR_HEADER, "rapport-source-topic", "rapport-source-partition",
                              "rapport-source-offset"], headers
        source = (int(ours["rapport-source-partition"]), int(ours["rapport-source-offset"]))
        original = dead[source]  # a KeyError: a dead letter of a message that should not be one
        assert ours["rapport-source-topic"].decode() == settings.topic
        assert ours[ERROR_HEADER].decode().strip(), f"dead letter of {original.what!r} without a reason"
        assert letter.value == (original.value or b""), original.what
        assert letter.key == original.key, original.what
        assert headers[:-4] == original.headers, original.what  # the producer's headers, unchanged
        seen.add(source)
    # At-least-once to the topic (a retried batch publishes its dead letters again): each at least once.
    assert seen == set(dead), f"{seed}: {len(set(dead) - seen)} dead letters missing from {settings.dead_letter_topic}"
