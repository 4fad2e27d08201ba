"""Schema evolution of the `call` event: call data version 2 (`duration_ms`) beside version 1
(`duration_seconds`), unknown versions refused, and calls stored in version 1's shape upcast when read.

Expected values are written out here (milliseconds = seconds × 1000 by hand, fingerprints from the
stdlib's JSON and sha256, stored bytes made by the code before version 2: `tests/stored_v1.py`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import Notification, StoredEvent

from domain.contract import (
    DATA_MODELS,
    Envelope,
    InvalidEvent,
    call_data_v1_to_v2,
    data_in_latest_version,
    parse_envelope,
)
from domain.customer import EVENT_CLASS_BY_TYPE, Customer, interaction_after, interaction_fields
from projections.pages import LogPages
from services.http.events import split_events_body
from tests import stored_v1
from tests.unit.examples import example

V2_DATA = {"direction": "inbound", "duration_ms": 310_250, "outcome": "resolved", "agent": "kasun"}


def v2_call(**data_changes: Any) -> dict[str, Any]:
    """The contract's example call sent as version 2 (310.25 s), with fields of `data` changed or
    removed (None)."""
    obj = example("call")
    obj["version"] = 2
    data = {**V2_DATA, **data_changes}
    obj["data"] = {k: v for k, v in data.items() if v is not None}
    return obj


def parse(obj: Any) -> Envelope:
    return parse_envelope(json.dumps(obj).encode())


def reason_of(obj: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(obj)
    return info.value.reason


def sha256_of_canonical(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def store_mapper() -> Any:
    """The mapper of an application configured as the event store is (its transcoder), in memory."""
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo",
                                              "TRANSCODER_TOPIC": "eventstore.transcoder:FastJSONTranscoder"})
    return app.mapper


def stored_v1_call(version: int = 2) -> StoredEvent:
    """A call stored before version 2 existed (`version`: its position in the stream)."""
    originator_id, originator_version, topic, state = next(r for r in stored_v1.EVENTS if r[1] == version)
    return StoredEvent(originator_id, originator_version, topic, state)


# --- version 2 of call data ---------------------------------------------------------------------


def test_a_version_2_call_is_accepted_with_its_duration_in_milliseconds() -> None:
    event = parse(v2_call())
    assert event.version == 2
    assert event.data == {"direction": "inbound", "duration_ms": 310_250, "outcome": "resolved", "agent": "kasun"}


@pytest.mark.parametrize("duration_ms", [0, 1, 999, 604_800_000], ids=repr)
def test_a_version_2_call_of_up_to_a_week_is_accepted(duration_ms: int) -> None:
    assert parse(v2_call(duration_ms=duration_ms)).data["duration_ms"] == duration_ms


@pytest.mark.parametrize(("value", "shown"), [(-1, "-1"), (604_800_001, "604800001"), (10**30, str(10**30))], ids=repr)
def test_a_version_2_duration_beyond_a_week_or_negative_names_the_field_and_range(value: int, shown: str) -> None:
    assert reason_of(v2_call(duration_ms=value)) == (
        f"data.duration_ms: must be an integer 0–604,800,000 (a week at most) (got {shown})")


@pytest.mark.parametrize("value", ["ten", True, 1.5, [1], {"ms": 1}], ids=repr)
def test_a_version_2_duration_that_is_not_an_integer_is_rejected_naming_the_field(value: Any) -> None:
    assert reason_of(v2_call(duration_ms=value)).startswith("data.duration_ms: ")


def test_a_version_2_call_without_a_duration_names_the_field() -> None:
    assert reason_of(v2_call(duration_ms=None)) == "data.duration_ms: is required"


def test_a_version_2_call_with_duration_seconds_says_to_send_duration_ms_or_version_1() -> None:
    obj = v2_call(duration_ms=None)
    obj["data"]["duration_seconds"] = 310
    assert reason_of(obj) == (
        "data.duration_ms: is required; data.duration_seconds: is a field of version 1 of call; version 2 has "
        'duration_ms instead: send duration_ms, or send "version": 1')


def test_a_version_2_call_with_both_durations_is_rejected_naming_duration_seconds() -> None:
    reason = reason_of(v2_call(duration_seconds=310))
    assert reason.startswith("data.duration_seconds: is a field of version 1 of call")
    assert "duration_ms:" not in reason


def test_a_version_2_calls_other_rules_are_version_1s() -> None:
    reason = reason_of(v2_call(direction="sideways", outcome="hung_up"))
    assert "data.direction: " in reason and "data.outcome: " in reason
    assert "duration" not in reason


def test_a_version_2_call_keeps_unknown_extra_fields() -> None:
    assert parse(v2_call(queue="billing")).data["queue"] == "billing"


# --- version 1 stays valid ----------------------------------------------------------------------


@pytest.mark.parametrize("given", [True, False], ids=["version 1 given", "no version"])
def test_a_version_1_call_is_still_accepted_as_sent(given: bool) -> None:
    obj = example("call")
    if not given:
        del obj["version"]
    event = parse(obj)
    assert event.version == 1
    assert event.data == {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun"}


def test_a_call_with_duration_ms_but_no_version_says_to_send_version_2() -> None:
    obj = example("call")
    del obj["version"]
    obj["data"] = {"direction": "inbound", "duration_ms": 310_250}
    assert reason_of(obj) == (
        "data.duration_seconds: is required; data.duration_ms: is a field of version 2 of call; version 1 "
        '(no "version" given) has duration_seconds instead: send duration_seconds, or send "version": 2')


def test_a_version_1_call_with_duration_ms_beside_duration_seconds_is_rejected_naming_duration_ms() -> None:
    """Kept as an unknown extra, it would meet version 2's duration_ms in the stored shape."""
    obj = example("call")
    obj["data"]["duration_ms"] = 310_250
    assert reason_of(obj) == (
        "data.duration_ms: is a field of version 2 of call; version 1 has duration_seconds instead: "
        'send duration_seconds, or send "version": 2')


