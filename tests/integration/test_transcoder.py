"""The event store's orjson decoder gives exactly what eventsourcing's own JSON decoder gives."""

from __future__ import annotations

import json

import pytest
from eventsourcing.persistence import JSONTranscoder

from eventstore.store import InteractionLog
from eventstore.transcoder import FastJSONTranscoder
from tests.integration.test_read_model_promises import aggregates, history

pytestmark = pytest.mark.integration


def test_the_store_uses_the_fast_decoder(store: InteractionLog) -> None:
    assert isinstance(store.mapper.transcoder, FastJSONTranscoder)


def test_every_stored_event_decodes_as_the_library_decodes_it(store: InteractionLog) -> None:
    store.save(*aggregates(history("transcoder")))
    library = JSONTranscoder()
    for transcoding in store.mapper.transcoder.names.values():
        library.register(transcoding)
    notifications = store.recorder.select_notifications(start=0, limit=100_000, inclusive_of_start=False)
    assert notifications
    for notification in notifications:
        assert store.mapper.transcoder.decode(notification.state) == library.decode(notification.state)


@pytest.mark.parametrize("state", [
    {"a": {"_type_": "decimal_str", "_data_": "1.5"}, "b": [{"_type_": "decimal_str", "_data_": "2"}]},
    {"data": {"nested": {"_type_": "decimal_str", "_data_": "3"}}, "n": 10 ** 30},  # beyond orjson's ints
    {"x": 'a string holding "_type_": and a quote', "t": {"_type_": "decimal_str", "_data_": "4"}},
])
def test_typed_values_anywhere_and_huge_integers_decode_alike(store: InteractionLog, state: dict) -> None:
    library = JSONTranscoder()
    for transcoding in store.mapper.transcoder.names.values():
        library.register(transcoding)
    data = json.dumps(state).encode()
    assert store.mapper.transcoder.decode(data) == library.decode(data)
