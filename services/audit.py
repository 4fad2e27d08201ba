"""Audit (contract §5): a customer's stored events with their hashes, the chains re-checked, the
chain heads an auditor keeps. Shared by the HTTP routes (`services/http/audit.py`) and the
`rapport audit` command (`services/audit_cli.py`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, Mapper, StoredEvent, UUIDAsHex
from psycopg_pool import ConnectionPool

from domain.customer import TYPE_BY_EVENT_CLASS, Customer, customer_id_for
from eventstore import audit, chain
from eventstore.transcoder import FastJSONTranscoder
from services.http.params import rfc3339


@lru_cache(maxsize=1)
def event_mapper() -> Mapper[UUID]:
    """The event store's mapper without a database: its transcoder, with the transcodings
    eventsourcing's Application registers, and the library's upcasting of old class versions."""
    transcoder = FastJSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def customer_events(conn: Any, customer_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]] | None:
    """The contract §5 items of one customer's stored events in stream order, from position
    `after` + 1 on (at most `limit`); None if the customer has no stream."""
    rows = audit.stream_rows(conn, customer_id_for(customer_id), after=after, limit=limit)
    if not rows and after == 0:
        return None
    previous = audit.hash_before(conn, rows[0]) if rows else None
    items = []
    for row in rows:
        items.append(event_item(row, previous))
        previous = row.hash
    return items


def event_item(row: audit.StoredRow, previous_hash: bytes | None) -> dict[str, Any]:
    """One stored event as an auditor reads it: position, what it says, when it was recorded,
    its hash and the hash it chains to (64 zeros before the first)."""
    item: dict[str, Any] = {"position": row.position, "event_id": None, "type": None, "occurred_at": None,
                            "recorded_at": None, "data": None}
    try:
        event = event_mapper().to_domain_event(StoredEvent(row.originator_id, row.position, row.topic, row.state))
    except Exception as error:  # noqa: BLE001 - an altered row may not decode: show it, say why
        item["type"] = "undecodable"
        item["data"] = {"error": f"{type(error).__name__}: {error}", "state": row.state.decode(errors="replace")}
    else:
        item["recorded_at"] = rfc3339(event.timestamp)
        if isinstance(event, Customer.Interaction):
            item.update(event_id=event.event_id, type=TYPE_BY_EVENT_CLASS[type(event)],
                        occurred_at=rfc3339(event.occurred_at), data=json.loads(json.dumps(event.data, default=str)))
        else:  # the stream's first event registers the customer
            item["type"] = "registered"
    item["hash"] = row.hash.hex() if row.hash is not None else None
    item["previous_hash"] = (previous_hash or chain.GENESIS).hex()
    return item


@dataclass
class Verification:
    """What `verify` found: events checked and every broken position."""

    events_checked: int = 0
    streams_checked: int = 0
    broken: list[audit.Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken

    def as_json(self) -> dict[str, Any]:
        return {"events_checked": self.events_checked, "ok": self.ok, "broken": [f.as_json() for f in self.broken]}


def verify(source: Any, customer_id: str | None = None, progress: Callable[[int], None] | None = None,
           workers: int = 2, events_per_slice: int = 50_000) -> Verification:
    """Re-check every chain (or one customer's): recompute each hash in PostgreSQL, then say what
    is wrong with each stream that does not chain. `source` is a connection pool, whose
    connections check slices of the store side by side (`workers`: PostgreSQL does the hashing, one
    core per connection), or one connection. `progress(events)` after each slice."""
    result = Verification()
    with _connection(source) as conn:
        if customer_id is not None:
            stream = customer_id_for(customer_id)
            ranges = [(stream, stream)]
        else:
            ranges = audit.slices(max(1, min(256, audit.last_notification_id(conn) // events_per_slice)))

    def check(bounds: tuple[UUID, UUID]) -> tuple[int, int, list[UUID]]:
        with _connection(source) as conn:
            return audit.check_range(conn, *bounds)

    suspects: list[UUID] = []
    parallel = workers > 1 and len(ranges) > 1 and isinstance(source, ConnectionPool)
    with ThreadPoolExecutor(max_workers=workers if parallel else 1) as pool:
        for checked, streams, broken in pool.map(check, ranges):
            result.events_checked += checked
            result.streams_checked += streams
            suspects.extend(broken)
            if progress is not None:
                progress(checked)
    with _connection(source) as conn:
        for originator_id in suspects:
            result.broken.extend(audit.diagnose(conn, originator_id))
    return result


@contextmanager
def _connection(source: Any) -> Iterator[Any]:
    """A connection of a pool, or the one connection given."""
    if isinstance(source, ConnectionPool):
        with source.connection() as conn:
            yield conn
    else:
        yield source


def events_estimate(conn: Any) -> int:
    """About how many events are stored (the last notification id), for a progress bar."""
    return audit.last_notification_id(conn)


def heads(conn: Any) -> Iterator[dict[str, Any]]:
    """Every stream's chain head: what an auditor keeps outside the database."""
    for originator_id, position, head in audit.heads(conn):
        yield {"stream_id": str(originator_id), "position": position, "hash": head.hex() if head else None}


def heads_digest(items: Iterable[dict[str, Any]]) -> str:
    return chain.heads_digest((UUID(h["stream_id"]), h["position"], bytes.fromhex(h["hash"] or "")) for h in items)


def check_heads(conn: Any, kept: Iterable[dict[str, Any]]) -> list[audit.Finding]:
    """Compare chain heads kept earlier with the store: each kept head must still be stored, at
    its position, with its hash (chains only grow). Catches a stream rewritten with fresh hashes."""
    return audit.check_heads(conn, [(UUID(h["stream_id"]), int(h["position"]), bytes.fromhex(h["hash"]))
                                     for h in kept])