# --- unknown versions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "version", "expected"), [
    ("call", 3, "version: 3 is not a version of call: call has versions 1 and 2; send one of them (2 is the latest)"),
    ("call", 2_147_483_647, "version: 2147483647 is not a version of call: call has versions 1 and 2; send one of "
                            "them (2 is the latest)"),
    ("email", 2, "version: 2 is not a version of email: email has version 1 only; send 1, or leave version out"),
    ("purchase", 2, "version: 2 is not a version of purchase: purchase has version 1 only; send 1, or leave version out"),
    ("survey_response", 9, "version: 9 is not a version of survey_response: survey_response has version 1 only; "
                           "send 1, or leave version out"),
])
def test_an_unknown_version_of_a_type_is_rejected_saying_which_versions_exist(type_: str, version: int,
                                                                              expected: str) -> None:
    obj = example(type_)
    obj["version"] = version
    assert reason_of(obj) == expected


def test_an_unknown_version_is_reported_with_the_envelopes_other_problems_but_its_data_is_not_judged() -> None:
    obj = example("call")
    obj.update(version=3, occurred_at="2026-03-01T10:15:00", data={"anything": "goes"})
    reason = reason_of(obj)
    assert "occurred_at: " in reason and "version: 3 is not a version of call" in reason
    assert "data." not in reason


@pytest.mark.parametrize("version", [0, "two", None, True], ids=repr)
def test_a_version_breaking_its_own_rule_is_reported_once(version: Any) -> None:
    obj = example("call")
    obj["version"] = version
    reason = reason_of(obj)
    assert reason.startswith("version: ") and reason.count("version: ") == 1
    assert "data." not in reason


def test_post_events_answers_each_bad_version_with_its_index_and_reason_and_accepts_a_version_2_call() -> None:
    email_v2 = {**example("email"), "event_id": "mail:2", "version": 2}
    body = json.dumps([v2_call(), email_v2, {**v2_call(duration_ms=None), "event_id": "pbx:3"}]).encode()
    items, errors = split_events_body(body)
    assert [envelope.event_id for _, envelope in items] == ["pbx-01:call:998877"]
    assert errors == [
        {"index": 1, "event_id": "mail:2",
         "reason": "version: 2 is not a version of email: email has version 1 only; send 1, or leave version out"},
        {"index": 2, "event_id": "pbx:3", "reason": "data.duration_ms: is required"},
    ]


