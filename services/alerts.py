"""`rapport alerts`: raises the alerts the passing of time brings and relays every alert to Kafka.

**Time-driven raiser** (`raise_due`). The lifecycle read model stores each customer's stage
intervals into the future, a change by the passing of time starting at the instant its threshold
passes. Every `RAPPORT_ALERT_RAISE_INTERVAL_SECONDS` the raiser takes the lifecycle read model's
lock (the one the projector applies pages under), reads the database's clock and raises
(`projections.alerts`) an alert for each change by time into `at_risk` or `churned` that started
since its last look. Under the lock, a projector transaction has either committed (its intervals
are seen) or not started: it then raises itself, at its own later clock, every change that is due
by then. So no change falls between the two, and the ids (`domain.alerts`) keep a change found by
both once. Changes caused by events are the projector's alone: they are due at once.

**Relay: each alert in one committed Kafka transaction.** The relay is a transactional producer
whose `transactional_id` is fixed per database and topic (`rapport-alerts-<deployment>-<topic>`,
the deployment being a uuid kept in table `alerts_relay`). `init_transactions()` fences every
earlier producer of that id (a relay that lost its lock, a closed producer whose sender thread
still retries): none of them can commit afterwards, and a transaction one left open is aborted.
Each batch, in the order of `seq` among the rows committed, is one Kafka transaction (begin, send
all, commit), keyed by customer, with headers `rapport-alert-id`, `rapport-alert-seq` (the row's
number, for tracing) and `rapport-alert-source` (the deployment). Only after `commit_transaction`
returns are the alerts recorded as published (`alerts_published`, and the row's `published_at`)
together with each partition's next offset, in one PostgreSQL transaction. Any failure before that
drops the producer, whose open transaction the next `init_transactions` aborts: a failed batch's
rows are sent again only in a new transaction, after the read-back. A stop between Kafka's commit and PostgreSQL's leaves
committed messages whose alerts are not recorded, so after every start and every failure the relay
first reads each partition (read_committed, up to the last stable offset) from its recorded offset
and records the alerts of this deployment it finds there (chunk by chunk); only the rest is sent.
A partition whose end is below the recorded offset (the topic was recreated) is read from its start;
one whose last stable offset is held back by another producer's open transaction is read back once
that transaction ends (the topic should be this relay's alone).

**Consumers must read with `isolation_level=read_committed` to see each alert once**: the records
of an aborted transaction stay in the log, skipped only by read_committed readers. One relay
publishes at a time (a PostgreSQL advisory lock, so that two do not keep fencing each other); the
fencing, not the lock, is what keeps a second or a stray one from publishing an alert twice.

Outages: a failure of Kafka or PostgreSQL is logged and retried with a back-off (up to 30 s), for as
long as it lasts; nothing is lost (the outbox keeps what is not published yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError
from psycopg.rows import dict_row

from consumers.ingest import kafka_producer
from domain.alerts import Found, stage_alert
from domain.lifecycle import Stage, StageInterval
from projections import lifecycle
from projections.alerts import ALERTS, PUBLISHED, RAISER, RELAY, RELAY_POSITIONS, AlertOutbox, create_statements
from projections.runner import lock_key
from services.http.params import rfc3339
from services.settings import Settings

log = logging.getLogger("rapport.alerts")

ALERT_ID_HEADER = "rapport-alert-id"
ALERT_SEQ_HEADER = "rapport-alert-seq"
ALERT_SOURCE_HEADER = "rapport-alert-source"
RELAY_LOCK_KEY = lock_key("alerts-relay")
BATCH = 500
IDLE_WAIT_SECONDS = 0.2
LOG_EVERY_SECONDS = 10.0
# The producer's timeouts, in one place: a request is retried within the delivery timeout; a batch's
# transaction (sends, flush, commit) ends well within the transaction timeout, after which the
# coordinator would abort it.
REQUEST_TIMEOUT_MS = 15_000
DELIVERY_TIMEOUT_MS = 45_000
MAX_BLOCK_MS = 30_000  # init_transactions, metadata
TRANSACTION_TIMEOUT_MS = 120_000
FLUSH_SECONDS = DELIVERY_TIMEOUT_MS / 1000 + 5
COMMIT_SECONDS = 30.0
CLOSE_SECONDS = 5.0
# Reading back fails when no partition moves for this long (not when the whole takes long).
READ_BACK_STALL_SECONDS = 60.0
# Changes that started up to this long before the raiser's last look are looked at again (the ids
# keep them once): should the database's clock step back by up to this much between two looks, a
# change the projector left for later (not due by its clock) is not skipped. A bigger step back can.
RESCAN = timedelta(seconds=60)
UNAVAILABLE = (KafkaError, psycopg.OperationalError, psycopg.InterfaceError)


class RelayLockTaken(RuntimeError):
    """Another `rapport alerts` holds the relay's lock."""


