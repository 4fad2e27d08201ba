"""The Customer aggregate: registration, the four recorded facts, identifiers, and rebuilding."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application

from domain.contract import Envelope, parse_envelope
from domain.customer import Customer, customer_id_for, interaction_after
from tests.unit.examples import CUSTOMER, DATA, example

EVENT_CLASSES = {
    "call": Customer.CallLogged,
    "email": Customer.EmailLogged,
    "purchase": Customer.PurchaseRecorded,
    "survey_response": Customer.SurveyAnswered,
}
# 2026-03-01T10:15:00+05:30 in UTC
OCCURRED_UTC = datetime(2026, 3, 1, 4, 45, tzinfo=UTC)


def envelope(type_: str = "call", **changes: Any) -> Envelope:
    """A parsed envelope of `type_` (the contract's example), with top-level fields changed."""
    obj = example(type_)
    obj.update(changes)
    return parse_envelope(json.dumps(obj).encode())


def interactions_of(customer: Customer) -> list[Customer.Interaction]:
    return [e for e in customer.pending_events if isinstance(e, Customer.Interaction)]


def at(day: int) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)).isoformat()


# --- registration -------------------------------------------------------------------------


def test_the_same_key_always_gives_the_same_customer_id() -> None:
    assert Customer("crm-42").id == Customer("crm-42").id == customer_id_for("crm-42")


def test_different_keys_give_different_customer_ids() -> None:
    keys = ["crm-42", "crm-43", "ana@example.com", "+94771234567", "CRM-42"]
    assert len({customer_id_for(k) for k in keys}) == len(keys)


def test_the_customer_id_is_pinned_so_existing_streams_are_never_orphaned() -> None:
    # uuid5 of a fixed namespace: this value must never change between releases.
    assert customer_id_for("crm-42") == UUID("65e96bea-e67a-56e8-8ad8-dba0b32bb27c")
    assert customer_id_for("crm-42").version == 5


def test_registering_emits_one_registered_event_with_the_key() -> None:
    customer = Customer("crm-42")
    events = customer.pending_events
    assert len(events) == 1
    assert isinstance(events[0], Customer.Registered)
    assert events[0].customer_key == "crm-42"  # type: ignore[attr-defined]
    assert events[0].originator_id == customer.id
    assert events[0].originator_version == 1


def test_a_new_customer_starts_empty_at_version_one() -> None:
    customer = Customer("crm-42")
    assert customer.version == 1
    assert customer.customer_key == "crm-42"
    assert customer.name is None
    assert customer.emails == []
    assert customer.phones == []
    assert customer.interactions == 0


# --- recording the four interaction types --------------------------------------------------


@pytest.mark.parametrize("type_", list(EVENT_CLASSES))
def test_each_type_is_recorded_as_its_own_event_class(type_: str) -> None:
    customer = Customer("crm-42")
    customer.record(envelope(type_))
    (event,) = interactions_of(customer)
    assert type(event) is EVENT_CLASSES[type_]


# The examples' data as stored: a call in call data version 2 (310 s = 310,000 ms), the rest as sent.
STORED_DATA = {**DATA, "call": {"direction": "inbound", "duration_ms": 310_000, "outcome": "resolved", "agent": "kasun"}}


@pytest.mark.parametrize("type_", list(EVENT_CLASSES))
def test_the_recorded_event_carries_the_envelope_content(type_: str) -> None:
    customer = Customer("crm-42")
    customer.record(envelope(type_))
    (event,) = interactions_of(customer)
    assert event.event_id == f"pbx-01:{type_}:998877"
    assert event.source == "pbx-01"
    assert event.schema_version == 1
    assert event.customer == CUSTOMER
    assert event.data == STORED_DATA[type_]
    assert event.extra == {}


def test_occurred_at_is_stored_in_utc() -> None:
    customer = Customer("crm-42")
    customer.record(envelope("call", occurred_at="2026-03-01T10:15:00+05:30"))
    (event,) = interactions_of(customer)
    assert event.occurred_at == OCCURRED_UTC
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == 4 and event.occurred_at.minute == 45


