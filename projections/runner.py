"""The projector: follows the event store's notification log and keeps many read models current.

Delivery guarantee: exactly-once per read model. Each page of the log is read and decoded ONCE
for all read models; in ONE transaction each read model applies the events past its own position
and records its new position (eventsourcing's tracking record, which only moves forward, so two
projectors cannot both apply a page). After a crash the projector resumes after the last
committed positions. The event store commits in notification-id order (its EXCLUSIVE table
lock), so reading past an id never skips one committed later.

Far behind the head (a catch-up, a rebuild), many pages go in one transaction, up to
`catch_up_events` events or `catch_up_seconds`: each read model takes them as one batch
(`ReadModel.batch`) and writes what it keeps per key (a customer's row, fold and intervals, a day
bucket) once per batch instead of once per page; positions move once, with the rows. Near the
head, one page per transaction, for freshness. The time bound keeps the read models' locks (which
a rebuild's swap waits for) and the transaction short.

A read model that raises on an event *parks* that event (table `projection_parked`, with the
error and the stored event) and goes on with the rest; `retry_parked` applies parked events again.
A batch that fails is rolled back and applied again page by page, where parking happens.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    InterfaceError,
    Mapper,
    Notification,
    OperationalError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL

from projections.identity import IdentityBatch
from projections.pages import LogPages
from projections.readmodel import ANALYTICS_SCHEMA, LIVE_SCHEMA, Batch, ReadModel

log = logging.getLogger("rapport.projector")

TRACKING_TABLE = "projection_tracking"
PARKED_TABLE = "projection_parked"
VERSIONS_TABLE = "projection_versions"
MAX_FAILURES_IN_A_ROW = 12
CATCH_UP_LAG_PAGES = 4  # "far behind": at least this many pages behind the head
# Errors of the connection or the server, not of an event: retried, never parked.
UNAVAILABLE = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class Undecodable:
    """A stored event the mapper could not turn into a domain event: parked by every read model."""

    error: str


def lock_key(tracking_name: str) -> int:
    """Advisory lock of one read model's tables: pages, retries of parked events and swaps of a
    rebuilt copy take it, so they never interleave."""
    return zlib.crc32(f"rapport-projection:{tracking_name}".encode()) - 2**31


class ProjectionStore(PostgresTrackingRecorder):
    """Positions of the read models (`projection_tracking`) and their parked events."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, tracking_table_name=TRACKING_TABLE)
        self.sql_create_statements.append(SQL(
            f"CREATE TABLE IF NOT EXISTS {PARKED_TABLE} ("  # type: ignore[arg-type]
            "read_model text NOT NULL, notification_id bigint NOT NULL, originator_id uuid NOT NULL, "
            "originator_version int NOT NULL, topic text NOT NULL, state bytea NOT NULL, error text NOT NULL, "
            "attempts int NOT NULL DEFAULT 1, parked_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (read_model, notification_id))"
        ))
        self.sql_create_statements.append(SQL(
            f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (read_model text PRIMARY KEY, version int NOT NULL)"  # type: ignore[arg-type]
        ))

    def read_positions(self, names: Sequence[str]) -> dict[str, int]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            return positions(curs, names)

    def park(self, curs: Any, name: str, notification: Notification, error: BaseException | str) -> None:
        curs.execute(
            f"INSERT INTO {PARKED_TABLE} (read_model, notification_id, originator_id, originator_version, topic, "  # noqa: S608 - names from constants
            "state, error) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (read_model, notification_id) "
            "DO UPDATE SET error = excluded.error, attempts = projection_parked.attempts + 1",
            (name, notification.id, notification.originator_id, notification.originator_version,
             notification.topic, notification.state, describe(error)),
        )


def positions(curs: Any, names: Sequence[str]) -> dict[str, int]:
    """Each read model's position (0 before its first page)."""
    curs.execute(f"SELECT application_name, notification_id FROM {TRACKING_TABLE} WHERE application_name = ANY(%s)",  # noqa: S608 - names from constants
                 (list(names),))
    found = {row["application_name"]: row["notification_id"] for row in curs.fetchall()}
    return {name: found.get(name, 0) for name in names}