def alert_json(row: dict[str, Any]) -> dict[str, Any]:
    """An alert as `GET /alerts` and `interactions.alerts` carry it (contract §6, with the customer's
    revenue per currency and latest interaction when it was raised)."""
    return {
        "alert_id": row["alert_id"], "customer_id": row["customer_id"], "kind": row["kind"], "reason": row["reason"],
        "occurred_at": rfc3339(row["occurred_at"]), "raised_at": rfc3339(row["raised_at"]),
        "event_id": row["event_id"], "revenue": dict(sorted(row["revenue"].items())),
        "last_contact_at": rfc3339(row["last_contact_at"]),
    }


def ensure_tables(conn: psycopg.Connection[Any]) -> None:
    for statement in create_statements():
        conn.execute(statement)  # type: ignore[arg-type]


def read_back_start(recorded: int | None, first: int, end: int) -> int:
    """Where to read a partition back from: its recorded next offset; its first offset when nothing is
    recorded, when retention removed messages from there, or when its end is below the recorded offset
    (the topic was recreated or truncated: the recorded offset means nothing any more)."""
    if recorded is None or end < recorded:
        return first
    return max(recorded, first)


# -- the time-driven raiser -------------------------------------------------------------------


def raise_due(conn: psycopg.Connection[Any], outbox: AlertOutbox) -> int:
    """Alerts of the stage changes by the passing of time that happened since the last look; how many
    were new. One transaction, under the lifecycle read model's lock."""
    intervals, facts = lifecycle.INTERVALS.name, lifecycle.FACTS.name
    with conn.transaction(), conn.cursor(row_factory=dict_row) as curs:
        curs.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(lifecycle.NAME),))
        curs.execute(f"SELECT clock_timestamp() AS now, (SELECT scanned_until FROM {RAISER.name}) AS scanned_until")  # noqa: S608 - names from constants
        row = curs.fetchone()
        now, scanned = row["now"], row["scanned_until"]
        start = now - outbox.max_age
        if scanned is not None:
            start = max(start, scanned - RESCAN)
        curs.execute(
            f"SELECT i.customer_id, i.stage, i.since, i.until, i.reason, i.event_id, i.previous_stage, "  # noqa: S608 - names from constants
            f"(SELECT max(f.occurred_at) FROM {facts} f WHERE f.customer_id = i.customer_id) AS last_contact_at "
            f"FROM {intervals} i WHERE i.starts_at > %s AND i.starts_at <= %s AND i.stage = ANY(%s) "
            "AND i.event_id IS NULL",
            (start, now, [Stage.AT_RISK.value, Stage.CHURNED.value]),
        )
        found = [a for r in curs.fetchall() if (a := _interval_alert(r)) is not None]
        raised = outbox.raise_alerts(curs, found)
        curs.execute(f"INSERT INTO {RAISER.name} (only_row, scanned_until) VALUES (true, %s) ON CONFLICT (only_row) "  # noqa: S608 - names from constants
                     "DO UPDATE SET scanned_until = GREATEST(excluded.scanned_until, alerts_raiser.scanned_until)", (now,))
    return raised


def _interval_alert(row: dict[str, Any]) -> Found | None:
    interval = StageInterval(Stage(row["stage"]), row["since"], row["until"], row["reason"], row["event_id"],
                             Stage(row["previous_stage"]) if row["previous_stage"] else None)
    return stage_alert(row["customer_id"], interval, row["last_contact_at"])


