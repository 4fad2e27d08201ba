"""Personal data sealed under a key per customer stream: erasure by destroying the key (issue 15).

Each stream (one customer's identifier: its account id, email or phone) gets a random 256-bit
AES-GCM key, kept in `rapport_stream_keys` apart from the events. When an interaction is stored,
its personal fields (`domain.personal`) are taken out of the event's state and kept, encrypted
under its stream's key, in one field `sealed`: `{"key": key id, "nonce": …, "box": …}` (base64).
The associated data binds the box to its stream and position, so it cannot be moved to another
event. Everything else stays readable: counts, times, amounts, scores, lifecycle, and the hash
chain, which is over the stored bytes, sealed box included, and so holds after a key is destroyed.

Reading an event opens its box with the stream's key; once the key is destroyed (a customer
forgotten, `services.privacy`) the event reads as if it never had personal fields. Keys are never
reused: a box sealed under a destroyed key stays closed even if the stream gets a new key later
(the customer comes back).

Python's `cryptography` (OpenSSL's AES-GCM) does the cryptography; nothing here is hand-written
but the key table and where the box goes.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, Transcoder, find_id_convertor
from eventsourcing.utils import get_topic, resolve_topic
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier

from domain import personal
from domain.customer import TYPE_BY_EVENT_CLASS, Customer
from eventstore import tables

SEALED = "sealed"  # the field of a stored interaction's state holding its personal fields, encrypted
KEYS_KEPT = 200_000  # streams whose key a process keeps in memory


@dataclass(frozen=True)
class StreamKey:
    key_id: str
    cipher: AESGCM


def create_statements(schema: str) -> list[Composed]:
    keys = SQL("{}.{}").format(Identifier(schema), Identifier(tables.STREAM_KEYS))
    return [SQL("CREATE TABLE IF NOT EXISTS {} (stream uuid PRIMARY KEY, key_id text NOT NULL UNIQUE, "
                "key bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())").format(keys)]


def associated_data(stream: UUID, version: int) -> bytes:
    return stream.bytes + version.to_bytes(8, "big")


def seal(key: StreamKey, stream: UUID, version: int, fields: dict[str, Any], transcoder: Transcoder) -> dict[str, str]:
    """The fields, encoded by the event store's transcoder (typed values and long integers kept), in a box."""
    nonce = os.urandom(12)
    box = key.cipher.encrypt(nonce, transcoder.encode(fields), associated_data(stream, version))
    return {"key": key.key_id, "nonce": base64.b64encode(nonce).decode(), "box": base64.b64encode(box).decode()}


def open_box(key: StreamKey, stream: UUID, version: int, sealed: dict[str, str], transcoder: Transcoder
             ) -> dict[str, Any]:
    """The sealed fields (raises `InvalidTag` if the box was altered or moved)."""
    plain = key.cipher.decrypt(base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["box"]),
                               associated_data(stream, version))
    return cast(dict[str, Any], transcoder.decode(plain))


def stale_keys(curs: Any, schema: str, used: dict[UUID, str]) -> list[UUID]:
    """In a transaction that stores boxes: lock the keys used (an erasure waits for it to commit, or has
    destroyed them already) and name the streams whose key is no longer the one used."""
    if not used:
        return []
    curs.execute(SQL("SELECT stream, key_id FROM {}.{} WHERE stream = ANY(%s) FOR SHARE").format(
        Identifier(schema), Identifier(tables.STREAM_KEYS)), (sorted(used),))
    now = {row["stream"]: row["key_id"] for row in curs.fetchall()}
    return [stream for stream, key_id in used.items() if now.get(stream) != key_id]


class OnConnection:
    """A caller's connection where `StreamKeys` wants a datastore: for reading keys only."""

    def __init__(self, conn: Any, schema: str = "public") -> None:
        self.conn, self.schema = conn, schema

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        yield self.conn


