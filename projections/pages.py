"""Pages of the event store's notification log, read and decoded for the projector.

Reading and decoding are a large share of a catch-up, and they run on the projector's read-ahead
thread, which shares the GIL with the thread applying the pages. So pages are read with a binary
cursor into plain tuples (bytea and uuid arrive as they are stored, no text parsing), and each
stored event is decoded by a short path that gives the very object the library's mapper gives
(`tests/integration/test_projection_pages.py` compares them): orjson parses the state, the typed
values at its top level (an event's `timestamp` and `occurred_at`) are revived by the
transcoder's own transcodings, and the event object is made as the mapper makes it, upcast as
the mapper upcasts it (an event stored before its class's `class_version` goes through the class's
`upcast_vN_vN+1` chain). Anything the short path does not vouch for goes to the mapper: state with
typed values deeper down, a float anywhere (orjson reads an integer beyond 64 bits as a float),
bytes orjson refuses, a mapper with a cipher or a compressor, a recorder that is not PostgreSQL's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Mapper, Notification, find_id_convertor
from eventsourcing.utils import resolve_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from domain.customer import Customer
from eventstore.sealing import SEALED, open_state

Page = list[tuple[Notification, Any]]
_TYPED = b'"_type_":'
_SLOW: None = None


class LogPages:
    """Reads pages of notifications after a position and decodes them."""

    def __init__(self, source: Any, mapper: Mapper[Any]) -> None:
        self.source, self.mapper = source, mapper
        transcoder = mapper.transcoder
        self._short = (isinstance(transcoder, JSONTranscoder) and mapper.cipher is None
                       and mapper.compressor is None)
        self._transcodings = transcoder.names if isinstance(transcoder, JSONTranscoder) else {}
        # The streams' keys of the store's mapper; a mapper without them cannot open sealed fields.
        self._keys = getattr(mapper, "keys", None)
        self._short = self._short and self._keys is not None
        self._classes: dict[tuple[str, type], tuple[type, Callable[[Any], Any], int] | None] = {}
        datastore = getattr(source, "datastore", None)
        table = getattr(source, "events_table_name", None)
        self._select = self._select_streams = self._position = None
        if datastore is not None and table is not None and hasattr(datastore, "schema"):
            events = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(table))
            self._select = SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM {} "
                "WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
            ).format(events)
            self._select_streams = SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state FROM {} "
                "WHERE originator_id = ANY(%s) AND notification_id <= %s ORDER BY notification_id").format(events)
            self._position = SQL("SELECT notification_id FROM {} WHERE originator_id = %s AND originator_version = %s"
                                 ).format(events)

    def read(self, start: int, limit: int, stop: int | None = None) -> list[Notification]:
        """Up to `limit` notifications after `start` (and up to `stop`), in notification order."""
        if self._select is None:
            return list(self.source.select_notifications(start=start, limit=limit, stop=stop, inclusive_of_start=False))
        with self.source.datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(self._select, (start, stop if stop is not None else 2**63 - 1, limit), prepare=True)
            return [Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s)
                    for i, o, v, t, s in curs.fetchall()]

    def read_streams(self, curs: Any, streams: Sequence[UUID], upto: int) -> list[Any]:
        """Every event of these streams stored at or before notification `upto`, decoded, in log
        order (on the caller's connection: a read model refolding customers in its transaction)."""
        assert self._select_streams is not None, "a PostgreSQL event store"
        with curs.connection.cursor(binary=True, row_factory=tuple_row) as c:
            c.execute(self._select_streams, (list(streams), upto))
            return [self.decode(Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s))
                    for i, o, v, t, s in c.fetchall()]

    def position_of(self, curs: Any, event: Any) -> int:
        """The notification id of a stored domain event."""
        assert self._position is not None, "a PostgreSQL event store"
        with curs.connection.cursor(row_factory=tuple_row) as c:
            c.execute(self._position, (event.originator_id, event.originator_version))
            row = c.fetchone()
        assert row is not None, "an event read from the log is stored"
        return int(row[0])

    def decode(self, notification: Notification) -> Any:
        """The domain event, equal to `mapper.to_domain_event(notification)` (which may raise)."""
        if self._short:
            event = self.decode_short(notification)
            if event is not _SLOW:
                return event
        return self.mapper.to_domain_event(notification)

    def decode_short(self, notification: Notification) -> Any:
        """The domain event by the short path, or None when the mapper must decode it."""
        kind = (notification.topic, type(notification.originator_id))
        try:
            found = self._classes[kind]
        except KeyError:
            found = self._classes[kind] = self._class_of(*kind)
        if found is None:
            return _SLOW
        cls, convert_id, class_version = found
        data = notification.state
        try:
            state = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _SLOW
        if type(state) is not dict:
            return _SLOW
        typed = data.count(_TYPED)
        for key, value in state.items():
            if type(value) is dict:
                if len(value) == 2 and "_type_" in value and "_data_" in value:
                    transcoding = self._transcodings.get(value["_type_"])
                    if transcoding is None:
                        return _SLOW
                    state[key] = transcoding.decode(value["_data_"])
                    typed -= 1
                elif _has_float(value):
                    return _SLOW
            elif type(value) is float or (type(value) is list and _has_float(value)):
                return _SLOW
        if typed:
            return _SLOW  # typed values deeper down: the transcoder walks the whole tree
        state["originator_id"] = convert_id(notification.originator_id)
        state["originator_version"] = notification.originator_version
        if SEALED in state:  # an interaction's personal fields, opened as the mapper opens them
            open_state(state, self._keys, state["originator_id"], notification.originator_version, self.mapper.transcoder)
        stored_version = state.pop("class_version", 1)  # the mapper's upcasting, step for step
        while stored_version < class_version:
            getattr(cls, f"upcast_v{stored_version}_v{stored_version + 1}")(state)
            stored_version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        if cls is Customer.Forgotten:  # as the mapper does: later boxes under its keys stay closed
            self._keys.destroyed(state["originator_id"], state["key_ids"])
        return event

    @staticmethod
    def _class_of(topic: str, id_type: type) -> tuple[type, Callable[[Any], Any], int] | None:
        try:
            cls = resolve_topic(topic)
        except Exception:  # noqa: BLE001 - the mapper raises it, with its own message
            return None
        return cls, find_id_convertor(cls, id_type), getattr(cls, "class_version", 1)


def _has_float(value: dict[str, Any] | list[Any]) -> bool:
    stack = [value]
    while stack:
        for item in (container.values() if type(container := stack.pop()) is dict else container):
            kind = type(item)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(item)
    return False
