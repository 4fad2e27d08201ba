"""Checkpoints of the point-in-time fold (contract §5), kept beside the events they were made from.

Two tables of the event store's database, made with its tables (`InteractionRecorder`):
- `rapport_stream_times`: each stream's interactions as (version, occurred_at, recorded time), in
  microseconds, one row per block of consecutive versions. PostgreSQL cannot find the events a
  point in time admits by itself (both times are inside the stored JSON, which costs about 9 µs a
  row to parse: 0.9 s for a stream of 100,000), and decoding them all in Python costs more; with
  these rows a reader finds them without reading or decoding the others. Stored events never
  change, so a complete block never does: it is written once, by the first reader that decoded it.
- `rapport_fold_checkpoints`: folds of one stream's events, each of those of versions 1..`version`
  that occurred by `occurred_through`. What a fold holds is the projections' business
  (`projections.checkpoints`): here it is bytes.

Both are caches. Each row keeps the stream's chain hash at its last version: a reader ignores
(and removes) a row whose version no longer holds that hash (the stream was cut or rewritten
since), and dropping the tables loses nothing but time.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier

from eventstore import chain, tables

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def microseconds(moment: datetime) -> int:
    """A time as the time index holds it: microseconds since 1970 UTC (exact: stored times have
    microsecond resolution, and ints compare as the times do)."""
    return (moment - _EPOCH) // _MICROSECOND


def pack(values: Sequence[int]) -> bytes:
    """64-bit integers as little-endian bytes."""
    packed = array("q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack(data: bytes) -> list[int]:
    values = array("q")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def create_statements(schema: str) -> list[Composed]:
    """The two tables, for the event store's `sql_create_statements`."""
    times, folds = (SQL("{}.{}").format(Identifier(schema), Identifier(name))
                    for name in (tables.STREAM_TIMES, tables.FOLD_CHECKPOINTS))
    return [
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            "originator_id uuid NOT NULL, layout text NOT NULL, first_version bigint NOT NULL, "
            "last_version bigint NOT NULL, entries bytea NOT NULL, chain_hash bytea, "
            "PRIMARY KEY (originator_id, layout, first_version))").format(times),
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            "originator_id uuid NOT NULL, fold text NOT NULL, version bigint NOT NULL, "
            "occurred_through timestamptz NOT NULL, events int NOT NULL, recorded_through timestamptz NOT NULL, "
            "parent_version bigint, parent_occurred_through timestamptz, state bytea NOT NULL, "
            "history bytea NOT NULL, chain_hash bytea, created_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (originator_id, fold, version, occurred_through))").format(folds),
    ]


@dataclass(frozen=True)
class TimeBlock:
    """The interactions of versions `first_version`..`last_version` of one stream: `entries` is
    (version, occurred µs, recorded µs) of each, in version order, packed by `pack`."""

    first_version: int
    last_version: int
    entries: bytes
    chain_hash: bytes | None


@dataclass(frozen=True)
class FoldCheckpoint:
    """A fold of the stream's interactions of versions 1..`version` that occurred by
    `occurred_through` (all of them: a checkpoint never splits a moment). `events` is how many,
    `recorded_through` the latest recorded time among them. `parent` is the checkpoint it was
    continued from, whose `history` comes before its own. `state` and `history` are read only
    for the checkpoint a reader uses."""

    version: int
    occurred_through: datetime
    events: int
    recorded_through: datetime
    parent: tuple[int, datetime] | None
    chain_hash: bytes | None
    state: bytes = b""
    history: bytes = b""

    @property
    def key(self) -> tuple[int, datetime]:
        return (self.version, self.occurred_through)


def _checkpoint(version: int, through: datetime, events: int, recorded: datetime, parent_version: int | None,
                parent_through: datetime | None, chain_hash: bytes | None) -> FoldCheckpoint:
    return FoldCheckpoint(version, through, events, recorded,
                          (parent_version, parent_through) if parent_version is not None and parent_through is not None else None,
                          bytes(chain_hash) if chain_hash is not None else None)


@dataclass(frozen=True)
class StoredStream:
    """What a reader finds of one stream: its time blocks in version order, its checkpoints and
    its stored events after the last block (each with its chain hash)."""

    blocks: list[TimeBlock]
    checkpoints: list[FoldCheckpoint]
    events: list[tuple[Notification, bytes | None]]


