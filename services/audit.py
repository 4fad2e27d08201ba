"""Audit (contract §5): a customer's stored events with their hashes, the chains re-checked, the
chain heads an auditor keeps. Shared by the HTTP routes (`services/http/audit.py`) and the
`rapport audit` command (`services/audit_cli.py`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, Mapper, StoredEvent, UUIDAsHex
from psycopg_pool import ConnectionPool

from domain.contract import utc_now
from domain.customer import TYPE_BY_EVENT_CLASS, Customer, customer_id_for
from eventstore import audit, chain
from eventstore.sealing import OnConnection, SealingMapper, StreamKeys
from eventstore.transcoder import FastJSONTranscoder
from projections.point_in_time import PointInTime, PointInTimeViews
from projections.readmodel import ModelSettings
from services.http.customers import view_from_events
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
    mapper = opening_mapper(conn)
    for row in rows:
        items.append(event_item(row, decoded(row, mapper), previous))
        previous = row.hash
    return items


def opening_mapper(conn: Any) -> Mapper[UUID]:
    """`event_mapper`, opening interactions' sealed personal fields with the keys read on `conn`
    (those of a forgotten customer are gone: its events read without them)."""
    return SealingMapper(event_mapper().transcoder, StreamKeys(OnConnection(conn)))


def decoded(row: audit.StoredRow, mapper: Mapper[UUID] | None = None) -> Any:
    """The domain event of a stored row (old class versions upcast, personal fields opened if
    `mapper` can), or the error if it does not decode (an altered row may not)."""
    try:
        return (mapper or event_mapper()).to_domain_event(StoredEvent(row.originator_id, row.position, row.topic,
                                                                      row.state))
    except Exception as error:  # noqa: BLE001 - shown to the auditor, with the row
        return error


IDENTITY_TYPES = {Customer.IdentifiersJoined: "identifiers_joined", Customer.IdentifiersLeft: "identifiers_left",
                  Customer.LinkRefused: "link_refused"}
_NOT_DATA = {"originator_id", "originator_version", "timestamp", "cause_event_id", "cause_occurred_at"}


def event_item(row: audit.StoredRow, event: Any, previous_hash: bytes | None) -> dict[str, Any]:
    """One stored event as an auditor reads it: position, what it says, when it was recorded,
    its hash and the hash it chains to (64 zeros before the first)."""
    item: dict[str, Any] = {"position": row.position, "event_id": None, "type": None, "occurred_at": None,
                            "recorded_at": None, "data": None}
    if isinstance(event, Exception):
        item["type"] = "undecodable"
        item["data"] = {"error": f"{type(event).__name__}: {event}", "state": row.state.decode(errors="replace")}
    else:
        item["recorded_at"] = rfc3339(event.timestamp)
        if isinstance(event, Customer.Interaction):
            item.update(event_id=event.event_id, type=TYPE_BY_EVENT_CLASS[type(event)],
                        occurred_at=rfc3339(event.occurred_at), data=json.loads(json.dumps(event.data, default=str)))
        elif isinstance(event, Customer.IdentityChange):  # who is who (issue 14), with what caused it
            item.update(type=IDENTITY_TYPES[type(event)], event_id=event.cause_event_id,
                        occurred_at=rfc3339(event.cause_occurred_at),
                        data={k: v for k, v in vars(event).items() if k not in _NOT_DATA})
        elif isinstance(event, Customer.Forgotten):  # an erasure (issue 15): the keys destroyed, and why
            item.update(type="forgotten", data={"customer_id": event.customer_id, "key_ids": event.key_ids,
                                                "reason": event.reason})
        else:  # the stream's first event registers the customer
            item["type"] = "registered"
    item["hash"] = row.hash.hex() if row.hash is not None else None
    item["previous_hash"] = (previous_hash or chain.GENESIS).hex()
    return item


@dataclass
class Evidence:
    """What `rapport audit export` writes for one customer at a point in time."""

    customer_id: str
    point: PointInTime
    events: list[dict[str, Any]]  # every stored event, `included` if it counts at `point`
    chain_ok: bool
    view: dict[str, Any] | None  # None: the customer was unknown at `point`

    def header(self) -> dict[str, Any]:
        return {"kind": "export", "customer_id": self.customer_id, "as_of": rfc3339(self.point.as_of),
                "known_at": rfc3339(self.point.known_at), "exported_at": rfc3339(utc_now()),
                "events": len(self.events), "included": sum(e["included"] for e in self.events),
                "chain_ok": self.chain_ok}


def export(conn: Any, store: Any, settings: Any, customer_id: str, point: PointInTime) -> Evidence | None:
    """The evidence of one customer at `point` (None if it has no stream): its stored events with
    hashes and recorded times, whether its chain holds, and its view from the included events."""
    stream = customer_id_for(customer_id)
    rows = audit.stream_rows(conn, stream)
    if not rows:
        return None
    items, included, previous = [], [], None
    mapper = opening_mapper(conn)
    for row in rows:
        event = decoded(row, mapper)
        admitted = isinstance(event, Customer.Interaction) and point.admits(event)
        if admitted:
            included.append(event)
        items.append({**event_item(row, event, previous), "included": admitted})
        previous = row.hash
    views = PointInTimeViews(store, ModelSettings(thresholds=settings.thresholds))
    # Who the customer was then (its identifiers, refused links), as the API's view says.
    view = view_from_events(views, included, point, views.identity_at(conn, customer_id, point)) if included else None
    return Evidence(customer_id, point, items, not audit.diagnose(conn, stream), view)


def write_jsonl(evidence: Evidence, out: IO[str]) -> None:
    out.write(json.dumps(evidence.header()) + "\n")
    for item in evidence.events:
        out.write(json.dumps({"kind": "event", **item}) + "\n")
    out.write(json.dumps({"kind": "view", "view": evidence.view}) + "\n")


CSV_COLUMNS = ("position", "event_id", "type", "occurred_at", "recorded_at", "included", "hash", "previous_hash", "data")


def write_csv(evidence: Evidence, out: IO[str]) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for item in evidence.events:
        writer.writerow([json.dumps(item["data"]) if k == "data" else item[k] for k in CSV_COLUMNS])
    writer.writerow(["", "", "view", "", "", "", "", "", json.dumps(evidence.view)])


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