# --- fingerprints: of the envelope as sent ------------------------------------------------------


def test_a_version_1_call_stored_before_version_2_keeps_its_fingerprint() -> None:
    """The event_id index of the store before version 2 holds this fingerprint (tests/stored_v1.py):
    the same message sent again must be recognised as a duplicate, not a conflict."""
    fingerprints = {event_id: fingerprint for event_id, fingerprint, _, _ in stored_v1.EVENT_IDS}
    for message in stored_v1.MESSAGES:
        if message["type"] == "call" and message.get("version", 1) == 1:
            assert parse(message).fingerprint() == fingerprints[message["event_id"]]


def test_the_fingerprint_of_a_version_1_call_is_of_its_seconds_though_its_fact_holds_milliseconds() -> None:
    event = parse(example("call"))
    sent = {"event_id": "pbx-01:call:998877", "type": "call", "occurred_at": "2026-03-01T04:45:00Z",
            "customer": {"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567", "name": "Ana Perera"},
            "source": "pbx-01", "version": 1,
            "data": {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun"}}
    assert event.fingerprint() == sha256_of_canonical(sent)
    assert interaction_fields(event)["data"] == {"direction": "inbound", "duration_ms": 310_000, "outcome": "resolved",
                                                 "agent": "kasun"}
    assert event.canonical()["data"]["duration_seconds"] == 310  # converting did not touch the envelope
    assert event.fingerprint() == sha256_of_canonical(sent)


def test_the_fingerprint_of_a_version_2_call_is_of_its_content_as_sent() -> None:
    expected = {"event_id": "pbx-01:call:998877", "type": "call", "occurred_at": "2026-03-01T04:45:00Z",
                "customer": {"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567", "name": "Ana Perera"},
                "source": "pbx-01", "version": 2, "data": V2_DATA}
    assert parse(v2_call()).fingerprint() == sha256_of_canonical(expected)


# --- the one conversion, version 1 → 2 ----------------------------------------------------------


def test_the_conversion_turns_seconds_into_milliseconds_in_place_and_keeps_everything_else() -> None:
    v1 = {"direction": "outbound", "duration_seconds": 604_800, "outcome": "voicemail", "queue": {"name": "billing"}}
    before = copy.deepcopy(v1)
    v2 = call_data_v1_to_v2(v1)
    assert list(v2.items()) == [("direction", "outbound"), ("duration_ms", 604_800_000), ("outcome", "voicemail"),
                                ("queue", {"name": "billing"})]
    assert v1 == before


def test_the_conversion_replaces_a_stray_duration_ms_stored_beside_duration_seconds() -> None:
    assert call_data_v1_to_v2({"duration_ms": 7, "duration_seconds": 2}) == {"duration_ms": 2000}
    assert call_data_v1_to_v2({"duration_seconds": 2, "duration_ms": 7}) == {"duration_ms": 2000}


def test_data_in_the_latest_version_converts_old_calls_only() -> None:
    assert data_in_latest_version("call", 1, {"direction": "inbound", "duration_seconds": 3}) == {
        "direction": "inbound", "duration_ms": 3000}
    v2 = {"direction": "inbound", "duration_ms": 3}
    assert data_in_latest_version("call", 2, v2) is v2
    email = {"direction": "inbound"}
    assert data_in_latest_version("email", 1, email) is email


# --- the stored domain event: version 2, upcast from version 1 ----------------------------------


def test_every_interaction_class_is_at_the_latest_version_of_its_data_with_an_upcaster_for_each_step() -> None:
    for event_type, models in DATA_MODELS.items():
        cls = EVENT_CLASS_BY_TYPE[event_type]
        assert getattr(cls, "class_version", 1) == max(models)
        for step in range(1, max(models)):
            assert callable(getattr(cls, f"upcast_v{step}_v{step + 1}"))


def test_the_upcaster_converts_a_stored_v1_calls_state() -> None:
    state = {"event_id": "e", "schema_version": 1, "data": {"direction": "inbound", "duration_seconds": 12},
             "extra": {}}
    Customer.CallLogged.upcast_v1_v2(state)
    assert state == {"event_id": "e", "schema_version": 1, "data": {"direction": "inbound", "duration_ms": 12_000},
                     "extra": {}}


def test_a_call_stored_before_version_2_is_read_with_its_duration_in_milliseconds() -> None:
    event = store_mapper().to_domain_event(stored_v1_call())
    assert type(event) is Customer.CallLogged
    assert event.data == {"direction": "inbound", "duration_ms": 310_000, "outcome": "resolved", "agent": "kasun",
                          "queue": "billing"}
    assert (event.event_id, event.schema_version, event.source) == ("pbx-01:call:1001", 1, "pbx-01")
    assert event.occurred_at == datetime(2025, 1, 10, 4, 45, tzinfo=UTC)
    assert "class_version" not in vars(event)


def test_a_call_stored_before_version_2_that_claimed_version_2_is_upcast_by_its_stored_shape() -> None:
    event = store_mapper().to_domain_event(stored_v1_call(5))
    assert event.schema_version == 2
    assert event.data == {"direction": "outbound", "duration_ms": 0, "outcome": "no_answer"}


def test_ingest_now_records_a_v1_call_as_the_upcast_of_what_it_stored_before() -> None:
    """The same message: made into a fact today, and read from the bytes stored before version 2."""
    mapper = store_mapper()
    old = mapper.to_domain_event(stored_v1_call())
    message = next(m for m in stored_v1.MESSAGES if m["event_id"] == "pbx-01:call:1001")
    new = interaction_after(parse(message), stored_v1.CUSTOMER_ID, 1)
    assert {**vars(new), "timestamp": None} == {**vars(old), "timestamp": None}


@pytest.mark.parametrize("message", [v2_call(), example("call")], ids=["sent as v2", "sent as v1"])
def test_a_call_stored_now_carries_class_version_2_and_is_read_back_unchanged(message: dict[str, Any]) -> None:
    mapper = store_mapper()
    fact = interaction_after(parse(message), stored_v1.CUSTOMER_ID, 1)
    stored = mapper.to_stored_event(fact)
    assert json.loads(stored.state)["class_version"] == 2
    assert "duration_seconds" not in json.loads(stored.state)["data"]
    again = mapper.to_domain_event(stored)
    assert again == fact
    assert again.data == fact.data


@pytest.mark.parametrize("type_", ["email", "purchase", "survey_response"])
def test_the_other_types_are_stored_as_before_without_a_class_version(type_: str) -> None:
    fact = interaction_after(parse(example(type_)), stored_v1.CUSTOMER_ID, 1)
    assert "class_version" not in json.loads(store_mapper().to_stored_event(fact).state)


# --- the projector's short decoding path upcasts as the mapper does ------------------------------


def notification(stored: StoredEvent) -> Notification:
    return Notification(id=1, originator_id=stored.originator_id, originator_version=stored.originator_version,
                        topic=stored.topic, state=stored.state)


@pytest.mark.parametrize("row", stored_v1.EVENTS, ids=lambda row: f"v{row[1]}")
def test_the_short_path_decodes_each_row_stored_before_version_2_as_the_mapper_does(row: Any) -> None:
    mapper = store_mapper()
    stored = notification(StoredEvent(*row))
    fast = LogPages(object(), mapper).decode_short(stored)
    assert fast is not None, "plain rows take the short path"
    slow = mapper.to_domain_event(stored)
    assert type(fast) is type(slow)
    assert repr(vars(fast)) == repr(vars(slow))


def test_the_short_path_upcasts_an_old_call_and_reads_a_new_one_unchanged() -> None:
    mapper = store_mapper()
    pages = LogPages(object(), mapper)
    old = pages.decode_short(notification(stored_v1_call()))
    assert old.data["duration_ms"] == 310_000 and "duration_seconds" not in old.data
    fact = interaction_after(parse(v2_call()), stored_v1.CUSTOMER_ID, 1)
    new = pages.decode_short(notification(mapper.to_stored_event(fact)))
    assert new == fact
    assert "class_version" not in vars(new)
