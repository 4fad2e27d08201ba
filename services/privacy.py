"""Forgetting a customer (GDPR art. 17) in an immutable log, by crypto-shredding (issue 15).

`forget(store, settings, CUSTOMER)` destroys the keys its streams' personal fields were sealed with
(`eventstore.sealing`) and, in the same transaction, records `Customer.Forgotten` on each of its
streams and removes its personal data from every read model, the folds kept for point-in-time
views and the dead letters that name it. From then on no answer, export, read model, rebuild or
replay shows it; counts, revenue, scores, lifecycle and the hash chains are unchanged (the chain
is over the stored bytes, sealed boxes included).

The keys go first in the transaction: an ingest batch sealing under one of them holds it (`FOR
SHARE`) until it commits, so every box under a destroyed key is stored before the erasure. The
projector meets `Forgotten` after all of them and removes the personal data again, for rows it
wrote since; `forget` waits (up to `wait_seconds`) for the read models to pass it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from domain.customer import Customer, customer_id_for
from domain.personal import PERSONAL_CUSTOMER_FIELDS
from eventstore import tables
from eventstore.store import InteractionLog
from projections.catalog import READ_MODELS
from projections.runner import positions
from services.settings import Settings

ATTEMPTS = 5
ERASED = "[erased: it named a forgotten customer]"


class ForgetRequestError(ValueError):
    """What was asked cannot be done; the message says why and what to do."""


@dataclass
class Erasure:
    """What `forget` did."""

    customer_id: str
    streams: list[UUID]
    keys_destroyed: int
    dead_letters_erased: int
    positions: list[int] = field(default_factory=list)  # the Forgotten events' places in the log
    read_models_done: bool = False  # every read model has passed them (or `wait_seconds` ran out)

    def as_json(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "streams": [str(s) for s in self.streams],
                "keys_destroyed": self.keys_destroyed, "dead_letters_erased": self.dead_letters_erased,
                "read_models_caught_up": self.read_models_done}


def forget(store: InteractionLog, settings: Settings, customer_id: str, reason: str = "",
           wait_seconds: float = 30.0) -> Erasure:
    from services.bootstrap import read_models

    reason = reason.strip() or "forgotten at the customer's request"
    for attempt in range(1, ATTEMPTS + 1):
        streams = _streams_of(store, customer_id)
        terms = _personal_terms(store, streams)
        with store.interactions.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("SELECT stream, key_id FROM {} WHERE stream = ANY(%s)").format(
                Identifier(tables.STREAM_KEYS)), (streams,))
            keys = dict(curs.fetchall())
        versions = store.stream_versions(streams)
        events = [Customer.Forgotten(originator_id=s, originator_version=versions[s] + 1,  # type: ignore[call-arg]
                                     timestamp=Customer.Forgotten.create_timestamp(), customer_id=customer_id,
                                     key_ids=[keys[s]] if s in keys else [], reason=reason)
                  for s in streams]
        done: dict[str, int] = {}

        def erase(curs: Any, keys: dict[UUID, str] = keys, terms: set[str] = terms, streams: list[UUID] = streams,
                  done: dict[str, int] = done) -> None:
            # Keys first: a batch still sealing under one holds it; this waits for it to commit.
            curs.execute(SQL("DELETE FROM {} WHERE stream = ANY(%s) AND key_id = ANY(%s) RETURNING stream").format(
                Identifier(tables.STREAM_KEYS)), (list(keys), list(keys.values())))
            if len(curs.fetchall()) != len(keys):  # the recorder pipelines: rowcount is not known yet
                raise IntegrityError("a stream's key changed while it was being forgotten; trying again")
            for model in read_models(settings):
                model.redact(curs, [customer_id])
            curs.execute(SQL("DELETE FROM {} WHERE originator_id = ANY(%s)").format(
                Identifier(tables.FOLD_CHECKPOINTS)), (streams,))
            done["dead_letters"] = _erase_dead_letters(curs, terms)

        try:
            store.record(events, before=erase)
        except IntegrityError:
            store.forget_stream_versions()
            if attempt == ATTEMPTS:
                raise
            continue
        for stream, key_id in keys.items():
            store.stream_keys.destroyed(stream, [key_id])
        erasure = Erasure(customer_id, streams, len(keys), done.get("dead_letters", 0))
        erasure.positions = _positions_of(store, events)
        erasure.read_models_done = _wait_for_read_models(store, max(erasure.positions), wait_seconds)
        return erasure
    raise AssertionError("unreachable")


def _streams_of(store: InteractionLog, customer_id: str) -> list[UUID]:
    """The customer's streams now: those of its identifiers, and its account's own."""
    identity = store.interactions.identity
    with store.interactions.datastore.get_connection() as conn:
        members = identity.members(conn, customer_id)
        survivor = identity.redirect(conn, customer_id) if not members else None
    if survivor:
        raise ForgetRequestError(f"customer {customer_id!r} was merged into {survivor!r}: forget that one (its "
                                 "events include this one's)")
    # An identifier's stream has events only if some event was keyed by it (its anchor).
    candidates = {stream for _, stream in members} | {customer_id_for(customer_id)}
    streams = set(store.stream_versions(candidates))
    if not streams:
        raise ForgetRequestError(f"no customer {customer_id!r} (give its id as GET /customers/{{id}} answers it)")
    return sorted(streams)


def _personal_terms(store: InteractionLog, streams: Sequence[UUID]) -> set[str]:
    """The customer's emails, phones and names as its events wrote them (and their normal forms), to find
    the dead letters that name it."""
    terms: set[str] = set()
    for stream in streams:
        for event in store.events.get(stream):
            if isinstance(event, Customer.Interaction):
                terms.update(v for f in PERSONAL_CUSTOMER_FIELDS if isinstance(v := event.customer.get(f), str) and len(v) >= 3)
    return terms


def _erase_dead_letters(curs: Any, terms: set[str]) -> int:
    """Dead letters whose key or bytes hold one of `terms` keep their place and reason, without the message."""
    if not terms:
        return 0
    patterns = [t.encode() for t in sorted(terms)]
    curs.execute(SQL("SELECT source_topic, source_partition, source_offset, reason FROM {} WHERE "
                     "EXISTS (SELECT 1 FROM unnest(%s::bytea[]) AS t(term) WHERE position(t.term IN message_value) > 0 "
                     "OR position(t.term IN coalesce(message_key, ''::bytea)) > 0)").format(
                         Identifier(tables.DEAD_LETTERS)), (patterns,))
    rows = curs.fetchall()
    for row in rows:
        values = list(row.values()) if isinstance(row, dict) else list(row)
        reason = values[3]
        for term in terms:
            reason = reason.replace(term, "[forgotten]")
        curs.execute(SQL("UPDATE {} SET message_key = NULL, message_value = %s, reason = %s WHERE source_topic = %s "
                         "AND source_partition = %s AND source_offset = %s").format(Identifier(tables.DEAD_LETTERS)),
                     (ERASED.encode(), reason, *values[:3]))
    return len(rows)


def _positions_of(store: InteractionLog, events: Sequence[Any]) -> list[int]:
    with store.interactions.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
        curs.execute(SQL("SELECT notification_id FROM {} WHERE (originator_id, originator_version) IN "
                         "(SELECT * FROM unnest(%s::uuid[], %s::int8[]))").format(Identifier(tables.EVENTS)),
                     ([e.originator_id for e in events], [e.originator_version for e in events]))
        return [row[0] for row in curs.fetchall()]


def _wait_for_read_models(store: InteractionLog, position: int, wait_seconds: float) -> bool:
    """Whether every read model passed `position` within `wait_seconds` (the projector redacts again there)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with store.interactions.datastore.get_connection() as conn, conn.cursor() as curs:
            at = positions(curs, list(READ_MODELS))
        if min(at.values(), default=position) >= position:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
