"""One customer's read models as they stood at a point in time (contract §5), built from its own
events in the event store, never from a read model.

The events are read and decoded by the library (its mapper runs any upcasting) and folded by the
read models' own code: `customer_360`'s handlers and merge rules, as the projector combines a page
(`MergeReadModel.rows_of`), and the lifecycle fold of `domain.lifecycle` over the lifecycle read
model's facts (`projections.lifecycle.fact_of`). So a point-in-time view differs from the live one
only by the events it leaves out, never by a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.customer import TYPE_BY_EVENT_CLASS, Customer, customer_id_for
from domain.lifecycle import StageInterval, lifecycle_history
from eventstore.store import InteractionLog
from projections.customer_360 import Customer360
from projections.lifecycle import fact_of
from projections.readmodel import ModelSettings


@dataclass(frozen=True)
class PointInTime:
    """Which of a customer's events a view is built from, and the moment it is evaluated at.

    - `as_of` A: the events that occurred by A, evaluated at A: what was true then.
    - `known_at` K: the events Rapport had recorded by K, evaluated at K: what we knew then. An
      event's recorded time is its eventsourcing `timestamp`, set by ingest when it made the event,
      just before the transaction that stored it.
    - both: the events passing both, evaluated at A: what we knew at K about the state at A (an
      auditor's "what did our records say on K about March 1st").
    """

    as_of: datetime | None = None
    known_at: datetime | None = None

    def __post_init__(self) -> None:
        assert self.as_of is not None or self.known_at is not None, "a point in time needs as_of or known_at"

    @property
    def at(self) -> datetime:
        """The moment the view is evaluated at: stages reached by the passing of time count up to it."""
        moment = self.as_of if self.as_of is not None else self.known_at
        assert moment is not None
        return moment

    def admits(self, event: Customer.Interaction) -> bool:
        return ((self.as_of is None or event.occurred_at <= self.as_of)
                and (self.known_at is None or event.timestamp <= self.known_at))


class PointInTimeViews:
    """Reads one customer's events at a point in time and folds them as the read models do."""

    def __init__(self, store: InteractionLog, settings: ModelSettings) -> None:
        self.store = store
        self.thresholds = settings.thresholds
        self._customer_360 = Customer360(settings=settings)

    def interactions(self, customer_key: str, point: PointInTime) -> list[Customer.Interaction]:
        """The customer's interactions that `point` admits, in stream order (none: unknown then)."""
        return [event for event in self.store.events.get(customer_id_for(customer_key))
                if isinstance(event, Customer.Interaction) and point.admits(event)]

    def customer_360_rows(self, events: Sequence[Customer.Interaction]) -> dict[str, list[list[Any]]]:
        """The customer's rows of the `customer_360` tables, as the read model would hold them
        had it seen only these events."""
        return self._customer_360.rows_of(events)

    def lifecycle_history(self, events: Sequence[Customer.Interaction]) -> list[StageInterval]:
        """The stage intervals these events give, including those time alone brings after them."""
        return lifecycle_history(map(fact_of, events), self.thresholds)


def timeline_rows(events: Sequence[Customer.Interaction]) -> list[dict[str, Any]]:
    """The events as rows of the timeline read model (`projections.timeline.EVENTS`: the attributes
    `Timeline.apply` stores), newest `occurred_at` first, ties by `event_id` descending: the order
    of its keyset pages."""
    return [{"occurred_at": event.occurred_at, "event_id": event.event_id, "type": TYPE_BY_EVENT_CLASS[type(event)],
             "source": event.source, "data": event.data}
            for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id), reverse=True)]