def _within(seconds: float, call: Callable[[], Any], what: str) -> Any:
    """`call()`, or KafkaTimeoutError when it has not returned in `seconds` (kafka-python's
    commit_transaction waits without a limit)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"rapport-alerts: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise KafkaTimeoutError(f"{what} took over {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# -- `rapport alerts` -------------------------------------------------------------------------


class RaiserAndRelay:
    """`rapport alerts`: raises alerts by the passing of time (`raise_due`) and relays the outbox
    to `settings.alert_topic`, each alert in one committed Kafka transaction."""

    def __init__(self, settings: Settings, batch: int = BATCH) -> None:
        from services.bootstrap import conninfo

        self.settings = settings
        self.topic = settings.alert_topic
        self.batch = batch
        self.outbox = AlertOutbox(lifecycle.FACTS, settings.alert_max_age)
        self._conninfo = conninfo(settings)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._producer: KafkaProducer | None = None
        self._deployment: str | None = None
        self._read_back = False
        self._tables_made = False
        self._raised_at = float("-inf")
        self.published = 0
        self.raised_by_time = 0
        self.recovered = 0

    @property
    def transactional_id(self) -> str:
        assert self._deployment is not None
        return f"rapport-alerts-{self._deployment}-{self.topic}"

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; rides through outages of Kafka and PostgreSQL."""
        log.info("relaying alerts to %s (raising changes by time every %.1f s; no alert for a change older than "
                 "%d days when learnt of)", self.topic, self.settings.alert_raise_interval_seconds,
                 self.settings.alert_max_age_days)
        failures, last_log, logged = 0, time.monotonic(), (0, 0)
        while not stop.is_set():
            try:
                done = self.run_once()
            except RelayLockTaken:
                self.close()
                log.warning("another `rapport alerts` is relaying to this database; waiting for its lock")
                stop.wait(5.0)
                continue
            except ProducerFencedError:
                self.close()
                log.warning("another producer of %s took over (this one was fenced); starting again",
                            self.transactional_id)
                stop.wait(5.0)
                continue
            except UNAVAILABLE as error:
                failures += 1
                self.close()
                delay = min(0.5 * 2**failures, 30.0)
                log.error("%s unavailable (%s); publishing nothing until it is back, retrying in %.1f s",
                          "Kafka" if isinstance(error, KafkaError) else "PostgreSQL", str(error).strip() or
                          type(error).__name__, delay)
                stop.wait(delay)
                continue
            if failures:
                log.info("connected again; relaying")
            failures = 0
            if not done:
                stop.wait(IDLE_WAIT_SECONDS)
            if time.monotonic() - last_log >= LOG_EVERY_SECONDS and (self.published, self.raised_by_time) != logged:
                log.info("published %d alerts (%d raised by the passing of time) in all", self.published,
                         self.raised_by_time)
                last_log, logged = time.monotonic(), (self.published, self.raised_by_time)
        self.close()
        log.info("stopping; published %d alerts", self.published)

    def run_once(self) -> int:
        """Connect (and read back) if needed, raise by time when due, publish one batch; alerts published."""
        self._connect()
        assert self._conn is not None
        if time.monotonic() - self._raised_at >= self.settings.alert_raise_interval_seconds:
            try:
                raised = raise_due(self._conn, self.outbox)
            except psycopg.errors.UndefinedTable:
                log.warning("the lifecycle read model has no tables yet (start `rapport projector`); raising by time "
                            "later")
                raised = 0
            self.raised_by_time += raised
            self._raised_at = time.monotonic()
        return self.publish_once()

    def close(self) -> None:
        """Let go of the producer and the connections; the next run reads back first."""
        self._drop_producer()
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._conn = self._lock_conn = None

    def _drop_producer(self) -> None:
        """Close the producer (an open transaction of its is aborted by the next `init_transactions`,
        which also fences its sender thread should it outlive this close)."""
        producer, self._producer, self._read_back = self._producer, None, False
        if producer is not None:
            self._close(producer)

    def _close(self, producer: KafkaProducer) -> None:
        try:
            producer.close(timeout=CLOSE_SECONDS)
        except Exception as error:  # noqa: BLE001 - logged: fencing makes a stray sender harmless
            log.warning("the Kafka producer did not close within %.0f s (%s); what it still sends belongs to a "
                        "transaction the next producer of %s aborts", CLOSE_SECONDS,
                        str(error).strip() or type(error).__name__, self.transactional_id)

    def _connect(self) -> None:
        if self._lock_conn is None or self._lock_conn.closed:
            self._read_back = False
            self._lock_conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            if not self._tables_made:
                from services.bootstrap import schema_lock

                with schema_lock(self.settings):  # processes starting together make tables one at a time
                    ensure_tables(self._lock_conn)
                self._tables_made = True
            if not self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
                raise RelayLockTaken
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, row_factory=dict_row, connect_timeout=5)  # type: ignore[arg-type]
            self._deployment = self._deployment_of(self._conn)
        if self._producer is None:
            self._read_back = False
            self._producer = self._transactional_producer()
        if not self._read_back:
            found = self.read_back()
            self.recovered += found
            if found:
                log.info("%d alerts were on %s but not marked published (a stop between the two); marked now",
                         found, self.topic)
            self._read_back = True

    @staticmethod
    def _deployment_of(conn: psycopg.Connection[Any]) -> str:
        with conn.transaction():
            conn.execute(f"INSERT INTO {RELAY.name} (only_row) VALUES (true) ON CONFLICT (only_row) DO NOTHING")  # noqa: S608 - names from constants
            return str(conn.execute(f"SELECT deployment FROM {RELAY.name}").fetchone()["deployment"])  # type: ignore[index, call-overload]  # noqa: S608

    def _transactional_producer(self) -> KafkaProducer:
        """A producer that has fenced every earlier one of this database and topic."""
        producer = kafka_producer(self.settings.kafka_client_config, transactional_id=self.transactional_id,
                                  request_timeout_ms=REQUEST_TIMEOUT_MS, delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                                  max_block_ms=MAX_BLOCK_MS, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
        try:
            producer.init_transactions()
        except BaseException:
            self._close(producer)
            raise
        return producer

    # -- reading back what was published ----------------------------------------------------
    def read_back(self) -> int:
        """Read each partition (read_committed) from its recorded offset to its last stable offset;
        record the alerts of this deployment found there as published, chunk by chunk, and move the
        recorded offsets to the ends. The alerts found."""
        assert self._conn is not None
        with self._conn.transaction():
            rows = self._conn.execute(f"SELECT partition, next_offset FROM {RELAY_POSITIONS.name} WHERE topic = %s",  # noqa: S608 - names from constants
                                      (self.topic,)).fetchall()
        recorded = {r["partition"]: r["next_offset"] for r in rows}  # type: ignore[call-overload]
        consumers = [KafkaConsumer(**self.settings.kafka_client_config, enable_auto_commit=False, group_id=None,
                                   isolation_level=level, client_id="rapport-alerts-read-back")
                     for level in ("read_uncommitted", "read_committed")]
        try:
            return self._read_partitions(*consumers, recorded)
        finally:
            for consumer in consumers:
                consumer.close()

    def _read_partitions(self, uncommitted: KafkaConsumer, consumer: KafkaConsumer, recorded: dict[int, int]) -> int:
        numbers = consumer.partitions_for_topic(self.topic)
        if not numbers:
            raise KafkaError(f"topic {self.topic} has no partitions (does it exist?)")
        partitions = [TopicPartition(self.topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        firsts = consumer.beginning_offsets(partitions)
        highs = uncommitted.end_offsets(partitions)  # first the ends of the logs, then
        ends = consumer.end_offsets(partitions)  # the last stable offsets (read_committed)
        held = sorted(tp.partition for tp in partitions if ends[tp] < highs[tp])
        if held:  # ours were ended by init_transactions: another producer's, after which ours could lie
            raise KafkaError(f"a transaction another producer left open on {self.topic} (partitions {held}) hides "
                             "what follows it from read_committed readers; reading back once it ends")
        starts = {tp: read_back_start(recorded.get(tp.partition), firsts[tp], ends[tp]) for tp in partitions}
        pending = {tp for tp in partitions if starts[tp] < ends[tp]}
        for tp in pending:
            consumer.seek(tp, starts[tp])
        consumer.pause(*[tp for tp in partitions if tp not in pending])
        self._mark([], {tp.partition: starts[tp] for tp in partitions}, overwrite=True)
        source, found = (self._deployment or "").encode(), 0
        positions = dict(starts)
        moved_at = time.monotonic()
        while pending:
            chunk = [(dict(r.headers or []).get(ALERT_ID_HEADER), tp.partition, r.offset)
                     for tp, records in consumer.poll(timeout_ms=500).items() for r in records
                     if dict(r.headers or []).get(ALERT_SOURCE_HEADER) == source]
            moved = {tp: consumer.position(tp) for tp in pending}
            moved = {tp: p for tp, p in moved.items() if p > positions[tp]}
            if not moved and not chunk:
                if time.monotonic() - moved_at > READ_BACK_STALL_SECONDS:
                    raise KafkaError(f"reading {self.topic} back made no progress for {READ_BACK_STALL_SECONDS:.0f} s")
                continue
            moved_at = time.monotonic()
            positions.update(moved)
            published = [(alert_id.decode(), p, o) for alert_id, p, o in chunk if alert_id is not None]
            self._mark(published, {tp.partition: positions[tp] for tp in moved}, overwrite=True)
            found += len(published)
            for tp in [tp for tp in pending if positions[tp] >= ends[tp]]:
                pending.discard(tp)
                consumer.pause(tp)
        return found

    # -- publishing -------------------------------------------------------------------------
    def publish_once(self) -> int:
        """The next batch of the outbox in one Kafka transaction, then recorded published; how many."""
        assert self._conn is not None and self._producer is not None and self._lock_conn is not None
        rows = self._unpublished()
        if not rows:
            return 0
        self._lock_conn.execute("SELECT 1")  # still ours: the session holding the lock is alive
        producer = self._producer
        try:
            producer.begin_transaction()
            futures = [producer.send(
                self.topic, key=row["customer_id"].encode(), value=orjson.dumps(alert_json(row)),
                headers=[(ALERT_ID_HEADER, row["alert_id"].encode()), (ALERT_SEQ_HEADER, str(row["seq"]).encode()),
                         (ALERT_SOURCE_HEADER, (self._deployment or "").encode())],
            ) for row in rows]
            producer.flush(timeout=FLUSH_SECONDS)
            sent = [f.get(timeout=0) for f in futures]  # a send that failed raises its error here
            _within(COMMIT_SECONDS, producer.commit_transaction, "committing the Kafka transaction")
        except BaseException:
            self._drop_producer()  # never reused: the next producer's init_transactions aborts this transaction
            raise
        published = [(row["alert_id"], meta.partition, meta.offset) for row, meta in zip(rows, sent, strict=True)]
        self._mark(published, {}, overwrite=False)
        self.published += len(published)
        return len(published)

    def _unpublished(self) -> list[dict[str, Any]]:
        """The next rows to publish, in `seq` order: rows whose alert id was published already (a row
        written again, e.g. by a restored database) are marked from `alerts_published` and skipped."""
        assert self._conn is not None
        with self._conn.transaction():
            rows = self._conn.execute(
                f"SELECT a.*, p.alert_id IS NOT NULL AS known FROM {ALERTS.name} a LEFT JOIN {PUBLISHED.name} p "  # noqa: S608 - names from constants
                "ON p.alert_id = a.alert_id WHERE a.published_at IS NULL ORDER BY a.seq LIMIT %s", (self.batch,),
            ).fetchall()
            known = [r["alert_id"] for r in rows if r["known"]]  # type: ignore[call-overload]
            if known:
                self._conn.execute(
                    f"UPDATE {ALERTS.name} a SET published_at = p.published_at, kafka_partition = p.kafka_partition, "  # noqa: S608 - names from constants
                    f"kafka_offset = p.kafka_offset FROM {PUBLISHED.name} p WHERE a.alert_id = p.alert_id "
                    "AND a.alert_id = ANY(%s)", (known,))
        return [r for r in rows if not r["known"]]  # type: ignore[call-overload]

    def _mark(self, published: Sequence[tuple[str, int, int]], positions: dict[int, int], overwrite: bool) -> None:
        """In one transaction: these alerts published at these partitions and offsets, and each
        partition's recorded next offset moved past them (or set to `positions`: when `overwrite`,
        as they are; else never back)."""
        assert self._conn is not None
        next_offsets = dict(positions)
        if not overwrite:
            for _, partition, offset in published:
                next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
        if not next_offsets and not published:
            return
        ids, parts, offsets = [p[0] for p in published], [p[1] for p in published], [p[2] for p in published]
        with self._conn.transaction():
            if published:
                self._conn.execute(
                    f"INSERT INTO {PUBLISHED.name} (alert_id, topic, kafka_partition, kafka_offset) "  # noqa: S608 - names from constants
                    "SELECT m.id, %s, m.p, m.o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS m(id, p, o) "
                    "ON CONFLICT (alert_id) DO NOTHING", (self.topic, ids, parts, offsets))
                self._conn.execute(
                    f"UPDATE {ALERTS.name} a SET published_at = clock_timestamp(), kafka_partition = m.p, "  # noqa: S608 - names from constants
                    "kafka_offset = m.o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS m(id, p, o) "
                    "WHERE a.alert_id = m.id AND a.published_at IS NULL", (ids, parts, offsets))
            if next_offsets:
                partitions = sorted(next_offsets)
                kept = "excluded.next_offset" if overwrite else \
                    "GREATEST(excluded.next_offset, alerts_relay_positions.next_offset)"
                self._conn.execute(
                    f"INSERT INTO {RELAY_POSITIONS.name} (topic, partition, next_offset) "  # noqa: S608 - names from constants
                    "SELECT %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS m(p, o) ON CONFLICT (topic, partition) "
                    f"DO UPDATE SET next_offset = {kept}",
                    (self.topic, partitions, [next_offsets[p] for p in partitions]),
                )