def _columns_match(curs: Any, model: ReadModel) -> bool:
    for table in model.tables:
        curs.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                     (model.schema, table.name))
        found = {row["column_name"] for row in curs.fetchall()}
        if found and found != set(table.column_names):
            return False
    return True


def stored_versions(curs: Any, names: Sequence[str]) -> dict[str, int]:
    curs.execute(f"SELECT read_model, version FROM {VERSIONS_TABLE} WHERE read_model = ANY(%s)", (list(names),))  # noqa: S608 - names from constants
    return {row["read_model"]: row["version"] for row in curs.fetchall()}


def record_version(curs: Any, name: str, version: int) -> None:
    curs.execute(f"INSERT INTO {VERSIONS_TABLE} VALUES (%s, %s) ON CONFLICT (read_model) DO UPDATE "  # noqa: S608 - names from constants
                 "SET version = excluded.version", (name, version))


def describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 2000 else text[:1999] + "…"


@dataclass
class ModelStats:
    events: int = 0
    seconds: float = 0.0
    parked: int = 0


@dataclass
class Projector:
    """Keeps a set of read models up to date with the event store, a page at a time."""

    source: ApplicationRecorder
    mapper: Mapper[Any]
    store: ProjectionStore
    models: Sequence[ReadModel]
    page_size: int = 2000
    # While far behind the head (a catch-up, a rebuild), this many events per transaction; near
    # it, one page per transaction, for freshness. 0: always page by page.
    catch_up_events: int = 50_000  # RAPPORT_PROJECTION_CATCH_UP_EVENTS; merged rows and folds held in memory
    catch_up_seconds: float = 10.0  # ... and pages are added to a transaction for at most this long
    idle_wait_seconds: float = 0.1
    log_every_seconds: float = 10.0
    # Which events the read models get; the others are passed over (their positions still move).
    # A replay as of a past moment admits only the events recorded by then.
    admits: Callable[[Any], bool] | None = None
    applied: int = 0
    stats: dict[str, ModelStats] = field(default_factory=dict)
    decode_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._select(self.models)
        self.stale: dict[str, tuple[int, int]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-reader")
        self._ahead: tuple[int, Future[list[tuple[Notification, Any]]]] | None = None
        self._pages = LogPages(self.source, self.mapper)
        self._batch_reached = 0
        self._careful_until = 0  # a batch failed up to here: page by page (parking) until then

    def _select(self, models: Sequence[ReadModel]) -> None:
        self.models = list(models)
        self.names = [tracking_name(m) for m in self.models]
        self.stats = {name: ModelStats() for name in self.names}
        # Locks are always taken in the same order, so two projectors never deadlock.
        self._order = sorted(range(len(self.models)), key=lambda i: lock_key(self.names[i]))

    def leave_out_stale(self) -> None:
        """Stop following read models whose live tables were made by another version of their
        code (a changed read model is rolled out by `rapport projections rebuild NAME`)."""
        with self.store.datastore.transaction(commit=True) as curs:
            for model, name in zip(self.models, self.names, strict=True):
                if model.schema == LIVE_SCHEMA:
                    # Tables of a release before versions were recorded count as version 0 when
                    # their columns differ from this code's.
                    version = model.version if _columns_match(curs, model) else 0
                    curs.execute(f"INSERT INTO {VERSIONS_TABLE} VALUES (%s, %s) ON CONFLICT DO NOTHING",  # noqa: S608 - names from constants
                                 (name, version))
            stored = stored_versions(curs, self.names)
            # Columns that differ from the declaration make tables stale even under the same version.
            stored |= {n: 0 for m, n in zip(self.models, self.names, strict=True) if not _columns_match(curs, m)}
        self.stale = {name: (stored[name], model.version) for model, name in zip(self.models, self.names, strict=True)
                      if name in stored and stored[name] != model.version}
        for name, (made_by, code) in self.stale.items():
            log.error("%s: its tables were made by version %d of the read model and this code writes version %d; "
                      "not following it. Roll the new version out with `rapport projections rebuild %s`, then "
                      "restart the projector.", name, made_by, code, name)
        self._select([m for m, n in zip(self.models, self.names, strict=True) if n not in self.stale])

    def create_tables(self) -> None:
        self.store.create_table()
        with self.store.datastore.transaction(commit=True) as curs:
            curs.execute(f'CREATE SCHEMA IF NOT EXISTS "{ANALYTICS_SCHEMA}"')
            for model in self.models:
                curs.execute(f'CREATE SCHEMA IF NOT EXISTS "{model.schema}"')
                if not _columns_match(curs, model):
                    continue  # tables of another version: left as they are (see `leave_out_stale`)
                for statement in model.create_statements():
                    curs.execute(statement)
                if model.schema == LIVE_SCHEMA:
                    for view in model.views:
                        for statement in view.create_statements():
                            curs.execute(statement)

    def positions(self) -> dict[str, int]:
        return self.store.read_positions(self.names)

    # -- one page -------------------------------------------------------------------------
    def run_once(self) -> int:
        """Apply the next page, if any, in one transaction; the number of notifications read.
        Far behind the head, many pages are applied in that transaction (`catch_up_events`)."""
        start = min(self.positions().values(), default=0)
        page = self._next_page(start)
        if not page:
            return 0
        if self._far_behind(page, start):
            try:
                return self._run_batch(page, start)
            except UNAVAILABLE:
                raise
            except Exception as error:  # noqa: BLE001 - page by page below, parking what fails
                self._careful_until = self._batch_reached
                log.warning("applying notifications %d..%d in one transaction failed (%s); applying them page "
                            "by page", start + 1, self._careful_until, describe(error))
        with self.store.datastore.transaction(commit=True) as curs:
            # Rows and positions commit together, so a server crash that loses the last commits
            # loses both: the pages are applied again. No need to wait for the WAL flush.
            curs.execute("SET LOCAL synchronous_commit = off")
            self.lock(curs)
            # Read again under the locks: a swap or another projector may have moved a position.
            self._apply_page(curs, page, positions(curs, self.names), start)
        self.applied += len(page)
        return len(page)

    def _far_behind(self, page: list[tuple[Notification, Any]], start: int) -> bool:
        if len(page) < self.page_size or self.catch_up_events < 2 * self.page_size or start < self._careful_until:
            return False
        head = self.source.max_notification_id() or 0
        return head - start >= CATCH_UP_LAG_PAGES * self.page_size

    def _run_batch(self, page: list[tuple[Notification, Any]], start: int) -> int:
        """Pages after `start` applied in ONE transaction, up to about `catch_up_events`: each read
        model gets them as one batch (`ReadModel.batch`), so what it writes per key (a customer's
        row, fold, intervals) is written once per batch instead of once per page. The positions
        move once, at the end, with the rows. A page holding an event that cannot be decoded, or
        any error, rolls the whole batch back: the caller then applies it page by page, parking."""
        read = 0
        self._batch_reached = start
        until = time.monotonic() + self.catch_up_seconds
        with self.store.datastore.transaction(commit=True) as curs:
            curs.execute("SET LOCAL synchronous_commit = off")
            self.lock(curs)
            at = positions(curs, self.names)
            batches: dict[str, Batch] = {}
            while True:
                last = self._batch_reached = page[-1][0].id
                for model, name in zip(self.models, self.names, strict=True):
                    if at[name] < start:
                        continue  # moved back (a swapped-in copy): its next page starts earlier
                    events = [e for n, e in page if n.id > at[name]]
                    if not events:
                        continue
                    if any(isinstance(e, Undecodable) for e in events):
                        raise ValueError("a stored event cannot be decoded")
                    began = time.perf_counter()
                    batch = batches.get(name) or batches.setdefault(name, self._batch(model, curs))
                    if admitted := self._admitted(events):
                        batch.add(admitted)
                    stats = self.stats[name]
                    stats.events += len(events)
                    stats.seconds += time.perf_counter() - began
                read += len(page)
                if len(page) < self.page_size or read >= self.catch_up_events or time.monotonic() > until:
                    break
                page = self._next_page(last)
                if not page:
                    break
            for name, batch in batches.items():
                began = time.perf_counter()
                batch.finish()
                self.store._insert_tracking(curs, Tracking(name, last))  # noqa: SLF001
                self.stats[name].seconds += time.perf_counter() - began
        self.applied += read
        return read

    def lock(self, curs: Any) -> None:
        """Take this projector's read models' locks for the rest of the transaction of `curs`."""
        for i in self._order:
            curs.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.names[i]),))

    def advance(self, curs: Any, target: int) -> None:
        """Within the caller's transaction, which holds `lock`: apply pages until every read model
        has reached `target` (used to bring two copies to one position before a swap)."""
        at = positions(curs, self.names)
        while (start := min(at.values())) < target:
            page = self._read_page(start, stop=target)
            if not page:
                break
            self._apply_page(curs, page, at, start)
            at = positions(curs, self.names)

    def _next_page(self, start: int) -> list[tuple[Notification, Any]]:
        """The page after `start`. While it is applied, the page after it is read and decoded on
        another thread (PostgreSQL works on one while Python works on the other)."""
        ahead, self._ahead = self._ahead, None
        page = ahead[1].result() if ahead is not None and ahead[0] == start else self._read_page(start)
        if len(page) == self.page_size:
            self._ahead = (page[-1][0].id, self._reader.submit(self._read_page, page[-1][0].id))
        return page

    def _read_page(self, start: int, stop: int | None = None) -> list[tuple[Notification, Any]]:
        notifications = self._pages.read(start, self.page_size, stop)
        began = time.perf_counter()
        page = [(n, self._decode(n)) for n in notifications]
        self.decode_seconds += time.perf_counter() - began
        return page

    def _apply_page(self, curs: Any, page: list[tuple[Notification, Any]], at: dict[str, int], start: int) -> None:
        """Each read model applies the page (read after `start`) past its position, and records
        its new position."""
        last = page[-1][0].id
        for model, name in zip(self.models, self.names, strict=True):
            position = at[name]
            if position < start:
                continue  # moved back (a swapped-in copy): its next page starts earlier
            pending = [(n, e) for n, e in page if n.id > position]
            if not pending:
                continue
            began = time.perf_counter()
            if admitted := [(n, e) for n, e in pending if isinstance(e, Undecodable) or self._admits(e)]:
                self._apply(curs, model, name, admitted)
            self.store._insert_tracking(curs, Tracking(name, last))  # noqa: SLF001
            stats = self.stats[name]
            stats.events += len(pending)
            stats.seconds += time.perf_counter() - began

    def _admits(self, event: Any) -> bool:
        return self.admits is None or self.admits(event)

    def _admitted(self, events: list[Any]) -> list[Any]:
        return events if self.admits is None else [e for e in events if self.admits(e)]

    def _decode(self, notification: Notification) -> Any:
        try:
            return self._pages.decode(notification)
        except Exception as error:  # noqa: BLE001 - parked with the reason, by every read model
            return Undecodable(describe(error))

    def _apply(self, curs: Any, model: ReadModel, name: str, pending: list[tuple[Notification, Any]]) -> None:
        """The page in one savepoint; if it fails, event by event, parking those that fail."""
        if not any(isinstance(e, Undecodable) for _, e in pending):
            try:
                with curs.connection.transaction():
                    self._apply_events(model, curs, [e for _, e in pending])
                return
            except UNAVAILABLE:
                raise
            except Exception:  # noqa: BLE001 - find the event(s) at fault below
                pass
        for notification, event in pending:
            if isinstance(event, Undecodable):
                self.store.park(curs, name, notification, f"cannot decode the stored event: {event.error}")
                self.stats[name].parked += 1
                continue
            try:
                with curs.connection.transaction():
                    self._apply_events(model, curs, [event])
            except UNAVAILABLE:
                raise
            except Exception as error:  # noqa: BLE001 - parked, with the error, for `projections retry`
                log.error("%s: parked notification %d (%s)", name, notification.id, describe(error))
                self.store.park(curs, name, notification, error)
                self.stats[name].parked += 1

    def _batch(self, model: ReadModel, curs: Any) -> Batch:
        """The model's batch, following who is who (`projections.identity`)."""
        return IdentityBatch(model, curs, self._pages.read_streams, self._pages.position_of)

    def _apply_events(self, model: ReadModel, curs: Any, events: list[Any]) -> None:
        batch = self._batch(model, curs)
        batch.add(events)
        batch.finish()

    # -- following the log ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Follow the log until `stop` is set; ride through database outages for a while."""
        last_log, applied_at_log = time.monotonic(), 0
        log.info("%s: starting at %s", ", ".join(self.names), self.positions())
        failures = 0
        while not stop.is_set():
            try:
                applied = self.run_once()
            except IntegrityError as error:
                # Another projector applied the page first (a position moved on): nothing of ours
                # was written; carry on from the new positions.
                log.warning("page already applied elsewhere (%s); continuing", error)
                applied = 0
            except UNAVAILABLE as error:
                failures += 1
                if failures > MAX_FAILURES_IN_A_ROW:  # about 5 minutes: let a supervisor decide
                    raise
                delay = min(0.5 * 2**failures, 30.0)
                log.error("database unavailable (%s); retrying in %.1f s", str(error).strip(), delay)
                stop.wait(delay)
                continue
            failures = 0
            if applied == 0:
                stop.wait(self.idle_wait_seconds)
            now = time.monotonic()
            if now - last_log >= self.log_every_seconds and self.applied != applied_at_log:
                rate = (self.applied - applied_at_log) / (now - last_log)
                log.info("applied %d events (%.0f events/s); positions %s, head %s", self.applied - applied_at_log,
                         rate, self.positions(), self.source.max_notification_id())
                last_log, applied_at_log = now, self.applied
        log.info("stopping at %s", self.positions())

    def catch_up(self, progress: Any = None) -> int:
        """Apply pages until every read model reaches the log's head at the time of the call."""
        head = self.source.max_notification_id() or 0
        total = 0
        while min(self.positions().values(), default=head) < head:
            read = self.run_once()
            if read == 0:
                break
            total += read
            if progress is not None:
                progress(min(self.positions().values()), head)
        return total

    # -- parked events --------------------------------------------------------------------
    def retry_parked(self) -> tuple[int, int]:
        """Apply each parked event of these read models again; (applied, still parked)."""
        by_name = dict(zip(self.names, self.models, strict=True))
        applied = still = 0
        with self.store.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT * FROM {PARKED_TABLE} WHERE read_model = ANY(%s) ORDER BY read_model, notification_id",  # noqa: S608 - names from constants
                         (self.names,))
            rows = curs.fetchall()
        for row in rows:
            name = row["read_model"]
            stored = StoredEvent(row["originator_id"], row["originator_version"], row["topic"], bytes(row["state"]))
            notification = Notification(id=row["notification_id"], **stored.__dict__)
            with self.store.datastore.transaction(commit=True) as curs:
                curs.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))
                try:
                    event = self.mapper.to_domain_event(stored)
                    with curs.connection.transaction():
                        by_name[name].apply(curs, [event])
                except UNAVAILABLE:
                    raise
                except Exception as error:  # noqa: BLE001 - stays parked, with the new error
                    self.store.park(curs, name, notification, error)
                    still += 1
                    continue
                curs.execute(f"DELETE FROM {PARKED_TABLE} WHERE read_model = %s AND notification_id = %s",  # noqa: S608 - names from constants
                             (name, row["notification_id"]))
                applied += 1
        return applied, still


def tracking_name(model: ReadModel) -> str:
    """The live copy of a read model tracks its position under its name; a copy being rebuilt
    in a side schema under `<name>@<schema>`."""
    return model.name if model.schema == LIVE_SCHEMA else f"{model.name}@{model.schema}"