class StreamKeys:
    """The streams' keys, in `rapport_stream_keys`, remembered once read."""

    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        self.table = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(tables.STREAM_KEYS))
        self._keys: dict[UUID, StreamKey] = {}
        self._destroyed: set[str] = set()  # key ids known to be gone: boxes under them stay closed

    def for_sealing(self, streams: Iterable[UUID]) -> dict[UUID, StreamKey]:
        """The key of each stream, made for the streams that have none (a new customer, or one forgotten)."""
        wanted = set(streams)
        missing = [s for s in wanted if s not in self._keys]
        if missing:
            self._load(missing)
            new = sorted(s for s in missing if s not in self._keys)
            if new:
                with self.datastore.transaction(commit=True) as curs:
                    # Another process may make the same stream's key at the same time: the first one stays.
                    curs.execute(SQL("INSERT INTO {} (stream, key_id, key) SELECT * FROM unnest(%s::uuid[], %s::text[], "
                                     "%s::bytea[]) ON CONFLICT (stream) DO NOTHING").format(self.table),
                                 (new, [secrets.token_hex(12) for _ in new], [AESGCM.generate_key(256) for _ in new]))
                self._load(new)
        self._trim()
        return {s: self._keys[s] for s in wanted}

    def for_opening(self, stream: UUID, key_id: str) -> StreamKey | None:
        """The key a box was sealed with, or None once it is destroyed."""
        key = self._keys.get(stream)
        if key is not None and key.key_id == key_id:
            return key
        if key_id in self._destroyed:
            return None
        self._load([stream])
        key = self._keys.get(stream)
        if key is not None and key.key_id == key_id:
            return key
        self._destroyed.add(key_id)
        return None

    def forget(self, streams: Iterable[UUID] | None = None) -> None:
        """Read these streams' keys (all, by default) again when next needed."""
        if streams is None:
            self._keys.clear()
            return
        for stream in streams:
            self._keys.pop(stream, None)

    def destroyed(self, stream: UUID, key_ids: Iterable[str]) -> None:
        """These keys of the stream are gone (a `Customer.Forgotten` read): boxes under them stay closed."""
        key_ids = set(key_ids)
        self._destroyed.update(key_ids)
        key = self._keys.get(stream)
        if key is not None and key.key_id in key_ids:
            del self._keys[stream]

    def _load(self, streams: Sequence[UUID]) -> None:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("SELECT stream, key_id, key FROM {} WHERE stream = ANY(%s)").format(self.table),
                         (list(streams),))
            for stream, key_id, key in curs.fetchall():
                self._keys[stream] = StreamKey(key_id, AESGCM(bytes(key)))

    def _trim(self) -> None:
        if len(self._keys) > KEYS_KEPT:
            for stream in list(self._keys)[: len(self._keys) - KEYS_KEPT + KEYS_KEPT // 10]:
                del self._keys[stream]


_INTERACTION_TOPICS = {get_topic(cls): name for cls, name in TYPE_BY_EVENT_CLASS.items()}


def seal_state(state: dict[str, Any], event_type: str, key: Callable[[], StreamKey], stream: UUID, version: int,
               transcoder: Transcoder) -> dict[str, Any]:
    """An interaction's state with its personal fields sealed (a new dict; the same one if it has none)."""
    customer, data, fields = personal.split(event_type, state["customer"], state["data"], state.get("extra") or {})
    if fields is None:
        return state
    return {**state, "customer": customer, "data": data, "extra": {}, SEALED: seal(key(), stream, version, fields, transcoder)}


def open_state(state: dict[str, Any], keys: StreamKeys, stream: UUID, version: int, transcoder: Transcoder
               ) -> dict[str, Any]:
    """An interaction's state as it was before sealing, or without its personal fields once its key is destroyed."""
    sealed = state.pop(SEALED, None)
    if sealed is None:
        return state
    key = keys.for_opening(stream, sealed["key"])
    fields = None
    if key is not None:
        try:
            fields = open_box(key, stream, version, sealed, transcoder)
        except InvalidTag:
            raise MapperDeserialisationError(
                f"the personal fields of event {version} of stream {stream} do not open with its key: the stored "
                "bytes were altered (`rapport audit verify` says where)") from None
    state["customer"], state["data"], state["extra"] = personal.join(state["customer"], state["data"], fields)
    return state


class SealingMapper(Mapper[UUID]):
    """eventsourcing's mapper, sealing interactions' personal fields as they are stored and opening them as
    they are read. Sealing needs each stream's key first: `InteractionLog.record` gets them."""

    def __init__(self, transcoder: Transcoder, keys: StreamKeys) -> None:
        super().__init__(transcoder)
        self.keys = keys
        self.sealing: dict[UUID, StreamKey] = {}  # set by the caller for the events it is about to store

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        event_type = TYPE_BY_EVENT_CLASS.get(type(domain_event))
        if event_type is None:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        stream, version = state.pop("originator_id"), state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        # `InteractionLog.record` gets the keys of a batch at once (and checks them as it commits); other
        # writers (tests, tools) get them here.
        state = seal_state(state, event_type, lambda: self.sealing.get(stream) or self.keys.for_sealing([stream])[stream],
                           stream, version, self.transcoder)
        return StoredEvent(originator_id=stream, originator_version=version, topic=get_topic(type(domain_event)),
                           state=self.transcoder.encode(state))

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        if stored_event.topic not in _INTERACTION_TOPICS:
            event = super().to_domain_event(stored_event)
            if type(event) is Customer.Forgotten:  # read in log order: later boxes under its keys stay closed
                self.keys.destroyed(event.originator_id, event.key_ids)
            return event
        cls = resolve_topic(stored_event.topic)
        try:
            state: dict[str, Any] = self.transcoder.decode(stored_event.state)
        except Exception as error:
            raise MapperDeserialisationError(
                f"Failed to deserialise state of stored event with topic '{stored_event.topic}', originator_id "
                f"'{stored_event.originator_id}' and originator_version {stored_event.originator_version}: {error}"
            ) from error
        stream = find_id_convertor(cls, UUID)(stored_event.originator_id)
        return event_from_state(cls, state, stream, stored_event.originator_version, self.keys, self.transcoder)


def event_from_state(cls: type, state: dict[str, Any], stream: UUID, version: int, keys: StreamKeys,
                     transcoder: Transcoder) -> Any:
    """The domain event of a decoded stored interaction, opened and upcast as the library's mapper would make it."""
    open_state(state, keys, stream, version, transcoder)
    state["originator_id"], state["originator_version"] = stream, version
    class_version = getattr(cls, "class_version", 1)
    from_version = state.pop("class_version", 1)
    while from_version < class_version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", state)
    return event


def is_interaction_topic(topic: str) -> bool:
    return topic in _INTERACTION_TOPICS


def is_interaction_event(event: Any) -> bool:
    return type(event) in TYPE_BY_EVENT_CLASS


assert all(issubclass(cls, Customer.Interaction) for cls in TYPE_BY_EVENT_CLASS)
