"""The event store: eventsourcing's PostgreSQL recorder, with Rapport's rows in its transaction.

One `insert_events` call writes, in ONE transaction: the new domain events, the consumed
offset of every Kafka partition in the batch (eventsourcing tracking records, one per
partition), the `event_id` index used to recognise duplicates, the dead letters and the
ingest counters of each partition. A crash at any instant leaves either all of it or none of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, InterfaceError, Mapper, OperationalError, StoredEvent, Tracking
from eventsourcing.postgres import PostgresFactory, PostgresProcessRecorder
from psycopg.sql import SQL, Identifier

from eventstore import chain, checkpoints, identity, sealing, tables


@dataclass(frozen=True)
class EventIdRow:
    """One entry of the `event_id` index: which content an `event_id` was first recorded with."""

    event_id: str
    fingerprint: str
    originator_id: UUID
    topic: str
    partition: int
    offset: int


# The database is away (restarting, unreachable, the connection was cut, a lock or statement
# timed out): the transaction was not stored (unless the connection was cut as it committed: the
# stored offsets tell, see consumers/ingest.py), and the same work may succeed later.
# eventsourcing wraps psycopg's errors in its own classes; a few paths raise psycopg's directly
# (psycopg_pool's PoolTimeout is a psycopg OperationalError).
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError,
)

INGEST_COUNTER_NAMES = ("stored", "duplicates", "dead_lettered", "batches")


@dataclass(frozen=True)
class PartitionCounts:
    """What one batch did with the messages of one Kafka partition: added to its counters row."""

    topic: str
    partition: int
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 1


@dataclass(frozen=True)
class DeadLetterRow:
    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None
    value: bytes


def kafka_position_name(topic: str, partition: int) -> str:
    """Tracking name of one Kafka partition: its notification_id is the last offset consumed."""
    return f"kafka:{topic}:{partition}"


class InteractionRecorder(PostgresProcessRecorder):
    """Adds Kafka positions, the `event_id` index, dead letters, ingest counters and identity
    (`eventstore.identity`) to the events' transaction."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        self.event_ids_table = SQL("{}.{}").format(schema, Identifier(tables.EVENT_IDS))
        self.dead_letters_table = SQL("{}.{}").format(schema, Identifier(tables.DEAD_LETTERS))
        self.ingest_counters_table = SQL("{}.{}").format(schema, Identifier(tables.INGEST_COUNTERS))
        self._insert_columns_statement = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state, hash) "
            "SELECT * FROM unnest(%b::uuid[], %b::int8[], %b::text[], %b::bytea[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(schema, Identifier(self.events_table_name))
        self.events_table = SQL("{}.{}").format(schema, Identifier(self.events_table_name))
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "event_id text PRIMARY KEY, fingerprint text NOT NULL, originator_id uuid NOT NULL, "
                "source_topic text NOT NULL, source_partition int NOT NULL, source_offset bigint NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT now())"
            ).format(self.event_ids_table),
            # Each customer's indexed events: audits compare them with the stored stream, so that
            # events deleted from a stream's end (where no gap shows) are found.
            SQL("CREATE INDEX IF NOT EXISTS {} ON {} (originator_id)").format(
                Identifier(f"{tables.EVENT_IDS}_originator_id"), self.event_ids_table),
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "source_topic text NOT NULL, source_partition int NOT NULL, source_offset bigint NOT NULL, "
                "reason text NOT NULL, message_key bytea, message_value bytea NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (source_topic, source_partition, source_offset))"
            ).format(self.dead_letters_table),
            # One row per Kafka partition, updated in the batch's transaction: exact across crashes
            # and retries (a batch that is not stored counts nothing).
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "topic text NOT NULL, partition int NOT NULL, stored bigint NOT NULL DEFAULT 0, "
                "duplicates bigint NOT NULL DEFAULT 0, dead_lettered bigint NOT NULL DEFAULT 0, "
                "batches bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (topic, partition))"
            ).format(self.ingest_counters_table),
            # Caches of the point-in-time views (eventstore/checkpoints.py), beside the events.
            *checkpoints.create_statements(self.datastore.schema),
            # Who is who (eventstore/identity.py), written with the events that say it.
            *identity.create_statements(self.datastore.schema),
            # The keys personal data are sealed with (eventstore/sealing.py).
            *sealing.create_statements(self.datastore.schema),
        ]
        self.identity = identity.IdentityTables(self.datastore.schema)

    def _insert_events(
        self,
        curs: Any,
        stored_events: Sequence[StoredEvent],
        *,
        positions: Sequence[Tracking] = (),
        event_ids: Sequence[EventIdRow] = (),
        dead_letters: Sequence[DeadLetterRow] = (),
        counters: Sequence[PartitionCounts] = (),
        identity_writes: identity.IdentityWrites | None = None,
        sealed_with: dict[UUID, str] | None = None,
        before: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if before is not None:
            before(curs)  # the caller's own statements, first in the transaction (an erasure's: services.privacy)
        if sealed_with:
            stale = sealing.stale_keys(curs, self.datastore.schema, sealed_with)
            if stale:
                raise IntegrityError(f"the personal-data key of {len(stale)} stream(s) was destroyed (a customer "
                                     "forgotten) while the batch was sealed; sealing again")
        if identity_writes:
            # First: it raises IdentityConflict if a customer it was decided from changed meanwhile.
            self.identity.write(curs, identity_writes)
        # Each tracking upsert raises IntegrityError unless its offset moves forward, so a
        # consumer that lost its partitions to another one cannot write the same batch twice.
        for position in positions:
            self._insert_tracking(curs, position)
        if event_ids:
            # One statement for the whole batch: the unique index turns a race into IntegrityError.
            curs.execute(
                SQL(
                    "INSERT INTO {} (event_id, fingerprint, originator_id, source_topic, "
                    "source_partition, source_offset) SELECT * FROM unnest("
                    "%b::text[], %b::text[], %b::uuid[], %b::text[], %b::int4[], %b::int8[])"
                ).format(self.event_ids_table),
                (
                    [r.event_id for r in event_ids], [r.fingerprint for r in event_ids],
                    [r.originator_id for r in event_ids], [r.topic for r in event_ids],
                    [r.partition for r in event_ids], [r.offset for r in event_ids],
                ),
            )
        if dead_letters:
            curs.executemany(
                SQL(
                    "INSERT INTO {} (source_topic, source_partition, source_offset, reason, "
                    "message_key, message_value) VALUES (%s, %s, %s, %s, %s, %s) "
                    # Re-reading a range (after recovering from deleted offsets) meets the same
                    # dead letters again: keep the first record of each.
                    "ON CONFLICT DO NOTHING"
                ).format(self.dead_letters_table),
                [(d.topic, d.partition, d.offset, d.reason, d.key, d.value) for d in dead_letters],
            )
        if counters:
            # Sorted, so that two transactions never take the same rows' locks in opposite orders.
            ordered = sorted(counters, key=lambda c: (c.topic, c.partition))
            curs.execute(
                SQL(
                    "INSERT INTO {} AS c (topic, partition, stored, duplicates, dead_lettered, batches) "
                    "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[], %s::bigint[], "
                    "%s::bigint[]) ON CONFLICT (topic, partition) DO UPDATE SET "
                    "stored = c.stored + EXCLUDED.stored, duplicates = c.duplicates + EXCLUDED.duplicates, "
                    "dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered, "
                    "batches = c.batches + EXCLUDED.batches, updated_at = now()"
                ).format(self.ingest_counters_table),
                (
                    [c.topic for c in ordered], [c.partition for c in ordered], [c.stored for c in ordered],
                    [c.duplicates for c in ordered], [c.dead_lettered for c in ordered],
                    [c.batches for c in ordered],
                ),
            )
        super()._insert_events(curs, stored_events, **kwargs)

    def ingest_counters(self, topic: str | None = None) -> dict[str, int]:
        """Totals of ingest's counters over every partition (of `topic`, or of all topics):
        `stored` (new events), `duplicates` (ignored), `dead_lettered` (invalid or conflicting),
        `batches` (stored transactions, counted once per partition they carried messages of).
        stored + duplicates + dead_lettered is the number of messages consumed."""
        where = SQL("WHERE topic = %s") if topic is not None else SQL("")
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL(
                    "SELECT COALESCE(SUM(stored), 0) AS stored, COALESCE(SUM(duplicates), 0) AS duplicates, "
                    "COALESCE(SUM(dead_lettered), 0) AS dead_lettered, COALESCE(SUM(batches), 0) AS batches "
                    "FROM {} {}"
                ).format(self.ingest_counters_table, where),
                (topic,) if topic is not None else None,
            )
            row = curs.fetchone()
        assert row is not None
        return {name: int(row[name]) for name in INGEST_COUNTER_NAMES}

    def known_event_ids(self, event_ids: Iterable[str]) -> dict[str, EventIdRow]:
        """The index entries of those `event_id`s already recorded."""
        ids = list(set(event_ids))
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL(
                    "SELECT event_id, fingerprint, originator_id, source_topic, source_partition, "
                    "source_offset FROM {} WHERE event_id = ANY(%s)"
                ).format(self.event_ids_table),
                (ids,),
            )
            return {
                row["event_id"]: EventIdRow(
                    row["event_id"], row["fingerprint"], row["originator_id"], row["source_topic"],
                    row["source_partition"], row["source_offset"],
                )
                for row in curs.fetchall()
            }

    def kafka_positions(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Last consumed offset of each partition that has one."""
        names = {kafka_position_name(topic, p): p for p in partitions}
        if not names:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL("SELECT application_name, notification_id FROM {}.{} WHERE application_name = ANY(%s)").format(
                    Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                ),
                (list(names),),
            )
            return {names[row["application_name"]]: row["notification_id"] for row in curs.fetchall()}

    def chain_heads(self, originator_ids: Sequence[UUID], curs: Any = None) -> dict[UUID, tuple[int, bytes]]:
        """The last version of each stream that exists and its hash, in one round trip: one backward
        step down the (stream, version) key per stream, however long the stream."""
        if not originator_ids:
            return {}
        statement = SQL(
            "SELECT s.id, e.originator_version AS version, e.hash FROM unnest(%s::uuid[]) AS s(id) "
            "CROSS JOIN LATERAL (SELECT originator_version, hash FROM {} WHERE originator_id = s.id "
            "ORDER BY originator_version DESC LIMIT 1) e"
        ).format(self.events_table)
        if curs is not None:
            curs.execute(statement, (list(originator_ids),))
            rows = curs.fetchall()
        else:
            with self.datastore.get_connection() as conn, conn.cursor() as c:
                c.execute(statement, (list(originator_ids),))
                rows = c.fetchall()
        return {row["id"]: (row["version"], row["hash"]) for row in rows}

    def _insert_stored_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], *, chain_hashes: Sequence[bytes] | None = None,
        **kwargs: Any,
    ) -> None:
        # The library's version sends one array of a composite type, which psycopg dumps as text
        # (hex bytea) after the table lock is taken: ~16 µs per event with every other writer
        # waiting. Binary arrays carry the same rows in ~1 µs per event, dumped here before the
        # lock. The lock and the notification are the library's, unchanged.
        columns = [
            [e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
            [e.topic for e in stored_events], [e.state for e in stored_events],
        ]
        self._lock_table(curs)
        self._notify_channel(curs)
        if chain_hashes is None:
            # A caller that did not link the events (the library's own `save`): link them to the
            # heads read under the lock, which no other writer can move meanwhile.
            heads = self.chain_heads(list({e.originator_id for e in stored_events}), curs)
            chain_hashes = link_all(stored_events, {k: h for k, (_, h) in heads.items()})
        columns.append(list(chain_hashes))
        curs.execute(self._insert_columns_statement, columns)

    def create_table(self) -> None:
        super().create_table()
        self._add_hash_column()

    def _add_hash_column(self) -> None:
        """Event stores made before the hash chain get its column, and their events are linked once,
        stream by stream in stored order (an upgrade; a new store has no rows to link)."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s AND column_name = %s", (self.events_table_name, chain.HASH_COLUMN),
            )
            if curs.fetchone() is not None:
                return
            # Writers wait until the column exists and every stored event is linked.
            curs.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(self.events_table))
            curs.execute(SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS hash bytea").format(self.events_table))
            heads: dict[UUID, bytes] = {}
            update = SQL("UPDATE {} e SET hash = u.hash FROM unnest(%b::uuid[], %b::int8[], %b::bytea[]) "
                         "AS u(id, version, hash) WHERE e.originator_id = u.id AND e.originator_version = u.version"
                         ).format(self.events_table)
            with curs.connection.cursor(name="rapport_link_stored_events") as rows:
                rows.execute(SQL("SELECT originator_id, originator_version, topic, state FROM {} "
                                 "ORDER BY originator_id, originator_version").format(self.events_table))
                while chunk := rows.fetchmany(10_000):
                    stored = [StoredEvent(r["originator_id"], r["originator_version"], r["topic"], r["state"])
                              for r in chunk]
                    hashes = link_all(stored, heads)  # `heads` carries each stream across chunks
                    curs.execute(update, ([e.originator_id for e in stored], [e.originator_version for e in stored],
                                          hashes))


def link_all(stored_events: Sequence[StoredEvent], heads: dict[UUID, bytes]) -> list[bytes]:
    """The chain hash of each event, in order, each stream going on from its head in `heads`
    (absent: a new stream); `heads` is advanced to each stream's new head."""
    hashes = []
    for e in stored_events:
        head = chain.link(heads.get(e.originator_id, chain.GENESIS), e.originator_id, e.originator_version,
                          e.topic, e.state)
        heads[e.originator_id] = head
        hashes.append(head)
    return hashes


class InteractionLog(Application[UUID]):
    """The system of record: every customer's interactions, kept forever in PostgreSQL."""

    name = tables.APPLICATION_NAME

    def __init__(self, env: Mapping[str, str] | None = None, versions_kept: int = 200_000) -> None:
        super().__init__(env=env)
        # customer id → (version, hash) of its stream's last event, least recently recorded first;
        # kept current by our own saves. A stale entry (the partition moved to another member
        # meanwhile) fails the store's unique (stream, version) key, and the batch is retried after
        # `forget_stream_versions`.
        self._heads: dict[UUID, tuple[int, bytes]] = {}
        self._versions_kept = max(versions_kept, 0)  # 0: read every head from the store

    def construct_mapper(self) -> Mapper[UUID]:
        """The library's mapper, sealing interactions' personal fields under their streams' keys."""
        self.stream_keys = sealing.StreamKeys(self.factory.datastore)  # type: ignore[attr-defined]
        return sealing.SealingMapper(self.construct_transcoder(), self.stream_keys)

    def construct_recorder(self) -> InteractionRecorder:  # type: ignore[override]
        factory = self.factory
        if not isinstance(factory, PostgresFactory):
            # eventsourcing falls back to an in-memory store: everything would vanish at exit.
            raise RuntimeError(
                "the event store must be PostgreSQL; set PERSISTENCE_MODULE=eventsourcing.postgres "
                "(services.bootstrap does this from RAPPORT_DATABASE_URL)"
            )
        recorder = InteractionRecorder(
            factory.datastore,
            events_table_name=tables.EVENTS,
            tracking_table_name=tables.KAFKA_POSITIONS,
        )
        if factory.env_create_table():
            recorder.create_table()
        return recorder

    @property
    def interactions(self) -> InteractionRecorder:
        assert isinstance(self.recorder, InteractionRecorder)
        return self.recorder

    def stream_versions(self, customer_ids: Iterable[UUID]) -> dict[UUID, int]:
        """The current version of each customer's stream (absent: no stream yet), from memory, and
        every miss from the event store in one round trip (remembered until the next failed save)."""
        heads = self._heads
        misses = [customer_id for customer_id in customer_ids if customer_id not in heads]
        if misses:
            heads.update(self.interactions.chain_heads(misses))
        return {customer_id: heads[customer_id][0] for customer_id in customer_ids if customer_id in heads}

    def record(self, events: Sequence[DomainEventProtocol[UUID]], **rows: Any) -> None:
        """Store new facts and Rapport's rows of the batch in one transaction (eventsourcing's
        event store and recorder), each linked to its stream's hash chain, then remember each
        stream's new head. Interactions' personal fields are sealed under their streams' keys, checked
        in the transaction to be the keys in force (an erasure may destroy one meanwhile)."""
        mapper = self.mapper
        assert isinstance(mapper, sealing.SealingMapper)
        mapper.sealing = self.stream_keys.for_sealing(
            {e.originator_id for e in events if sealing.is_interaction_event(e)})
        stored = [mapper.to_stored_event(event) for event in events]
        heads = self._heads
        misses = list({e.originator_id for e in stored if e.originator_id not in heads})
        if misses:
            heads.update(self.interactions.chain_heads(misses))
        last_hashes = {customer_id: heads[customer_id][1] for customer_id in {e.originator_id for e in stored}
                       if customer_id in heads}
        hashes = link_all(stored, last_hashes)
        sealed_with = {stream: key.key_id for stream, key in mapper.sealing.items()}
        self.recorder.insert_events(stored, chain_hashes=hashes, sealed_with=sealed_with, **rows)
        for event, hash_ in zip(stored, hashes, strict=True):  # in stream order: the last one is the head
            heads.pop(event.originator_id, None)  # re-inserted: the dict stays in order of use
            heads[event.originator_id] = (event.originator_version, hash_)
        excess = len(heads) - self._versions_kept
        if excess > 0:
            for customer_id in list(itertools.islice(heads, excess + self._versions_kept // 10)):
                del heads[customer_id]

    def forget_stream_versions(self) -> None:
        """After a failed save the remembered heads may be ahead of the store (or, after a
        rebalance, behind it): read them again, and the streams' keys too (one may have been destroyed)."""
        self._heads.clear()
        self.stream_keys.forget()


def store_env(database: Mapping[str, str]) -> dict[str, str]:
    """The eventsourcing environment for Rapport's event store, built from Rapport's settings."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": database["dbname"],
        "POSTGRES_HOST": database["host"],
        "POSTGRES_PORT": database["port"],
        "POSTGRES_USER": database["user"],
        "POSTGRES_PASSWORD": database["password"],
        "POSTGRES_CONNECT_TIMEOUT": "10",
        # Check a pooled connection before handing it out: after a PostgreSQL restart the pool
        # still holds connections the server closed; without this the next batch meets one.
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_LOCK_TIMEOUT": "30",
        # A big batch takes a while to build between statements: don't let the server kill it.
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60",
        # Fixed here so that the process environment cannot change them: with database functions
        # the library's insert skips `_insert_events` (positions, event_id index, dead letters).
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "POSTGRES_SCHEMA": "",
        # The library's JSON transcoder, decoding with orjson (eventstore/transcoder.py): the same
        # events, decoded in about half the time by ingest, the projector and audits alike.
        "TRANSCODER_TOPIC": "eventstore.transcoder:FastJSONTranscoder",
        "SINGLE_ROW_TRACKING": "y",
    }