def test_decimal_amounts_are_kept_as_exact_strings() -> None:
    customer = Customer("crm-42")
    data = {
        "order_id": "ord-1",
        "amount": 120.50,  # a JSON number
        "currency": "USD",
        "items": [
            {"sku": "sku-1", "quantity": 1, "unit_price": "0.10"},
            {"sku": "sku-2", "quantity": 3, "unit_price": 40},
        ],
    }
    customer.record(envelope("purchase", data=data))
    (event,) = interactions_of(customer)
    assert event.data["amount"] == "120.5"
    assert event.data["items"] == [
        {"sku": "sku-1", "quantity": 1, "unit_price": "0.10"},
        {"sku": "sku-2", "quantity": 3, "unit_price": "40"},
    ]


def test_a_json_number_amount_keeps_every_digit() -> None:
    customer = Customer("crm-42")
    raw = (
        b'{"event_id": "e1", "type": "purchase", "occurred_at": "2026-03-01T00:00:00Z",'
        b' "customer": {"id": "crm-42"}, "data": {"order_id": "o", "amount": 1234567890.123456789,'
        b' "currency": "USD"}}'
    )
    customer.record(parse_envelope(raw))
    (event,) = interactions_of(customer)
    assert event.data["amount"] == "1234567890.123456789"


def test_unknown_envelope_fields_are_kept_in_extra() -> None:
    customer = Customer("crm-42")
    customer.record(envelope("email", campaign_ref="cmp-9", meta={"region": "south", "tags": ["a", "b"]}))
    (event,) = interactions_of(customer)
    assert event.extra == {"campaign_ref": "cmp-9", "meta": {"region": "south", "tags": ["a", "b"]}}
    # ... and not mixed into the known fields
    assert "campaign_ref" not in event.data
    assert event.event_id == "pbx-01:email:998877"


def test_unknown_fields_inside_data_and_customer_are_kept_where_they_were() -> None:
    customer = Customer("crm-42")
    data = {**DATA["call"], "queue": "billing"}
    customer.record(envelope("call", data=data, customer={**CUSTOMER, "tier": "gold"}))
    (event,) = interactions_of(customer)
    assert event.data["queue"] == "billing"
    assert event.customer["tier"] == "gold"
    assert event.extra == {}


def test_source_and_version_are_carried_over_and_default_sensibly() -> None:
    customer = Customer("crm-42")
    customer.record(envelope("call", source="pbx-02", version=2, data={"direction": "inbound", "duration_ms": 1}))
    bare = {
        "event_id": "e2",
        "type": "email",
        "occurred_at": "2026-03-02T00:00:00Z",
        "customer": {"id": "crm-42"},
        "data": {"direction": "inbound"},
    }
    customer.record(parse_envelope(json.dumps(bare)))
    first, second = interactions_of(customer)
    assert (first.source, first.schema_version) == ("pbx-02", 2)
    assert (second.source, second.schema_version) == (None, 1)


def test_versions_increase_by_one_per_recorded_event() -> None:
    customer = Customer("crm-42")
    for n, type_ in enumerate(["call", "email", "purchase", "survey_response", "call"], start=1):
        customer.record(envelope(type_, event_id=f"e{n}"))
    assert [e.originator_version for e in customer.pending_events] == [1, 2, 3, 4, 5, 6]
    assert all(e.originator_id == customer.id for e in customer.pending_events)
    assert customer.version == 6
    assert customer.interactions == 5


# --- identifiers and name ----------------------------------------------------------------------


def test_identifiers_accumulate_in_first_seen_order_without_repeats() -> None:
    customer = Customer("crm-42")
    seen = [
        {"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567"},
        {"id": "crm-42", "email": "ana@work.example", "phone": "+94771234567"},
        {"id": "crm-42", "email": "ana@example.com"},
        {"id": "crm-42", "phone": "+94112223344"},
        {"id": "crm-42"},
    ]
    for n, ref in enumerate(seen):
        customer.record(envelope("call", event_id=f"e{n}", customer=ref))
    assert customer.emails == ["ana@example.com", "ana@work.example"]
    assert customer.phones == ["+94771234567", "+94112223344"]


def test_the_name_follows_the_latest_occurred_at_in_order() -> None:
    customer = Customer("crm-42")
    customer.record(envelope("call", event_id="e1", occurred_at=at(1), customer={"id": "crm-42", "name": "Ana"}))
    customer.record(
        envelope("call", event_id="e2", occurred_at=at(2), customer={"id": "crm-42", "name": "Ana Perera"})
    )
    assert customer.name == "Ana Perera"


