"""Contract §1 (Kafka envelope and the four event types) as executable rules.

Each test starts from a valid envelope of one type (the contract's example) and changes one thing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contract import (
    MAX_MESSAGE_BYTES,
    Envelope,
    InvalidEvent,
    canonical_json,
    customer_key_of,
    parse_envelope,
    validate_envelope,
)
from tests.unit.examples import CUSTOMER, DATA, example

DELETE = object()  # marker: remove the field instead of setting it

TYPES = tuple(DATA)


def envelope(type_: str = "call", **changes: Any) -> dict[str, Any]:
    """A valid envelope of `type_` (contract example), with top-level fields changed/removed."""
    obj = example(type_)
    return _apply(obj, changes)


def with_data(type_: str = "call", **changes: Any) -> dict[str, Any]:
    """A valid envelope of `type_` with fields of `data` changed/removed."""
    obj = envelope(type_)
    obj["data"] = _apply(obj["data"], changes)
    return obj


def with_customer(**changes: Any) -> dict[str, Any]:
    obj = envelope()
    obj["customer"] = _apply(obj["customer"], changes)
    return obj


def _apply(target: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return target


def parse(obj: Any) -> Envelope:
    return parse_envelope(json.dumps(obj).encode())


def rejected(obj: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(obj)
    assert info.value.reason, "a rejection must carry a reason"
    return info.value


def rejected_raw(raw: bytes | str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_envelope(raw)
    assert info.value.reason
    return info.value


def assert_names(reason: str, path: str) -> None:
    assert f"{path}:" in reason, f"reason should name {path!r}: {reason!r}"


# --- the base envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("type_", TYPES)
def test_contract_example_of_each_type_is_accepted(type_: str) -> None:
    event = parse(envelope(type_))
    assert event.event_id == f"pbx-01:{type_}:998877"
    assert event.type == type_
    assert event.source == "pbx-01"
    assert event.customer.name == "Ana Perera"


@pytest.mark.parametrize("type_", TYPES)
def test_validate_envelope_accepts_decoded_json_like_parse_envelope(type_: str) -> None:
    obj = envelope(type_)
    assert validate_envelope(obj).canonical() == parse(obj).canonical()


def test_validate_envelope_rejects_a_broken_decoded_object() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_envelope(with_data("call", duration_seconds=-1))
    assert_names(info.value.reason, "data.duration_seconds")


def test_parse_envelope_accepts_str_as_well_as_bytes() -> None:
    obj = envelope("email")
    assert parse_envelope(json.dumps(obj)).fingerprint() == parse(obj).fingerprint()


# --- event_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event_id", ["x", "e" * 200, "pbx-01:call:998877", "ünïcode-id"])
def test_event_id_of_1_to_200_chars_is_accepted(event_id: str) -> None:
    assert parse(envelope(event_id=event_id)).event_id == event_id


@pytest.mark.parametrize(
    "event_id",
    [DELETE, "", "e" * 201, 42, None, ["a"], {"id": "a"}],
    ids=["missing", "empty", "201-chars", "number", "null", "array", "object"],
)
def test_event_id_missing_empty_too_long_or_not_a_string_is_rejected(event_id: Any) -> None:
    assert_names(rejected(envelope(event_id=event_id)).reason, "event_id")


# --- type -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_", [DELETE, "sms", "Call", "CALL", "", None, 1, "survey"], ids=repr
)
def test_type_other_than_the_four_is_rejected(type_: Any) -> None:
    assert_names(rejected(envelope("call", type=type_)).reason, "type")


def test_data_is_checked_against_the_declared_type() -> None:
    # email data declared as a call lacks the call's required duration
    obj = envelope("call", data=copy.deepcopy(DATA["email"]))
    assert_names(rejected(obj).reason, "data.duration_seconds")


# --- occurred_at ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-03-01T10:15:00Z", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01T10:15:00+00:00", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("2026-03-01T10:15:00+05:30", datetime(2026, 3, 1, 4, 45, tzinfo=UTC)),
        ("2026-03-01T02:00:00+05:30", datetime(2026, 2, 28, 20, 30, tzinfo=UTC)),
        ("2026-03-01T20:15:00-08:00", datetime(2026, 3, 2, 4, 15, tzinfo=UTC)),
    ],
)
def test_occurred_at_with_offset_is_accepted_and_converted_to_utc(text: str, utc: datetime) -> None:
    event = parse(envelope(occurred_at=text))
    assert event.occurred_at == utc
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == utc.hour  # the wall time is UTC, not just an equal instant


def test_occurred_at_is_returned_in_utc_by_canonical() -> None:
    canonical = parse(envelope(occurred_at="2026-03-01T10:15:00+05:30")).canonical()
    assert canonical["occurred_at"] in ("2026-03-01T04:45:00Z", "2026-03-01T04:45:00+00:00")


@pytest.mark.parametrize(
    ("text", "microsecond"),
    [
        ("2026-03-01T10:15:00.5Z", 500_000),
        ("2026-03-01T10:15:00.250+05:30", 250_000),
        ("2026-03-01T10:15:00.123456Z", 123_456),
    ],
)
def test_occurred_at_fractional_seconds_are_kept(text: str, microsecond: int) -> None:
    event = parse(envelope(occurred_at=text))
    assert event.occurred_at.microsecond == microsecond
    assert event.occurred_at.second == 0


@pytest.mark.parametrize("naive", ["2026-03-01T10:15:00", "2026-03-01T10:15:00.123", "2026-03-01 10:15:00"])
def test_naive_occurred_at_is_rejected(naive: str) -> None:
    reason = rejected(envelope(occurred_at=naive)).reason
    assert_names(reason, "occurred_at")
    assert "offset" in reason  # says what to add


@pytest.mark.parametrize(
    "garbage",
    ["yesterday", "", "2026-03-01", "10:15:00Z", "2026-13-01T10:15:00Z", "2026-02-30T10:15:00Z",
     "2026-03-01T25:15:00Z", "01/03/2026 10:15 +05:30", "2026-03-01T10:15:00+0530"],
)
def test_garbage_occurred_at_is_rejected(garbage: str) -> None:
    assert_names(rejected(envelope(occurred_at=garbage)).reason, "occurred_at")


@pytest.mark.parametrize("value", [1772351700, 1772351700.5, None, True, DELETE, {"at": "2026-03-01T10:15:00Z"}],
                         ids=["epoch-int", "epoch-float", "null", "bool", "missing", "object"])
def test_occurred_at_that_is_a_number_or_not_a_string_is_rejected(value: Any) -> None:
    assert_names(rejected(envelope(occurred_at=value)).reason, "occurred_at")


# --- customer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "key"),
    [
        ({"id": "crm-42"}, "crm-42"),
        ({"email": "ana@example.com"}, "ana@example.com"),
        ({"phone": "+94771234567"}, "+94771234567"),
        ({"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567"}, "crm-42"),
        ({"email": "ana@example.com", "phone": "+94771234567"}, "ana@example.com"),
        ({"id": "crm-42", "phone": "+94771234567"}, "crm-42"),
        ({"phone": "+94771234567", "name": "Ana"}, "+94771234567"),
    ],
)
def test_customer_key_is_id_else_email_else_phone(customer: dict[str, str], key: str) -> None:
    event = parse(envelope(customer=customer))
    assert event.customer_key == key
    assert event.customer.key == key
    assert customer_key_of(envelope(customer=customer)) == key


@pytest.mark.parametrize("field", ["id", "email", "phone"])
def test_customer_with_only_one_identifier_is_enough(field: str) -> None:
    event = parse(envelope(customer={field: CUSTOMER[field]}))
    assert getattr(event.customer, field) == CUSTOMER[field]
    assert event.customer.name is None  # name is optional


@pytest.mark.parametrize(
    "customer",
    [{}, {"name": "Ana Perera"}, {"id": None, "email": None, "phone": None}, {"segment": "vip"}],
    ids=["empty", "name-only", "all-null", "extra-only"],
)
def test_customer_without_id_email_or_phone_is_rejected(customer: dict[str, Any]) -> None:
    assert_names(rejected(envelope(customer=customer)).reason, "customer")


@pytest.mark.parametrize("customer", [DELETE, None, "crm-42", ["crm-42"]], ids=["missing", "null", "string", "array"])
def test_customer_missing_or_not_an_object_is_rejected(customer: Any) -> None:
    assert_names(rejected(envelope(customer=customer)).reason, "customer")


@pytest.mark.parametrize(("field", "value"), [("id", 42), ("email", ["a@b"]), ("phone", 94771234567)])
def test_customer_identifier_that_is_not_a_string_is_rejected(field: str, value: Any) -> None:
    assert_names(rejected(with_customer(**{field: value})).reason, f"customer.{field}")


def test_customer_key_of_a_raw_message_without_identifier_is_none() -> None:
    assert customer_key_of({"customer": {"name": "Ana"}}) is None
    assert customer_key_of({"customer": "crm-42"}) is None
    assert customer_key_of([1, 2]) is None
    assert customer_key_of({"customer": {"id": "", "email": "ana@example.com"}}) == "ana@example.com"


# --- source, version --------------------------------------------------------------------------


def test_source_is_optional() -> None:
    event = parse(envelope(source=DELETE))
    assert event.source is None
    assert "source" not in event.canonical()


def test_source_is_kept_when_given() -> None:
    assert parse(envelope(source="crm-sync")).canonical()["source"] == "crm-sync"


def test_version_is_optional_and_defaults_to_1() -> None:
    event = parse(envelope(version=DELETE))
    assert event.version == 1
    assert event.canonical()["version"] == 1


def test_version_given_is_kept() -> None:
    v2_call = envelope(version=2, data={"direction": "inbound", "duration_ms": 310_000})
    assert parse(v2_call).version == 2
    assert parse(v2_call).canonical()["version"] == 2


# --- data (all types) -------------------------------------------------------------------------


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("data", [DELETE, None, "x", ["direction", "inbound"]], ids=["missing", "null", "string", "array"])
def test_data_missing_or_not_an_object_is_rejected(type_: str, data: Any) -> None:
    assert_names(rejected(envelope(type_, data=data)).reason, "data")


# --- call -------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_call_direction_inbound_or_outbound_is_accepted(direction: str) -> None:
    assert parse(with_data("call", direction=direction)).data["direction"] == direction


@pytest.mark.parametrize("direction", [DELETE, "sideways", "INBOUND", "", None], ids=repr)
def test_call_direction_missing_or_other_is_rejected(direction: Any) -> None:
    assert_names(rejected(with_data("call", direction=direction)).reason, "data.direction")


@pytest.mark.parametrize("seconds", [0, 1, 310, 86_400])
def test_call_duration_seconds_zero_or_more_is_accepted(seconds: int) -> None:
    assert parse(with_data("call", duration_seconds=seconds)).data["duration_seconds"] == seconds


@pytest.mark.parametrize("seconds", [DELETE, -1, -310, "long", None], ids=repr)
def test_call_duration_seconds_missing_negative_or_not_a_number_is_rejected(seconds: Any) -> None:
    assert_names(rejected(with_data("call", duration_seconds=seconds)).reason, "data.duration_seconds")


@pytest.mark.parametrize("outcome", ["resolved", "unresolved", "voicemail", "no_answer"])
def test_call_outcome_values_are_accepted(outcome: str) -> None:
    assert parse(with_data("call", outcome=outcome)).data["outcome"] == outcome


@pytest.mark.parametrize("outcome", ["hung_up", "Resolved", "", 1])
def test_call_outcome_other_value_is_rejected(outcome: Any) -> None:
    assert_names(rejected(with_data("call", outcome=outcome)).reason, "data.outcome")


def test_call_outcome_agent_and_topic_are_optional() -> None:
    event = parse(with_data("call", outcome=DELETE, agent=DELETE, topic=DELETE))
    assert event.data == {"direction": "inbound", "duration_seconds": 310}


def test_call_agent_and_topic_are_kept() -> None:
    data = parse(with_data("call", agent="kasun", topic="billing")).data
    assert (data["agent"], data["topic"]) == ("kasun", "billing")


# --- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_email_direction_inbound_or_outbound_is_accepted(direction: str) -> None:
    assert parse(with_data("email", direction=direction)).data["direction"] == direction


@pytest.mark.parametrize("direction", [DELETE, "sent", "", None], ids=repr)
def test_email_direction_missing_or_other_is_rejected(direction: Any) -> None:
    assert_names(rejected(with_data("email", direction=direction)).reason, "data.direction")


def test_email_subject_and_campaign_are_optional() -> None:
    assert parse(with_data("email", subject=DELETE, campaign=DELETE)).data == {"direction": "outbound"}


def test_email_subject_and_campaign_are_kept() -> None:
    data = parse(envelope("email")).data
    assert (data["subject"], data["campaign"]) == ("Welcome", "spring-2026")


# --- purchase ---------------------------------------------------------------------------------


@pytest.mark.parametrize("order_id", [DELETE, "", None, 17], ids=repr)
def test_purchase_order_id_missing_empty_or_not_a_string_is_rejected(order_id: Any) -> None:
    assert_names(rejected(with_data("purchase", order_id=order_id)).reason, "data.order_id")


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("120.00", "120.00"), (120, "120"), ("0", "0"), (0, "0"), ("19.99", "19.99"), (19.99, "19.99"),
     ("0.10", "0.10"), ("1234567890.123456789", "1234567890.123456789")],
    ids=repr,
)
def test_purchase_amount_accepts_string_or_number(amount: Any, expected: str) -> None:
    event = parse(with_data("purchase", amount=amount))
    assert event.data["amount"] == expected
    assert isinstance(event.data["amount"], str)
    assert Decimal(event.data["amount"]) == Decimal(expected)


def test_purchase_amount_keeps_its_exact_decimal_digits() -> None:
    data = parse(with_data("purchase", amount="0.10", items=[{"sku": "s", "quantity": 3, "unit_price": "0.10"}])).data
    assert data["amount"] == "0.10"
    assert data["items"][0]["unit_price"] == "0.10"
    assert Decimal(data["items"][0]["unit_price"]) * 3 == Decimal("0.30")  # no float 0.30000000000000004


def test_purchase_amount_given_as_a_json_number_is_not_rounded_through_float() -> None:
    raw = json.dumps(with_data("purchase", amount="AMOUNT")).replace('"AMOUNT"', "1234567890.123456789")
    assert Decimal(parse_envelope(raw.encode()).data["amount"]) == Decimal("1234567890.123456789")


@pytest.mark.parametrize(
    "amount", [DELETE, "-0.01", -1, "ten", "", None, "NaN", "Infinity", "-Infinity", [1]], ids=repr
)
def test_purchase_amount_missing_negative_or_not_a_decimal_is_rejected(amount: Any) -> None:
    assert_names(rejected(with_data("purchase", amount=amount)).reason, "data.amount")


@pytest.mark.parametrize("currency", ["USD", "LKR", "EUR", "JPY"])
def test_purchase_currency_of_3_letters_is_accepted(currency: str) -> None:
    assert parse(with_data("purchase", currency=currency)).data["currency"] == currency


@pytest.mark.parametrize("currency", [DELETE, "US", "USDD", "U5D", "", "$", None, 840], ids=repr)
def test_purchase_currency_not_3_letters_is_rejected(currency: Any) -> None:
    assert_names(rejected(with_data("purchase", currency=currency)).reason, "data.currency")


def test_purchase_items_and_channel_are_optional() -> None:
    data = parse(with_data("purchase", items=DELETE, channel=DELETE)).data
    assert data == {"order_id": "ord-1001", "amount": "120.00", "currency": "USD"}


def test_purchase_items_are_kept_with_sku_quantity_and_unit_price() -> None:
    items = [{"sku": "sku-1", "quantity": 2, "unit_price": "60.00"}, {"sku": "sku-9", "quantity": 1, "unit_price": 5}]
    data = parse(with_data("purchase", items=items)).data
    assert data["items"] == [{"sku": "sku-1", "quantity": 2, "unit_price": "60.00"},
                             {"sku": "sku-9", "quantity": 1, "unit_price": "5"}]


def test_purchase_with_empty_items_list_is_accepted() -> None:
    assert parse(with_data("purchase", items=[])).data["items"] == []


@pytest.mark.parametrize("quantity", [0, -1, 1.5, "two", None, DELETE], ids=repr)
def test_purchase_item_quantity_must_be_greater_than_zero(quantity: Any) -> None:
    item = _apply({"sku": "sku-1", "quantity": 2, "unit_price": "60.00"}, {"quantity": quantity})
    assert_names(rejected(with_data("purchase", items=[item])).reason, "data.items.0.quantity")


@pytest.mark.parametrize(("field", "value"), [("sku", DELETE), ("sku", ""), ("unit_price", DELETE),
                                              ("unit_price", "abc")], ids=repr)
def test_purchase_item_without_sku_or_unit_price_is_rejected(field: str, value: Any) -> None:
    item = _apply({"sku": "sku-1", "quantity": 2, "unit_price": "60.00"}, {field: value})
    assert_names(rejected(with_data("purchase", items=[item])).reason, f"data.items.0.{field}")


@pytest.mark.parametrize("items", ["sku-1", {"sku": "sku-1"}, ["sku-1"]], ids=repr)
def test_purchase_items_not_a_list_of_objects_is_rejected(items: Any) -> None:
    assert "data.items" in rejected(with_data("purchase", items=items)).reason


# --- survey_response --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "score"), [("nps", 0), ("nps", 6), ("nps", 10), ("csat", 1), ("csat", 3), ("csat", 5)])
def test_survey_score_within_range_of_its_kind_is_accepted(kind: str, score: int) -> None:
    data = parse(with_data("survey_response", kind=kind, score=score)).data
    assert (data["kind"], data["score"]) == (kind, score)


@pytest.mark.parametrize(("kind", "score"), [("nps", -1), ("nps", 11), ("csat", 0), ("csat", 6), ("csat", 10)])
def test_survey_score_out_of_range_is_rejected_at_both_ends(kind: str, score: int) -> None:
    reason = rejected(with_data("survey_response", kind=kind, score=score)).reason
    assert_names(reason, "data.score")
    assert str(score) in reason


@pytest.mark.parametrize("score", [7.5, 0.5, "seven", None, DELETE, [9]], ids=repr)
def test_survey_score_that_is_not_an_integer_is_rejected(score: Any) -> None:
    assert_names(rejected(with_data("survey_response", score=score)).reason, "data.score")


@pytest.mark.parametrize(("kind", "score"), [("csat", True), ("nps", False)])  # would read as 1 / 0
def test_survey_boolean_score_is_rejected(kind: str, score: bool) -> None:
    assert_names(rejected(with_data("survey_response", kind=kind, score=score)).reason, "data.score")


def test_boolean_call_duration_is_rejected() -> None:
    assert_names(rejected(with_data("call", duration_seconds=True)).reason, "data.duration_seconds")


def test_boolean_item_quantity_is_rejected() -> None:
    items = [{"sku": "sku-1", "quantity": True, "unit_price": "60.00"}]
    assert_names(rejected(with_data("purchase", items=items)).reason, "data.items.0.quantity")


@pytest.mark.parametrize("kind", ["ces", "NPS", "", None, DELETE], ids=repr)
def test_survey_kind_other_than_nps_or_csat_is_rejected(kind: Any) -> None:
    assert_names(rejected(with_data("survey_response", kind=kind)).reason, "data.kind")


def test_survey_id_comment_and_about_event_id_are_optional() -> None:
    data = parse(with_data("survey_response", survey_id=DELETE, comment=DELETE, about_event_id=DELETE)).data
    assert data == {"kind": "nps", "score": 9}


def test_survey_id_comment_and_about_event_id_are_kept() -> None:
    data = parse(envelope("survey_response")).data
    assert (data["survey_id"], data["comment"], data["about_event_id"]) == ("srv-7", "great help", "pbx-01:call:998877")


# --- unknown extra fields ---------------------------------------------------------------------


def test_unknown_extra_envelope_field_is_kept() -> None:
    canonical = parse(envelope(trace_id="t-1", headers={"region": "lk", "hops": [1, 2]})).canonical()
    assert canonical["trace_id"] == "t-1"
    assert canonical["headers"] == {"region": "lk", "hops": [1, 2]}


def test_unknown_extra_customer_field_is_kept() -> None:
    canonical = parse(with_customer(segment="vip", tags=["a", "b"])).canonical()
    assert canonical["customer"]["segment"] == "vip"
    assert canonical["customer"]["tags"] == ["a", "b"]


@pytest.mark.parametrize("type_", TYPES)
def test_unknown_extra_data_field_is_kept(type_: str) -> None:
    event = parse(with_data(type_, queue="priority", meta={"nested": [1, "x", True]}))
    for view in (event.data, event.canonical()["data"]):
        assert view["queue"] == "priority"
        assert view["meta"] == {"nested": [1, "x", True]}


def test_unknown_extra_purchase_item_field_is_kept() -> None:
    items = [{"sku": "sku-1", "quantity": 2, "unit_price": "60.00", "colour": "red"}]
    assert parse(with_data("purchase", items=items)).canonical()["data"]["items"][0]["colour"] == "red"


def test_unknown_extra_fields_change_the_fingerprint() -> None:
    assert parse(envelope(trace_id="t-1")).fingerprint() != parse(envelope(trace_id="t-2")).fingerprint()


# --- raw messages: JSON, UTF-8, size ----------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{'event_id': 'x'}", b'{"event_id": "x",}',
                                 b'{"event_id": "x"} trailing'], ids=repr)
def test_message_that_is_not_json_is_rejected(raw: bytes) -> None:
    error = rejected_raw(raw)
    assert "JSON" in error.reason
    assert error.event_id is None


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_message_with_non_json_number_literals_is_rejected(constant: str) -> None:
    raw = json.dumps(with_data("call", extra="X")).replace('"X"', constant)
    rejected_raw(raw.encode())


def test_message_that_is_not_utf8_is_rejected() -> None:
    raw = json.dumps(with_customer(name="José"), ensure_ascii=False).encode("latin-1")
    assert "UTF-8" in rejected_raw(raw).reason


def test_message_in_utf16_is_rejected() -> None:
    rejected_raw(json.dumps(envelope()).encode("utf-16"))


def test_message_with_utf8_encoded_surrogate_bytes_is_rejected() -> None:
    raw = json.dumps(with_data("call", note="ZZZ")).encode().replace(b"ZZZ", b"\xed\xa0\x80")
    rejected_raw(raw)


def test_accepted_message_with_lone_surrogate_escape_can_be_fingerprinted() -> None:
    raw = json.dumps(with_data("call", note="ZZZ")).replace("ZZZ", "\\ud800").encode()
    try:
        event = parse_envelope(raw)
    except InvalidEvent:
        return  # rejecting it is fine too
    assert len(event.fingerprint()) == 64  # but an accepted event must be hashable/storable


def test_non_ascii_utf8_text_is_accepted() -> None:
    raw = json.dumps(with_customer(name="José Pérera ශ්‍රී"), ensure_ascii=False).encode()
    assert parse_envelope(raw).customer.name == "José Pérera ශ්‍රී"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[]", "array"), (b"[" + json.dumps(envelope()).encode() + b"]", "array"), (b"42", "number"),
     (b"3.5", "number"), (b'"hello"', "string"), (b"null", "null"), (b"true", "boolean")],
    ids=repr,
)
def test_message_that_is_not_a_json_object_is_rejected(raw: bytes, kind: str) -> None:
    reason = rejected_raw(raw).reason
    assert "object" in reason
    assert kind in reason


def _padded(size: int) -> bytes:
    """A valid envelope whose UTF-8 JSON is exactly `size` bytes."""
    obj = envelope(padding="")
    base = len(json.dumps(obj).encode())
    obj["padding"] = "x" * (size - base)
    raw = json.dumps(obj).encode()
    assert len(raw) == size
    return raw


def test_message_of_exactly_1_mib_is_accepted() -> None:
    assert MAX_MESSAGE_BYTES == 1024 * 1024
    assert parse_envelope(_padded(MAX_MESSAGE_BYTES)).event_id == "pbx-01:call:998877"


def test_message_over_1_mib_is_rejected_with_a_reason() -> None:
    reason = rejected_raw(_padded(MAX_MESSAGE_BYTES + 1)).reason
    assert str(MAX_MESSAGE_BYTES + 1) in reason or "1 MiB" in reason


def test_message_size_is_counted_in_utf8_bytes_not_characters() -> None:
    obj = envelope(padding="")
    base = len(json.dumps(obj, ensure_ascii=False).encode())
    obj["padding"] = "é" * ((MAX_MESSAGE_BYTES - base) // 2 + 1)  # 2 bytes each: just over the limit
    text = json.dumps(obj, ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())
    rejected_raw(text)
    rejected_raw(text.encode())


# --- reasons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        (envelope(event_id=""), "event_id"),
        (envelope(type="sms"), "type"),
        (envelope(occurred_at="2026-03-01T10:15:00"), "occurred_at"),
        (envelope(customer={"name": "Ana"}), "customer"),
        (with_customer(email=""), "customer.email"),
        (envelope(data=DELETE), "data"),
        (with_data("call", duration_seconds=-5), "data.duration_seconds"),
        (with_data("call", outcome="hung_up"), "data.outcome"),
        (with_data("email", direction=DELETE), "data.direction"),
        (with_data("purchase", currency="usd$"), "data.currency"),
        (with_data("purchase", items=[{"sku": "a", "quantity": 1, "unit_price": 1},
                                      {"sku": "b", "quantity": 0, "unit_price": 1}]), "data.items.1.quantity"),
        (with_data("survey_response", score=11), "data.score"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_reason_names_the_offending_field_path(obj: dict[str, Any], path: str) -> None:
    assert_names(rejected(obj).reason, path)


def test_reason_shows_the_offending_value() -> None:
    reason = rejected(with_data("call", duration_seconds=-5)).reason
    assert "-5" in reason
    assert "2026-03-01T10:15:00" in rejected(envelope(occurred_at="2026-03-01T10:15:00")).reason


def test_reason_lists_every_broken_rule_at_once() -> None:
    obj = envelope("call", occurred_at="2026-03-01T10:15:00", customer={"name": "Ana"})
    obj["data"] = _apply(obj["data"], {"duration_seconds": -1, "outcome": "hung_up", "direction": DELETE})
    reason = rejected(obj).reason
    for path in ("occurred_at", "customer", "data.duration_seconds", "data.outcome", "data.direction"):
        assert_names(reason, path)


def test_reason_lists_broken_rules_in_several_items() -> None:
    items = [{"sku": "a", "quantity": 0, "unit_price": "1"}, {"sku": "", "quantity": 1, "unit_price": "-"}]
    reason = rejected(with_data("purchase", items=items, currency="US")).reason
    for path in ("data.items.0.quantity", "data.items.1.sku", "data.items.1.unit_price", "data.currency"):
        assert_names(reason, path)


def test_invalid_event_carries_the_event_id_when_the_message_had_one() -> None:
    error = rejected(with_data("call", duration_seconds=-1))
    assert error.event_id == "pbx-01:call:998877"
    assert rejected(envelope(occurred_at="now", event_id="e-7")).event_id == "e-7"
    assert str(error) == error.reason


@pytest.mark.parametrize("event_id", [DELETE, 42, None], ids=repr)
def test_invalid_event_has_no_event_id_when_the_message_had_none(event_id: Any) -> None:
    assert rejected(envelope(event_id=event_id)).event_id is None


def test_invalid_event_from_undecodable_message_has_no_event_id() -> None:
    assert rejected_raw(b'{"event_id": "e1", ').event_id is None


# --- canonical form and fingerprint -----------------------------------------------------------


def test_canonical_is_json_ready_with_nulls_dropped_and_decimals_as_strings() -> None:
    obj = envelope("purchase", source=None)
    obj["customer"] = {"id": "crm-42", "email": None}
    canonical = parse(obj).canonical()
    json.dumps(canonical)  # JSON-ready: no datetime/Decimal objects left
    assert "source" not in canonical
    assert canonical["customer"] == {"id": "crm-42"}
    assert canonical["data"]["amount"] == "120.00"
    assert canonical["occurred_at"].startswith("2026-03-01T04:45:00")


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    fingerprint = parse(envelope()).fingerprint()
    assert len(fingerprint) == 64
    int(fingerprint, 16)


@pytest.mark.parametrize("type_", TYPES)
def test_same_content_with_other_key_order_and_whitespace_has_same_fingerprint(type_: str) -> None:
    obj = envelope(type_)
    compact = json.dumps(obj, separators=(",", ":")).encode()
    reordered = {key: obj[key] for key in reversed(list(obj))}
    reordered["data"] = {key: obj["data"][key] for key in reversed(list(obj["data"]))}
    reordered["customer"] = {key: obj["customer"][key] for key in reversed(list(obj["customer"]))}
    pretty = ("\n  " + json.dumps(reordered, indent=4) + "\n\t").encode()
    assert compact != pretty
    assert parse_envelope(compact).fingerprint() == parse_envelope(pretty).fingerprint()


@pytest.mark.parametrize(
    "other", ["2026-03-01T04:45:00Z", "2026-03-01T04:45:00+00:00", "2026-03-01T05:45:00+01:00",
              "2026-02-28T23:45:00-05:00", "2026-03-01T04:45:00.000Z"]
)
def test_same_instant_with_another_offset_has_same_fingerprint(other: str) -> None:
    base = parse(envelope(occurred_at="2026-03-01T10:15:00+05:30")).fingerprint()
    assert parse(envelope(occurred_at=other)).fingerprint() == base


def test_absent_defaults_and_nulls_do_not_change_the_fingerprint() -> None:
    explicit = parse(envelope(version=1, source=None)).fingerprint()
    assert parse(envelope(version=DELETE, source=DELETE)).fingerprint() == explicit


def test_amount_as_string_or_number_of_the_same_value_has_same_fingerprint() -> None:
    assert parse(with_data("purchase", amount="120")).fingerprint() == parse(with_data("purchase", amount=120)).fingerprint()


@pytest.mark.parametrize(
    "obj",
    [
        envelope(event_id="pbx-01:call:998878"),
        envelope(occurred_at="2026-03-01T10:15:01+05:30"),
        envelope(occurred_at="2026-03-01T10:15:00.000001+05:30"),
        envelope(occurred_at="2026-03-01T10:15:00+05:00"),
        envelope(source="pbx-02"),
        envelope(source=DELETE),
        envelope(version=2, data={"direction": "inbound", "duration_ms": 310_000, "outcome": "resolved",
                                  "agent": "kasun"}),  # the same call sent as version 2 is other content
        with_customer(id="crm-43"),
        with_customer(name="Ana P."),
        with_customer(phone=DELETE),
        with_data("call", direction="outbound"),
        with_data("call", duration_seconds=311),
        with_data("call", outcome="unresolved"),
        with_data("call", agent="nimal"),
        with_data("call", agent=DELETE),
        with_data("call", topic="billing"),
        envelope("call", type="email", data={"direction": "inbound", "duration_seconds": 310,
                                             "outcome": "resolved", "agent": "kasun"}),
    ],
    ids=lambda obj: "",
)
def test_any_changed_value_changes_the_fingerprint(obj: dict[str, Any]) -> None:
    assert parse(obj).fingerprint() != parse(envelope()).fingerprint()


@pytest.mark.parametrize(
    "changes",
    [{"amount": "120.01"}, {"currency": "EUR"}, {"order_id": "ord-1002"}, {"channel": "store"},
     {"items": [{"sku": "sku-1", "quantity": 3, "unit_price": "60.00"}]},
     {"items": [{"sku": "sku-2", "quantity": 2, "unit_price": "60.00"}]}],
    ids=repr,
)
def test_any_changed_purchase_value_changes_the_fingerprint(changes: dict[str, Any]) -> None:
    assert parse(with_data("purchase", **changes)).fingerprint() != parse(envelope("purchase")).fingerprint()


@pytest.mark.parametrize("changes", [{"score": 8}, {"kind": "csat", "score": 5}, {"comment": "ok"}], ids=repr)
def test_any_changed_survey_value_changes_the_fingerprint(changes: dict[str, Any]) -> None:
    base = parse(envelope("survey_response")).fingerprint()
    assert parse(with_data("survey_response", **changes)).fingerprint() != base


def test_fingerprint_is_stable_across_parses() -> None:
    raw = json.dumps(envelope("purchase")).encode()
    assert parse_envelope(raw).fingerprint() == parse_envelope(raw).fingerprint()


# --- bounds of integer fields (v1.1): every number a read model sums or stores fits a column ------


def raw_with(obj: dict[str, Any], literal: str) -> bytes:
    """`obj` as JSON with the string "LITERAL" replaced by a raw JSON literal (e.g. 1e5000), which
    json.dumps cannot write from a Python value."""
    text = json.dumps(obj)
    assert text.count('"LITERAL"') == 1
    return text.replace('"LITERAL"', literal).encode()


def rejected_literal(obj: dict[str, Any], literal: str) -> str:
    return rejected_raw(raw_with(obj, literal)).reason


@pytest.mark.parametrize("seconds", [0, 604_799, 604_800], ids=repr)
def test_call_duration_up_to_a_week_is_accepted(seconds: int) -> None:
    assert parse(with_data("call", duration_seconds=seconds)).data["duration_seconds"] == seconds


@pytest.mark.parametrize(("literal", "shown"), [("604801", "604801"), ("86400000", "86400000"),
                                                ("1e400", "1E+400"), ("1e5000", "1E+5000"), ('"604801"', "'604801'")])
def test_call_duration_over_a_week_is_rejected_naming_field_and_range(literal: str, shown: str) -> None:
    reason = rejected_literal(with_data("call", duration_seconds="LITERAL"), literal)
    assert reason == f"data.duration_seconds: must be an integer 0–604,800 (a week at most) (got {shown})"


def test_call_duration_1e400_is_not_stored_as_a_400_digit_integer() -> None:
    with pytest.raises(InvalidEvent):
        parse_envelope(raw_with(with_data("call", duration_seconds="LITERAL"), "1e400"))
    # and a duration written with an exponent but within the range is an ordinary integer
    assert parse_envelope(raw_with(with_data("call", duration_seconds="LITERAL"), "6.048e5")).data[
        "duration_seconds"] == 604_800


@pytest.mark.parametrize("quantity", [1, 999_999, 1_000_000], ids=repr)
def test_purchase_item_quantity_up_to_a_million_is_accepted(quantity: int) -> None:
    items = [{"sku": "sku-1", "quantity": quantity, "unit_price": "0.01"}]
    assert parse(with_data("purchase", items=items)).data["items"][0]["quantity"] == quantity


@pytest.mark.parametrize(("literal", "shown"), [("1000001", "1000001"), ("0", "0"), ("-3", "-3"),
                                                ("1e400", "1E+400"), ("1e5000", "1E+5000")])
def test_purchase_item_quantity_out_of_range_names_field_and_range(literal: str, shown: str) -> None:
    items = [{"sku": "sku-1", "quantity": 2, "unit_price": "1"}, {"sku": "sku-2", "quantity": "LITERAL", "unit_price": "1"}]
    reason = rejected_literal(with_data("purchase", items=items), literal)
    assert reason == f"data.items.1.quantity: must be an integer 1–1,000,000 (got {shown})"


@pytest.mark.parametrize("version", [3, 7, 2_147_483_647], ids=repr)
def test_version_within_the_postgresql_integer_range_but_unknown_is_rejected_as_unknown(version: int) -> None:
    assert rejected(envelope(version=version)).reason == (
        f"version: {version} is not a version of call: call has versions 1 and 2; send one of them (2 is the latest)")


@pytest.mark.parametrize(("literal", "shown"), [("2147483648", "2147483648"), ("0", "0"), ("-1", "-1"),
                                                ("1e400", "1E+400"), ("1e5000", "1E+5000")])
def test_version_out_of_range_names_field_and_range(literal: str, shown: str) -> None:
    reason = rejected_literal(envelope(version="LITERAL"), literal)
    assert reason == f"version: must be an integer 1–2,147,483,647 (got {shown})"


@pytest.mark.parametrize(("kind", "literal", "shown"), [("nps", "1e5000", "1E+5000"), ("csat", "1e400", "1E+400"),
                                                         ("nps", "-1e5000", "-1E+5000"), ("csat", '"1e5000"', "'1e5000'")])
def test_survey_score_of_a_huge_number_is_out_of_range(kind: str, literal: str, shown: str) -> None:
    low, high = {"nps": (0, 10), "csat": (1, 5)}[kind]
    reason = rejected_literal(with_data("survey_response", kind=kind, score="LITERAL"), literal)
    assert reason == f"data.score: {shown} is out of range for {kind}: must be an integer {low}–{high}"


def test_survey_score_of_a_huge_number_with_a_broken_kind_names_both() -> None:
    reason = rejected_literal(with_data("survey_response", kind="ces", score="LITERAL"), "1e5000")
    assert_names(reason, "data.kind")
    assert "data.score: 1E+5000 is out of range" in reason


@pytest.mark.parametrize(
    ("obj", "path"),
    [(with_data("call", duration_seconds="LITERAL"), "data.duration_seconds"),
     (with_data("purchase", items=[{"sku": "s", "quantity": "LITERAL", "unit_price": "1"}]), "data.items.0.quantity"),
     (envelope(version="LITERAL"), "version"),
     (with_data("survey_response", score="LITERAL"), "data.score")],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_an_enormous_exponent_is_rejected_at_once_not_expanded_into_an_integer(obj: dict[str, Any], path: str) -> None:
    started = time.perf_counter()
    reason = rejected_literal(obj, "1e999999999")  # as an int: a billion digits
    assert time.perf_counter() - started < 1.0
    assert_names(reason, path)
    assert "1E+999999999" in reason


def test_reasons_show_numbers_as_written_not_as_python_reprs() -> None:
    reason = rejected_literal(with_data("call", duration_seconds="LITERAL"), "7.5")
    assert reason.endswith("(got 7.5)")
    assert "Decimal" not in reason


# --- the number 1e5000: rejected for what it is, or kept; never "nested too deeply" -------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (with_data("call", duration_seconds="LITERAL"),
         "data.duration_seconds: must be an integer 0–604,800 (a week at most) (got 1E+5000)"),
        (with_data("purchase", amount="LITERAL"),
         "data.amount: must have at most 18 digits before the point and 12 after it (got 1E+5000)"),
        (with_data("purchase", items=[{"sku": "s", "quantity": 1, "unit_price": "LITERAL"}]),
         "data.items.0.unit_price: must have at most 18 digits before the point and 12 after it (got 1E+5000)"),
        (with_data("survey_response", score="LITERAL"), "data.score: 1E+5000 is out of range for nps: must be an integer 0–10"),
        (envelope(version="LITERAL"), "version: must be an integer 1–2,147,483,647 (got 1E+5000)"),
        (envelope(source="LITERAL"), "source: Input should be a valid string (got 1E+5000)"),
    ],
    ids=["duration_seconds", "amount", "unit_price", "score", "version", "source"],
)
def test_1e5000_in_a_known_field_is_rejected_saying_what_is_wrong(obj: dict[str, Any], expected: str) -> None:
    reason = rejected_literal(obj, "1e5000")
    assert reason == expected
    assert "nested" not in reason


@pytest.mark.parametrize(
    ("obj", "where"),
    [(with_data("call", note="LITERAL"), ("data", "note")),
     (with_data("purchase", items=[{"sku": "s", "quantity": 1, "unit_price": "1", "weight": "LITERAL"}]),
      ("data", "items", 0, "weight")),
     (envelope(trace="LITERAL"), ("trace",)),
     (with_customer(score="LITERAL"), ("customer", "score"))],
    ids=["data", "item", "top-level", "customer"],
)
@pytest.mark.parametrize("literal", ["1e5000", "-1e5000", "1e-5000", "1e400"])
def test_1e5000_in_an_unknown_field_is_kept_with_its_value(obj: dict[str, Any], where: tuple[Any, ...], literal: str) -> None:
    event = parse_envelope(raw_with(obj, literal))
    kept: Any = event.canonical()
    for step in where:
        kept = kept[step]
    assert isinstance(kept, str)  # numbers of unknown fields are kept as decimal strings
    assert Decimal(kept) == Decimal(literal)
    assert len(event.fingerprint()) == 64


def test_a_message_that_is_just_1e5000_is_not_an_object() -> None:
    reason = rejected_raw(b"1e5000").reason
    assert reason == "message must be a JSON object, not a JSON number"


@pytest.mark.parametrize(
    ("obj", "path"),
    [(with_data("call", duration_seconds="LITERAL"), "data.duration_seconds"),
     (with_data("call", note="LITERAL"), "data.note"),
     (envelope(trace=["x", {"n": "LITERAL"}]), "trace.1.n")],
    ids=["duration_seconds", "unknown data field", "nested unknown field"],
)
def test_an_integer_of_more_than_4300_digits_is_rejected_naming_its_field(obj: dict[str, Any], path: str) -> None:
    reason = rejected_literal(obj, "9" * 5000)
    assert reason == f"{path}: an integer of 5,000 digits is too long (at most 4,300 digits)"


def test_an_integer_of_4300_digits_in_an_unknown_field_is_kept_as_an_integer() -> None:
    number = int("9" * 4300)
    assert parse(with_data("call", note=number)).data["note"] == number


def _nested(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize(
    ("obj", "path"),
    [(with_data("call", note="LITERAL"), "data.note"), (envelope(trace="LITERAL"), "trace"),
     (with_customer(tags="LITERAL"), "customer.tags")],
    ids=["data", "top-level", "customer"],
)
def test_only_a_message_nested_too_deeply_is_said_to_be(obj: dict[str, Any], path: str) -> None:
    assert parse_envelope(raw_with(obj, _nested(100))).event_id == "pbx-01:call:998877"
    reason = rejected_literal(obj, _nested(300))
    assert reason == f"{path}: nested too deeply to be stored (300 levels of arrays and objects)"


def test_a_message_nested_deeper_than_the_json_decoder_goes_is_nested_too_deeply() -> None:
    assert rejected_raw(b"[" * 100_000).reason == "message is not usable JSON: nested too deeply"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_are_named_once(constant: str) -> None:
    reason = rejected_literal(with_data("call", note="LITERAL"), constant)
    assert reason == f"message is not valid JSON: {constant} is not a JSON number"


# --- amounts: at most 18 digits before the point and 12 after it ------------------------------


MONEY_RULE = "must have at most 18 digits before the point and 12 after it"


@pytest.mark.parametrize(
    "amount",
    ["123456789012345678", "999999999999999999", "123456789012345678.123456789012", "0.000000000001",
     "0.100000000000", "0001.50", "1E+17", "0E-12"],
    ids=repr,
)
def test_amount_of_up_to_18_digits_before_the_point_and_12_after_is_accepted(amount: str) -> None:
    data = parse(with_data("purchase", amount=amount)).data
    assert Decimal(data["amount"]) == Decimal(amount)
    assert data["amount"] == str(Decimal(amount))  # kept with its written scale


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("1234567890123456789", "1234567890123456789"),  # 19 digits before the point
     (1234567890123456789, "1234567890123456789"),
     ("1000000000000000000.5", "1000000000000000000.5"),
     ("123456789012345678901234567890", "123456789012345678901234567890"),  # 30 digits, all whole
     ("1E+18", "1E+18"),
     ("0.1234567890123", "0.1234567890123"),  # 13 after the point
     ("1.5000000000000", "1.5000000000000"),  # 13 written places: the scale is kept and shown
     ("0.0000000000001", "1E-13")],
    ids=repr,
)
def test_amount_with_more_digits_is_rejected_saying_the_rule(amount: Any, shown: str) -> None:
    reason = rejected(with_data("purchase", amount=amount)).reason
    assert reason == f"data.amount: {MONEY_RULE} (got {shown})"


def test_unit_price_follows_the_same_rule() -> None:
    items = [{"sku": "sku-1", "quantity": 1, "unit_price": "1234567890123456789"}]
    reason = rejected(with_data("purchase", items=items)).reason
    assert reason == f"data.items.0.unit_price: {MONEY_RULE} (got 1234567890123456789)"
    items[0]["unit_price"] = "123456789012345678.123456789012"
    assert parse(with_data("purchase", items=items)).data["items"][0]["unit_price"] == "123456789012345678.123456789012"


def test_negative_amount_is_still_rejected_as_negative() -> None:
    assert rejected(with_data("purchase", amount="-1E+5000")).reason.startswith(
        "data.amount: Input should be greater than or equal to 0")


# --- canonical form of amounts: str(Decimal), unchanged (duplicate fingerprints depend on it) -----


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [('"0.000000000001"', "1E-12"), ('"1E-12"', "1E-12"), ("1e-12", "1E-12"), ("0.000000000001", "1E-12"),
     ('"1E+3"', "1E+3"), ('"1000"', "1000"), ('"0.0000001"', "1E-7"), ('"0.000001"', "0.000001"), ('"120.00"', "120.00")],
)
def test_canonical_amount_is_pythons_decimal_text(sent: str, canonical: str) -> None:
    """Not plain notation for very small amounts or positive exponents: this is what the stored
    events and their fingerprints hold, so it must not change; display uses rules.format_money."""
    assert parse_envelope(raw_with(with_data("purchase", amount="LITERAL"), sent)).canonical()["data"]["amount"] == canonical


def test_the_same_small_amount_written_plainly_or_with_an_exponent_is_a_duplicate() -> None:
    plain = parse_envelope(raw_with(with_data("purchase", amount="LITERAL"), '"0.000000000001"'))
    exponent = parse_envelope(raw_with(with_data("purchase", amount="LITERAL"), "1e-12"))
    assert plain.fingerprint() == exponent.fingerprint()


@pytest.mark.parametrize("bad_type", [{}, [], ["call"], None, 7])
def test_a_type_that_is_not_text_is_rejected_with_a_reason(bad_type: object) -> None:
    message = example("call")
    message["type"] = bad_type
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(message)
    assert caught.value.reason.startswith("type:")


# JSON-ready content as canonical() gives it: strings (any code point but lone surrogates, which
# are refused before), integers of any size, booleans, null, lists and objects. No floats: the
# decoder reads every JSON number with a fraction as Decimal, which the canonical form writes as text.
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_JSON_READY = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_TEXT, _JSON_READY, max_size=6))
def test_the_canonical_bytes_are_those_the_stdlib_writes_so_fingerprints_never_change(content: dict[str, Any]) -> None:
    """Fingerprints of events stored before orjson wrote the canonical form must still match:
    a re-sent duplicate would otherwise be dead-lettered as a conflict."""
    stdlib = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(content) == stdlib


# Fingerprints of the contract's examples as stored since the first release (stdlib JSON + sha256).
PINNED_FINGERPRINTS = {
    "call": "da3053aaaef561fc8c7a3073a223d28824772b6448f649248430349a4c425cfc",
    "email": "abe68bee75ce0a8efcc556c61de6967eef9347d6c642999114f0b4f6c3f2c571",
    "purchase": "bcc8002ad3bbac79b3868a98c9b7cd0382a1299cf9ec153c7f3f344cb2a5836d",
    "survey_response": "d3902e041f6965bb8861c1372cf10800c9911e175c5433029732af8fdfb8cb02",
}


@pytest.mark.parametrize("type_", list(PINNED_FINGERPRINTS))
def test_fingerprints_are_pinned(type_: str) -> None:
    assert parse_envelope(json.dumps(example(type_)).encode()).fingerprint() == PINNED_FINGERPRINTS[type_]


def test_odd_text_and_big_integers_are_written_as_the_stdlib_writes_them() -> None:
    odd = {"control": "\x00\x1f\x7f\u2028", "quote": '"\\', "big": 2**80, "emoji": "😀", "é": [True, None]}
    stdlib = json.dumps(odd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(odd) == stdlib
    assert hashlib.sha256(stdlib).hexdigest() == hashlib.sha256(canonical_json(odd)).hexdigest()


@pytest.mark.parametrize("type_", list(PINNED_FINGERPRINTS))
def test_the_canonical_form_is_the_envelopes_json_dump_in_order(type_: str) -> None:
    """validate_envelope builds the canonical form without dumping `data` twice: it must be what
    pydantic's dump of the whole envelope gives, key order included (stored events keep it)."""
    obj = example(type_)
    obj["data"] = {**obj["data"], "meta": {"a": None, "b": [None, {"c": None}]}, "nil": None}
    obj.update(trace={"y": None}, source=None, zz=None)
    obj["customer"] = {**obj["customer"], "tier": None}
    event = parse_envelope(json.dumps(obj).encode())
    assert list(event.canonical().items()) == list(event.model_dump(mode="json", exclude_none=True).items())
