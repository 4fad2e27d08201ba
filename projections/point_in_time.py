"""One customer's read models as they stood at a point in time (contract §5), built from its own
events in the event store, never from a read model.

The events are decoded as the library's mapper decodes them (upcasting included) and folded by
the read models' own code: `customer_360`'s handlers and merge rules, as the projector combines a
page, and the lifecycle fold of `domain.lifecycle` over the lifecycle read model's facts
(`projections.lifecycle.fact_of`). So a point-in-time view differs from the live one only by the
events it leaves out, never by a rule. Long streams are folded from checkpoints
(`projections.checkpoints`): the answer is the same as folding every admitted event.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from domain.customer import TYPE_BY_EVENT_CLASS, Customer, customer_id_for
from domain.identity import Identifier, Refusal, resolve
from eventstore.checkpoints import microseconds
from eventstore.store import InteractionLog
from projections.checkpoints import CHECKPOINT_EVERY, CustomerFold, FoldCheckpoints
from projections.customer_360 import Customer360
from projections.readmodel import ModelSettings

Moment = TypeVar("Moment", datetime, int)


@dataclass(frozen=True)
class PointInTime(Generic[Moment]):
    """Which of a customer's events a view is built from, and the moment it is evaluated at.

    - `as_of` A: the events that occurred by A, evaluated at A: what was true then.
    - `known_at` K: the events Rapport had recorded by K, evaluated at K: what we knew then. An
      event's recorded time is its eventsourcing `timestamp`, set by ingest when it made the event,
      just before the transaction that stored it.
    - both: the events passing both, evaluated at A: what we knew at K about the state at A (an
      auditor's "what did our records say on K about March 1st").

    The moments are datetimes, or microseconds since 1970 UTC (`in_microseconds`), the unit of
    the stream time index that finds the admitted events without decoding the others.
    """

    as_of: Moment | None = None
    known_at: Moment | None = None

    def __post_init__(self) -> None:
        assert self.as_of is not None or self.known_at is not None, "a point in time needs as_of or known_at"

    @property
    def at(self) -> Moment:
        """The moment the view is evaluated at: stages reached by the passing of time count up to it."""
        moment = self.as_of if self.as_of is not None else self.known_at
        assert moment is not None
        return moment

    def admits(self, event: Customer.Interaction) -> bool:
        return self.admits_moments(event.occurred_at, event.timestamp)

    def admits_moments(self, occurred: Moment, recorded: Moment) -> bool:
        """THE rule: an event that occurred then and was recorded then is in the view."""
        return ((self.as_of is None or occurred <= self.as_of)
                and (self.known_at is None or recorded <= self.known_at))

    def in_microseconds(self) -> PointInTime[int]:
        return PointInTime(None if self.as_of is None else _microseconds(self.as_of),
                           None if self.known_at is None else _microseconds(self.known_at))

    def known_at_alone(self) -> PointInTime[Moment] | None:
        """The point of `known_at` without `as_of` (None without `known_at`): what was recorded by then."""
        return None if self.known_at is None else PointInTime(known_at=self.known_at)


def _microseconds(moment: datetime | int) -> int:
    return moment if isinstance(moment, int) else microseconds(moment)


@dataclass
class IdentityAt:
    """Who a customer was at a point in time: its identifiers, the links refused to it (each with
    the customer that kept the other identifier), and the streams of its events."""

    customer_id: str
    identifiers: list[Identifier]
    refusals: list[tuple[Refusal, str]]
    streams: list[UUID]


class PointInTimeViews:
    """Reads one customer's events at a point in time and folds them as the read models do,
    from the checkpoints of `projections.checkpoints` (taking them by its rule)."""

    def __init__(self, store: InteractionLog, settings: ModelSettings, checkpoint_every: int | None = None) -> None:
        self.store = store
        self.thresholds = settings.thresholds
        self._customer_360 = Customer360(settings=settings)
        # Read at construction, not import: tests take checkpoints every few events.
        self.checkpoints = FoldCheckpoints(store, self._customer_360, self.thresholds,
                                           checkpoint_every or CHECKPOINT_EVERY)

    def identity_at(self, conn: Any, customer_id: str, point: PointInTime[datetime]) -> IdentityAt | None:
        """Who the customer was at `point`: identity resolved again (`domain.identity.resolve`) from
        the links that point admits (those that occurred by `as_of`, first recorded by `known_at`)
        and the operators' separations (with `known_at`, those made by then). None: a customer of a
        store from before identity resolution (its one stream is its history)."""
        tables = self.store.interactions.identity
        seeds = {x for x, _ in tables.members(conn, customer_id)}
        survivor = tables.redirect(conn, customer_id)
        if survivor is not None:
            seeds |= {x for x, _ in tables.members(conn, survivor)}
        if not seeds:
            return None
        state = tables.closure(conn, seeds)
        links = [link for pair, link in state.links.items()
                 if point.admits_moments(link.occurred_at, state.recorded[pair])]
        separations = [s for s in state.separations
                       if point.known_at is None or state.separations_made[s] <= point.known_at]
        then = resolve(links, separations)
        members = then.members.get(customer_id, [])
        refusals = [(r, then.customer_of[r.link.other]) for r in then.refusals_of(customer_id) if r.link.other]
        streams = sorted({customer_id_for(x.value) for x in members} | {customer_id_for(customer_id)}) if members else []
        return IdentityAt(customer_id, members, refusals, streams)

    def fold(self, customer_key: str, point: PointInTime[datetime]) -> CustomerFold | None:
        """The read models' fold of the customer's events that `point` admits (None: unknown then),
        its rows all under `customer_key`, with `identity` set to who it was then."""
        admits = point.in_microseconds().admits_moments
        known = point.known_at_alone()
        knows = known.in_microseconds().admits_moments if known else None
        with self.checkpoints.tables.connection() as conn:
            identity = self.identity_at(conn, customer_key, point)
            streams = [customer_id_for(customer_key)] if identity is None else identity.streams
            read = [(stream, *self.checkpoints.read(conn, stream)) for stream in streams]
            read = [(stream, times, checkpoints, admitted) for stream, times, checkpoints in read
                    if any(admitted := times.admitted(admits))]
            if not read:
                return None
            if len(read) == 1:  # one stream: from its checkpoints
                [(stream, times, checkpoints, admitted)] = read
                fold = self.checkpoints.fold(conn, stream, times, checkpoints, admits, admitted, knows)
            else:  # a customer of several streams (its identifiers' own): each admitted event, folded once
                events = [e for stream, times, _, admitted in read
                          for e in self.checkpoints.events(conn, stream, times, [p for p, a in enumerate(admitted) if a])]
                fold = self.fold_of(sorted(events, key=lambda e: (e.occurred_at, e.event_id)))
        fold.customer_id = customer_key
        fold.identity = identity
        return fold

    def customer_360_rows(self, fold: CustomerFold) -> dict[str, list[list[Any]]]:
        """The fold's `customer_360` rows, all under its customer (its events may be keyed by others)."""
        rows = fold.customer_360_rows()
        return rows if fold.customer_id is None else self._customer_360.rows_as(rows, fold.customer_id)

    def fold_of(self, events: Sequence[Customer.Interaction]) -> CustomerFold:
        """The read models' fold of these events alone (`rapport audit export` folds what it read)."""
        fold = CustomerFold(self._customer_360, self.thresholds)
        fold.add(events)
        return fold

    def timeline(self, customer_key: str, point: PointInTime[datetime], before: tuple[datetime, str] | None,
                 limit: int) -> list[dict[str, Any]] | None:
        """Up to `limit + 1` timeline rows (`timeline_rows`) of the events `point` admits, newest
        first, after the cursor `before` (its `(occurred_at, event_id)`); None: unknown then. Only
        the events of the page (and those of its last moment) are read and decoded."""
        admits = point.in_microseconds().admits_moments
        with self.checkpoints.tables.connection() as conn:
            identity = self.identity_at(conn, customer_key, point)
            streams = [customer_id_for(customer_key)] if identity is None else identity.streams
            rows: list[dict[str, Any]] = []
            known = False
            for stream in streams:
                page = self._timeline_of_stream(conn, stream, admits, before, limit)
                if page is not None:
                    known = True
                    rows += page
            if not known:
                return None
        rows.sort(key=lambda r: (r["occurred_at"], r["event_id"]), reverse=True)
        return rows[:limit + 1]

    def _timeline_of_stream(self, conn: Any, stream: UUID, admits: Any, before: tuple[datetime, str] | None,
                            limit: int) -> list[dict[str, Any]] | None:
        times, _ = self.checkpoints.read(conn, stream)
        candidates = [p for p, admitted in enumerate(times.admitted(admits)) if admitted]
        if not candidates:
            return None
        if before is not None:
            bound = microseconds(before[0])
            candidates = [p for p in candidates if times.occurred[p] <= bound]
        wanted = limit + 1
        taken = wanted
        while True:
            newest = heapq.nlargest(taken, candidates, key=times.occurred.__getitem__)
            if len(newest) < len(candidates):  # with every event of the last moment: event_id orders them
                last = times.occurred[newest[-1]]
                newest = [p for p in candidates if times.occurred[p] >= last]
            events = self.checkpoints.events(conn, stream, times, newest)
            rows = timeline_rows([e for e in events if before is None or (e.occurred_at, e.event_id) < before])
            if len(rows) >= wanted or len(newest) == len(candidates):
                return rows[:wanted]
            taken *= 2


def timeline_rows(events: Sequence[Customer.Interaction]) -> list[dict[str, Any]]:
    """The events as rows of the timeline read model (`projections.timeline.EVENTS`: the attributes
    `Timeline.apply` stores), newest `occurred_at` first, ties by `event_id` descending: the order
    of its keyset pages."""
    return [{"occurred_at": event.occurred_at, "event_id": event.event_id, "type": TYPE_BY_EVENT_CLASS[type(event)],
             "source": event.source, "data": event.data}
            for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id), reverse=True)]
