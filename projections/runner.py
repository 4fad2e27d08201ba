"""The projection runner: follows the event store's notification log, a page at a time.

Delivery guarantee: exactly-once. Each page of events and the projection's new position
are written in ONE transaction (eventsourcing's tracking record, which only moves forward,
so two runners of one projection cannot both apply a page). After a crash the runner
resumes after the last committed position. The event store commits in notification-id
order (its EXCLUSIVE table lock), so reading past an id never skips one committed later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    InterfaceError,
    Mapper,
    OperationalError,
    Tracking,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import Composable

log = logging.getLogger("rapport.projector")

TRACKING_TABLE = "projection_tracking"
MAX_FAILURES_IN_A_ROW = 12


class Projection(Protocol):
    """A read model: its tables and how a page of domain events changes them."""

    name: str
    create_statements: Sequence[Composable]

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        """Apply a page of events (in notification order) with set-based SQL on `curs`."""


class ProjectionRecorder(PostgresTrackingRecorder):
    """Writes a projection's rows and its position in one transaction."""

    def __init__(self, datastore: PostgresDatastore, projection: Projection) -> None:
        super().__init__(datastore, tracking_table_name=TRACKING_TABLE)
        self.projection = projection
        self.sql_create_statements += list(projection.create_statements)

    def position(self) -> int:
        return self.max_tracking_id(self.projection.name) or 0

    def apply_page(self, events: Sequence[Any], last_notification_id: int) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self.projection.apply(curs, events)
            self._insert_tracking(curs, Tracking(self.projection.name, last_notification_id))


class ProjectionRunner:
    """Keeps one projection up to date with the event store."""

    def __init__(
        self,
        source: ApplicationRecorder,
        mapper: Mapper[Any],
        recorder: ProjectionRecorder,
        page_size: int = 2000,
        idle_wait_seconds: float = 0.1,
        log_every_seconds: float = 10.0,
    ) -> None:
        self.source = source
        self.mapper = mapper
        self.recorder = recorder
        self.page_size = page_size
        self.idle_wait_seconds = idle_wait_seconds
        self.log_every_seconds = log_every_seconds
        self.applied = 0

    @property
    def name(self) -> str:
        return self.recorder.projection.name

    def run_once(self) -> int:
        """Apply the next page, if any; the number of events applied."""
        position = self.recorder.position()
        notifications = self.source.select_notifications(
            start=position, limit=self.page_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        events = [self.mapper.to_domain_event(n) for n in notifications]
        self.recorder.apply_page(events, notifications[-1].id)
        self.applied += len(events)
        return len(events)

    def run(self, stop: threading.Event) -> None:
        """Follow the log until `stop` is set."""
        last_log, applied_at_log = time.monotonic(), 0
        log.info("%s: starting after notification %d", self.name, self.recorder.position())
        failures = 0
        while not stop.is_set():
            try:
                applied = self.run_once()
            except IntegrityError as error:
                # Another runner of this projection applied the page first (its tracking record
                # moved on): nothing of ours was written; carry on from the new position.
                log.warning("%s: page already applied elsewhere (%s); continuing", self.name, error)
                applied = 0
            except (OperationalError, InterfaceError) as error:
                failures += 1
                if failures > MAX_FAILURES_IN_A_ROW:  # about 5 minutes: let a supervisor decide
                    raise
                delay = min(0.5 * 2**failures, 30.0)
                log.error("%s: database unavailable (%s); retrying in %.1f s", self.name, error, delay)
                stop.wait(delay)
                continue
            failures = 0
            if applied == 0:
                stop.wait(self.idle_wait_seconds)
            now = time.monotonic()
            if now - last_log >= self.log_every_seconds and self.applied != applied_at_log:
                rate = (self.applied - applied_at_log) / (now - last_log)
                log.info("%s: applied %d events (%.0f events/s), position %d, head %s", self.name,
                         self.applied - applied_at_log, rate, self.recorder.position(),
                         self.source.max_notification_id())
                last_log, applied_at_log = now, self.applied
        log.info("%s: stopping at notification %d", self.name, self.recorder.position())

    def catch_up(self) -> int:
        """Apply pages until the log's head at the time of the call is reached."""
        head = self.source.max_notification_id() or 0
        total = 0
        while self.recorder.position() < head:
            applied = self.run_once()
            if applied == 0:
                break
            total += applied
        return total