class CheckpointTables:
    """Reads and writes the checkpoint tables and the stream rows they are made from, on the
    event store's connections (one connection per call of `connection`)."""

    def __init__(self, recorder: Any) -> None:
        self.datastore = recorder.datastore
        schema = Identifier(self.datastore.schema)
        events, times, folds = (SQL("{}.{}").format(schema, Identifier(name)) for name in
                                (recorder.events_table_name, tables.STREAM_TIMES, tables.FOLD_CHECKPOINTS))
        columns = SQL("notification_id, originator_id, originator_version, topic, state, {}").format(
            Identifier(chain.HASH_COLUMN))
        self._events_after = SQL("SELECT {} FROM {} WHERE originator_id = %s AND originator_version > %s "
                                 "ORDER BY originator_version").format(columns, events)
        # The events after the stream's last stored block: read with the blocks, in one round trip.
        self._events_after_blocks = SQL(
            "SELECT {} FROM {} WHERE originator_id = %(id)s AND originator_version > COALESCE("
            "(SELECT max(last_version) FROM {} WHERE originator_id = %(id)s AND layout = %(layout)s), 0) "
            "ORDER BY originator_version").format(columns, events, times)
        self._events_at = SQL("SELECT {} FROM {} WHERE originator_id = %s AND originator_version = ANY(%s) "
                              "ORDER BY originator_version").format(columns, events)
        self._hashes = SQL("SELECT originator_version, {} FROM {} WHERE originator_id = %s "
                           "AND originator_version = ANY(%s)").format(Identifier(chain.HASH_COLUMN), events)
        self._blocks = SQL("SELECT first_version, last_version, entries, chain_hash FROM {} "
                           "WHERE originator_id = %s AND layout = %s ORDER BY first_version").format(times)
        self._save_block = SQL("INSERT INTO {} (originator_id, layout, first_version, last_version, entries, "
                               "chain_hash) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(times)
        self._forget_blocks = SQL("DELETE FROM {} WHERE originator_id = %s AND layout = %s "
                                  "AND first_version >= %s").format(times)
        self._checkpoints = SQL("SELECT version, occurred_through, events, recorded_through, parent_version, "
                                "parent_occurred_through, chain_hash FROM {} WHERE originator_id = %s AND fold = %s"
                                ).format(folds)
        self._state = SQL("SELECT state FROM {} WHERE originator_id = %s AND fold = %s AND version = %s "
                          "AND occurred_through = %s").format(folds)
        # The histories of a checkpoint's ancestors and its own, oldest first.
        self._histories = SQL(
            "WITH RECURSIVE up AS (SELECT parent_version, parent_occurred_through, history, 0 AS depth FROM {0} "
            "WHERE originator_id = %(id)s AND fold = %(fold)s AND version = %(version)s "
            "AND occurred_through = %(through)s "
            "UNION ALL SELECT c.parent_version, c.parent_occurred_through, c.history, up.depth + 1 FROM {0} c "
            "JOIN up ON c.originator_id = %(id)s AND c.fold = %(fold)s AND c.version = up.parent_version "
            "AND c.occurred_through = up.parent_occurred_through) "
            "SELECT history FROM up ORDER BY depth DESC").format(folds)
        self._save_checkpoint = SQL(
            "INSERT INTO {} (originator_id, fold, version, occurred_through, events, recorded_through, "
            "parent_version, parent_occurred_through, state, history, chain_hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(folds)
        self._forget_checkpoints = SQL("DELETE FROM {} c USING unnest(%s::int8[], %s::timestamptz[]) AS k(version, through) "
                                       "WHERE c.originator_id = %s AND c.fold = %s AND c.version = k.version "
                                       "AND c.occurred_through = k.through").format(folds)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self.datastore.get_connection() as conn:
            yield conn

    def stream(self, conn: Any, stream: UUID, layout: str, fold: str) -> StoredStream:
        """The stream's time blocks, its checkpoints of `fold` and its events after the last block,
        in one round trip (three statements in a pipeline)."""
        with conn.pipeline() as pipeline, conn.cursor(binary=True, row_factory=tuple_row) as blocks, \
                conn.cursor(row_factory=tuple_row) as checkpoints, \
                conn.cursor(binary=True, row_factory=tuple_row) as events:
            blocks.execute(self._blocks, (stream, layout), prepare=True)
            checkpoints.execute(self._checkpoints, (stream, fold), prepare=True)
            events.execute(self._events_after_blocks, {"id": stream, "layout": layout}, prepare=True)
            pipeline.sync()
            return StoredStream([TimeBlock(*row) for row in blocks.fetchall()],
                                [_checkpoint(*row) for row in checkpoints.fetchall()],
                                [(Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s), h)
                                 for i, o, v, t, s, h in events.fetchall()])

    # -- the stream's own rows --------------------------------------------------------------------
    def events_after(self, conn: Any, stream: UUID, version: int) -> list[tuple[Notification, bytes | None]]:
        """The stream's stored events after `version`, in version order, each with its chain hash."""
        return self._notifications(conn, self._events_after, (stream, version))

    def events_at(self, conn: Any, stream: UUID, versions: Sequence[int]) -> list[Notification]:
        """The stream's stored events of these versions, in version order."""
        return [n for n, _ in self._notifications(conn, self._events_at, (stream, list(versions)))]

    @staticmethod
    def _notifications(conn: Any, statement: Composed, params: tuple[Any, ...]) -> list[tuple[Notification, bytes | None]]:
        # Binary: bytea and uuid arrive as stored, no text to parse (as the projector's pages).
        with conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [(Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s), h)
                    for i, o, v, t, s, h in curs.fetchall()]

    def chain_hashes(self, conn: Any, stream: UUID, versions: Iterable[int]) -> dict[int, bytes | None]:
        """The chain hash stored at each of these versions that exists."""
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._hashes, (stream, sorted(set(versions))))
            return {version: (bytes(hash_) if hash_ is not None else None) for version, hash_ in curs.fetchall()}

    # -- the time index ---------------------------------------------------------------------------
    def save_time_blocks(self, conn: Any, stream: UUID, layout: str, blocks: Sequence[TimeBlock]) -> None:
        # Two readers may index the same block at once: both wrote the same bytes.
        with conn.transaction(), conn.cursor() as curs:
            curs.executemany(self._save_block, [(stream, layout, b.first_version, b.last_version, b.entries,
                                                 b.chain_hash) for b in blocks])

    def forget_time_blocks(self, conn: Any, stream: UUID, layout: str, from_version: int) -> None:
        conn.execute(self._forget_blocks, (stream, layout, from_version))

    # -- folds ------------------------------------------------------------------------------------
    def checkpoints(self, conn: Any, stream: UUID, fold: str) -> list[FoldCheckpoint]:
        """The stream's checkpoints of this fold, without their state and history."""
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._checkpoints, (stream, fold), prepare=True)
            return [_checkpoint(*row) for row in curs.fetchall()]

    def state(self, conn: Any, stream: UUID, fold: str, checkpoint: FoldCheckpoint) -> bytes:
        with conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(self._state, (stream, fold, *checkpoint.key))
            row = curs.fetchone()
        assert row is not None, "a checkpoint read moments ago"
        return bytes(row[0])

    def histories(self, conn: Any, stream: UUID, fold: str, checkpoint: FoldCheckpoint) -> list[bytes]:
        """The `history` of the checkpoint's ancestors, oldest first, then its own."""
        with conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(self._histories, {"id": stream, "fold": fold, "version": checkpoint.version,
                                           "through": checkpoint.occurred_through})
            return [bytes(history) for (history,) in curs.fetchall()]

    def save_checkpoints(self, conn: Any, stream: UUID, fold: str, checkpoints: Sequence[FoldCheckpoint]) -> None:
        # Two readers may take the same checkpoint at once: a fold of the same events is the same.
        with conn.transaction(), conn.cursor() as curs:
            curs.executemany(self._save_checkpoint, [
                (stream, fold, c.version, c.occurred_through, c.events, c.recorded_through,
                 *(c.parent or (None, None)), c.state, c.history, c.chain_hash) for c in checkpoints])

    def forget_checkpoints(self, conn: Any, stream: UUID, fold: str, keys: Sequence[tuple[int, datetime]]) -> None:
        conn.execute(self._forget_checkpoints, ([v for v, _ in keys], [t for _, t in keys], stream, fold))
