"""The event store's orjson encoder writes exactly the bytes eventsourcing's JSON encoder writes,
so stored events (and any hash over them) are the same whichever wrote them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.transcoder import FastJSONTranscoder


def transcoders() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return library, fast


LIBRARY, FAST = transcoders()

_TEXT = st.text(max_size=10)  # surrogates included: both must fail alike on them
_LEAF = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | _TEXT
         | st.floats(allow_nan=True) | st.uuids() | st.decimals(allow_nan=False)
         | st.datetimes(timezones=st.just(UTC)))
_VALUE = st.recursive(_LEAF, lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(_TEXT, children, max_size=3), max_leaves=15)


def encoded(transcoder: JSONTranscoder, obj: Any) -> bytes | str:
    try:
        return transcoder.encode(obj)
    except Exception as error:  # noqa: BLE001 - compared: both must fail the same way
        return type(error).__name__


@settings(max_examples=700, deadline=None)
@given(st.dictionaries(_TEXT, _VALUE, max_size=6))
def test_any_state_is_encoded_as_the_library_encodes_it(state: dict[str, Any]) -> None:
    assert encoded(FAST, state) == encoded(LIBRARY, state)


class Colour(Enum):
    RED = "red"


@pytest.mark.parametrize("state", [
    {"timestamp": datetime(2026, 3, 1, 4, 45, tzinfo=UTC),
     "occurred_at": datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
     "customer": {"id": "crm-42", "name": "Ana Perera ☕"}, "data": {"amount": "120.00", "items": [{"quantity": 2}]},
     "extra": {}, "source": None, "schema_version": 1, "event_id": "e\x00\x1f\u2028\"\\"},
    {"big": 2**64, "small": -(2**63) - 1},
    {"float": 1e16, "nan": float("nan")},
    {"uuid": UUID(int=7), "nested": {"uuid": UUID(int=8)}},
    {"amount": Decimal("1E+3"), "nested": [Decimal("0.000000000001")]},
    {"enum": Colour.RED},
    {1: "int key"},
    {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
])
def test_edge_cases_are_encoded_as_the_library_encodes_them(state: dict[Any, Any]) -> None:
    assert encoded(FAST, state) == encoded(LIBRARY, state)


def test_an_event_state_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: the state of an interaction is encoded by orjson, not by the fallback."""
    state = {"timestamp": datetime(2026, 3, 1, tzinfo=UTC), "event_id": "e1", "customer": {"id": "c"},
             "data": {"direction": "inbound", "duration_seconds": 60}, "extra": {}, "source": None}
    expected = LIBRARY.encode(state)

    def no_fallback(self: JSONTranscoder, obj: Any) -> bytes:
        raise AssertionError("the library's encoder was used")

    monkeypatch.setattr(JSONTranscoder, "encode", no_fallback)
    assert FAST.encode(state) == expected
