"""Read models follow who is who (issue 14): each interaction counts for its customer now, and a
change of identity refolds the customers it touches.

**Whose an interaction is** (`Owners.of`): its `customer.id` if it has one (an account id is its
customer's id for ever: two ids are never merged); else the customer its stream's identifier (the
email or phone it was keyed by) belongs to now, from the event store's `rapport_identifiers`;
events stored before identity resolution keep their customer key.

**A change of identity** (`Customer.IdentifiersJoined` / `IdentifiersLeft` in the log) is applied
by refolding every customer it names (`refold`): the read model forgets their rows
(`ReadModel.forget_customers`) and applies again, through its own handlers, every interaction of
the streams they own now, up to the change's position in the log. The rows written before the
change are flushed first, so nothing counts twice; interactions after it are applied as they come,
to their owner then. A read model behind the head may meet an event whose stream has moved since:
it puts it under the new owner at once, and the change, when reached, refolds both customers
again, so a model that has caught up holds the customers of now, whatever order it met them in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from domain.customer import TYPE_BY_EVENT_CLASS, Customer, customer_id_for
from eventstore import tables

IDENTITY_CHANGES = (Customer.IdentifiersJoined, Customer.IdentifiersLeft)
_CHANGES = frozenset(IDENTITY_CHANGES)
_INTERACTIONS = frozenset(TYPE_BY_EVENT_CLASS)
EVENT_STORE_SCHEMA = "public"
OWNERS_KEPT = 200_000  # streams whose owner a read model remembers


class Owners:
    """Whose each interaction is; the owners of streams looked up once per page and remembered."""

    def __init__(self, schema: str = EVENT_STORE_SCHEMA) -> None:
        self._by_stream: dict[UUID, str] = {}
        self._identifiers = SQL("{}.{}").format(Identifier(schema), Identifier(tables.IDENTIFIERS))

    def of(self, event: Any) -> str:
        return event.customer.get("id") or self._by_stream.get(event.originator_id) or event.customer_key

    def load(self, curs: Any, events: Sequence[Any]) -> None:
        """Look up the owners of the streams of these events' id-less interactions not known yet."""
        known = self._by_stream
        missing = {e.originator_id for e in events
                   if type(e) in _INTERACTIONS and "id" not in e.customer and e.originator_id not in known}
        if missing:
            if len(self._by_stream) > OWNERS_KEPT:  # looked up again when needed
                self._by_stream.clear()
            with curs.connection.cursor(row_factory=tuple_row) as c:
                c.execute(SQL("SELECT stream, customer_id FROM {} WHERE stream = ANY(%s)").format(self._identifiers),
                          (list(missing),))
                self._by_stream.update(c.fetchall())

    def forget(self) -> None:
        self._by_stream.clear()

    def streams_of(self, curs: Any, customers: Sequence[str]) -> list[UUID]:
        """Every stream whose interactions are these customers' now: those of their identifiers,
        and each customer's own (its account's, or a store's from before identity resolution)."""
        with curs.connection.cursor(row_factory=tuple_row) as c:
            c.execute(SQL("SELECT stream FROM {} WHERE customer_id = ANY(%s)").format(self._identifiers), (list(customers),))
            streams = {row[0] for row in c.fetchall()}
        return sorted(streams | {customer_id_for(customer) for customer in customers})


def changed_customers(event: Any) -> set[str]:
    """The customers an identity change touches (both sides)."""
    if isinstance(event, Customer.IdentifiersJoined):
        return {event.customer_id, event.source}
    if isinstance(event, Customer.IdentifiersLeft):
        return {event.customer_id, event.target}
    return set()


# Reads every stored event of these streams up to a notification id, decoded, in log order.
ReadStreams = Callable[[Any, Sequence[UUID], int], list[Any]]


class IdentityBatch:
    """A read model's batch that splits at identity changes: the pages before one are finished
    (written), the customers it touches are refolded up to it, and a new batch goes on."""

    def __init__(self, model: Any, curs: Any, read_streams: ReadStreams, position_of: Callable[[Any, Any], int]) -> None:
        self.model, self.curs, self.read_streams, self.position_of = model, curs, read_streams, position_of
        self.inner = model.batch(curs)

    def add(self, events: Sequence[Any]) -> None:
        start = 0
        for i, event in enumerate(events):
            if type(event) is Customer.Forgotten:
                # What came before is written, then the customer's personal data removed: an erasure
                # (services.privacy) did it at once; here it holds for rows written since, and on rebuilds.
                self._add(events[start:i])
                self.inner.finish()
                self.model.redact(self.curs, [event.customer_id])
                self.inner = self.model.batch(self.curs)
                start = i + 1
            elif type(event) in _CHANGES:
                self._add(events[start:i])
                self.inner.finish()
                refold(self.model, self.curs, changed_customers(event), self.position_of(self.curs, event),
                       self.read_streams)
                self.inner = self.model.batch(self.curs)
                start = i + 1
        self._add(events[start:])

    def _add(self, events: Sequence[Any]) -> None:
        if events:
            self.model.owners.load(self.curs, events)
            self.inner.add(events)

    def finish(self) -> None:
        self.inner.finish()


def refold(model: Any, curs: Any, customers: set[str], position: int, read_streams: ReadStreams) -> None:
    """The model's rows of these customers, made again from their streams' interactions up to `position`."""
    owners: Owners = model.owners
    owners.forget()  # the streams' owners are those of now
    ordered = sorted(customers)
    model.forget_customers(curs, ordered)
    events = [e for e in read_streams(curs, owners.streams_of(curs, ordered), position)
              if isinstance(e, Customer.Interaction)]
    owners.load(curs, events)
    events = [e for e in events if owners.of(e) in customers]
    if events:
        batch = model.batch(curs)
        batch.add(events)
        batch.finish()