def test_the_name_follows_the_latest_occurred_at_even_when_recorded_out_of_order() -> None:
    customer = Customer("crm-42")
    customer.record(
        envelope("call", event_id="new", occurred_at=at(10), customer={"id": "crm-42", "name": "Ana Perera"})
    )
    customer.record(envelope("call", event_id="old", occurred_at=at(1), customer={"id": "crm-42", "name": "Ana"}))
    assert customer.name == "Ana Perera"


def test_an_event_without_a_name_keeps_the_known_name() -> None:
    customer = Customer("crm-42")
    customer.record(envelope("call", event_id="e1", occurred_at=at(1), customer={"id": "crm-42", "name": "Ana"}))
    customer.record(envelope("call", event_id="e2", occurred_at=at(2), customer={"id": "crm-42"}))
    assert customer.name == "Ana"


# --- rebuilding from the event store -----------------------------------------------------------


def a_customer_with_every_event_type() -> Customer:
    customer = Customer("crm-42")
    customer.record(envelope("call", event_id="e1", occurred_at=at(5), extra_field={"n": 1}))
    customer.record(
        envelope("email", event_id="e2", occurred_at=at(1), customer={"id": "crm-42", "email": "a@b.example"})
    )
    customer.record(envelope("purchase", event_id="e3", occurred_at=at(3)))
    customer.record(envelope("survey_response", event_id="e4", occurred_at=at(4)))
    return customer


def test_every_event_class_survives_the_transcoder_round_trip() -> None:
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    customer = a_customer_with_every_event_type()
    events = list(customer.pending_events)
    assert {type(e) for e in events} == {Customer.Registered, *EVENT_CLASSES.values()}
    for event in events:
        again = app.mapper.to_domain_event(app.mapper.to_stored_event(event))
        assert type(again) is type(event)
        assert again == event
        if isinstance(event, Customer.Interaction):
            assert again.occurred_at.utcoffset() == timedelta(0)  # type: ignore[attr-defined]
            assert again.data == event.data  # type: ignore[attr-defined]


def test_the_aggregate_rebuilt_from_its_events_equals_the_original() -> None:
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    customer = a_customer_with_every_event_type()
    events = list(customer.pending_events)
    app.save(customer)

    stored = list(app.repository.event_store.get(customer.id))
    assert stored == events

    rebuilt = app.repository.get(customer.id)
    assert rebuilt == customer
    assert rebuilt.version == 5
    assert rebuilt.name == "Ana Perera"
    assert rebuilt.emails == ["ana@example.com", "a@b.example"]
    assert rebuilt.phones == ["+94771234567"]
    assert rebuilt.interactions == 4


def test_a_rebuilt_aggregate_goes_on_recording_where_it_left_off() -> None:
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    customer = a_customer_with_every_event_type()
    app.save(customer)
    rebuilt = app.repository.get(customer.id)
    rebuilt.record(
        envelope("call", event_id="e5", occurred_at=at(0), customer={"id": "crm-42", "name": "Old Name"})
    )
    app.save(rebuilt)
    again = app.repository.get(customer.id)
    assert again.version == 6
    assert again.interactions == 5
    assert again.name == "Ana Perera"  # the name recorded last is older
    assert again == rebuilt


@pytest.mark.parametrize("type_", list(EVENT_CLASSES))
def test_the_fact_made_without_loading_the_customer_is_stored_as_record_stores_it(type_: str) -> None:
    """Ingest makes facts from a stream's version alone (`interaction_after`); they must be the
    bytes `Customer.record` would have stored, and rebuild the same aggregate."""
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    customer = a_customer_with_every_event_type()
    app.save(customer)
    made = envelope(type_, event_id="e9", occurred_at=at(9), extra_field={"kept": [1, "two"]})
    fact = interaction_after(made, customer.id, customer.version)
    customer.record(made)
    (recorded,) = customer.collect_events()

    def stored_without_timestamp(event: Any) -> tuple[Any, ...]:
        stored = app.mapper.to_stored_event(event)
        state = json.loads(stored.state)
        del state["timestamp"]
        return stored.originator_id, stored.originator_version, stored.topic, list(state.items())

    assert type(fact) is type(recorded) is EVENT_CLASSES[type_]
    assert stored_without_timestamp(fact) == stored_without_timestamp(recorded)
    app.save(fact)
    rebuilt = app.repository.get(customer.id)
    assert rebuilt.modified_on == fact.timestamp
    assert {**vars(rebuilt), "_modified_on": None} == {**vars(customer), "_modified_on": None}
