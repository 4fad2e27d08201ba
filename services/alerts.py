"""`rapport alerts`: raises the alerts the passing of time brings and relays every alert to Kafka.

**Time-driven raiser.** The lifecycle read model stores each customer's stage intervals into the
future, a change by the passing of time starting at the instant its threshold passes. Every
`RAPPORT_ALERT_RAISE_INTERVAL_SECONDS` the raiser takes the lifecycle read model's lock (the one
the projector applies pages under), reads the database's clock and raises (`projections.alerts`) an
alert for each `at_risk` or `churned` interval that started since its last look. Under the lock, a
projector transaction has either committed (its intervals are seen) or not started: it then raises
itself, at its own later clock, every interval that has started by then. So no change falls between
the two, and the ids (`domain.alerts`) keep a change found by both once.

**Relay: exactly once on Kafka.** Alerts are published in outbox order with the alert id and the
outbox sequence in headers (`rapport-alert-id`, `rapport-alert-seq`), keyed by customer; once the
broker has them (acks=all, idempotent producer: a retried batch is not written twice), the rows are
marked published in PostgreSQL together with, per partition, the offset after the last message
marked (`alerts_relay_positions`). A crash between publishing and marking leaves messages in the
topic whose rows are unmarked: so before publishing anything, after every start and after every
failure (a send that failed may have been written), the relay reads each partition from its marked
offset to the end and marks the alerts it finds there; only the rest is sent. One relay publishes at
a time: it holds a PostgreSQL advisory lock on a connection of its own, checked before each batch,
and a relay that loses it (its connection broke) stops sending, reads back and takes it again.

Why not Kafka transactions (kafka-python 3.0.12 has them): a transaction cannot include the
PostgreSQL mark, so a crash between Kafka's commit and ours needs the same read-back, and aborted
transactions leave records in the log that only `read_committed` consumers skip. Read-back keeps
the log itself free of duplicates, for any consumer.

Outages: a failure of Kafka or PostgreSQL is logged and retried with a back-off (up to 30 s), for as
long as it lasts; nothing is lost (the outbox keeps what is not published yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from psycopg.rows import dict_row

from consumers.ingest import kafka_producer
from domain.alerts import Alert, stage_alert
from domain.lifecycle import Stage, StageInterval
from projections import lifecycle
from projections.alerts import ALERTS, RAISER, RELAY_POSITIONS, AlertOutbox, create_statements
from projections.runner import lock_key
from services.http.params import rfc3339
from services.settings import Settings

log = logging.getLogger("rapport.alerts")

ALERT_ID_HEADER = "rapport-alert-id"
ALERT_SEQ_HEADER = "rapport-alert-seq"
RELAY_LOCK_KEY = lock_key("alerts-relay")
BATCH = 500
IDLE_WAIT_SECONDS = 0.2
SEND_TIMEOUT_SECONDS = 60.0
READ_BACK_SECONDS = 60.0
LOG_EVERY_SECONDS = 10.0
# Intervals that started up to this long before the raiser's last look are looked at again (the ids
# keep them once): room for a step back of the database's clock.
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
            f"FROM {intervals} i WHERE i.starts_at > %s AND i.starts_at <= %s AND i.stage = ANY(%s)",
            (start, now, [Stage.AT_RISK.value, Stage.CHURNED.value]),
        )
        alerts = [a for r in curs.fetchall() if (a := _interval_alert(r)) is not None]
        raised = outbox.raise_alerts(curs, alerts)
        curs.execute(f"INSERT INTO {RAISER.name} (only_row, scanned_until) VALUES (true, %s) ON CONFLICT (only_row) "  # noqa: S608 - names from constants
                     "DO UPDATE SET scanned_until = GREATEST(excluded.scanned_until, alerts_raiser.scanned_until)", (now,))
    return raised


def _interval_alert(row: dict[str, Any]) -> Alert | None:
    interval = StageInterval(Stage(row["stage"]), row["since"], row["until"], row["reason"], row["event_id"],
                             Stage(row["previous_stage"]) if row["previous_stage"] else None)
    return stage_alert(row["customer_id"], interval, row["last_contact_at"])


# -- the relay --------------------------------------------------------------------------------


class AlertRelay:
    """Raises alerts by time and publishes the outbox to `settings.alert_topic`, exactly once."""

    def __init__(self, settings: Settings, batch: int = BATCH) -> None:
        from services.bootstrap import conninfo

        self.settings = settings
        self.topic = settings.alert_topic
        self.batch = batch
        self.outbox = AlertOutbox(settings.alert_max_age)
        self._conninfo = conninfo(settings)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._producer: KafkaProducer | None = None
        self._read_back = False
        self._tables_made = False
        self._raised_at = float("-inf")
        self.published = 0
        self.raised_by_time = 0
        self.recovered = 0

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
        """Let go of the connections and the producer; the next run reads back first."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception:  # noqa: BLE001, S110 - closing a broken producer
                pass
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._producer = self._conn = self._lock_conn = None
        self._read_back = False

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
        if self._producer is None:
            self._read_back = False
            self._producer = kafka_producer(self.settings.kafka_client_config, enable_idempotence=True)
        if not self._read_back:
            found = self.read_back()
            self.recovered += found
            if found:
                log.info("%d alerts were on %s but not marked published (a stop between the two); marked now",
                         found, self.topic)
            self._read_back = True

    # -- reading back what was published ----------------------------------------------------
    def read_back(self) -> int:
        """Read each partition of the topic from its marked offset to its end; mark the alerts found
        there as published and move the marked offsets to the ends. The alerts found."""
        assert self._conn is not None
        with self._conn.transaction():
            rows = self._conn.execute(f"SELECT partition, next_offset FROM {RELAY_POSITIONS.name} WHERE topic = %s",  # noqa: S608 - names from constants
                                      (self.topic,)).fetchall()
        marked = {r["partition"]: r["next_offset"] for r in rows}
        consumer = KafkaConsumer(**self.settings.kafka_client_config, enable_auto_commit=False, group_id=None,
                                 client_id="rapport-alerts-read-back")
        try:
            found, ends = self._published_after(consumer, marked)
        finally:
            consumer.close()
        self._mark(found, ends)
        return len(found)

    def _published_after(self, consumer: KafkaConsumer, marked: dict[int, int]
                         ) -> tuple[list[tuple[str, int, int]], dict[int, int]]:
        numbers = consumer.partitions_for_topic(self.topic)
        if not numbers:
            raise KafkaError(f"topic {self.topic} has no partitions (does it exist?)")
        partitions = [TopicPartition(self.topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        firsts = consumer.beginning_offsets(partitions)
        pending = {}
        for tp in partitions:
            start = max(marked.get(tp.partition, 0), firsts[tp])
            if start < ends[tp]:
                consumer.seek(tp, start)
                pending[tp] = ends[tp]
        consumer.pause(*[tp for tp in partitions if tp not in pending])
        found: list[tuple[str, int, int]] = []
        deadline = time.monotonic() + READ_BACK_SECONDS
        while pending:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading {self.topic} back took over {READ_BACK_SECONDS:.0f} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < ends[tp]:
                        alert_id = dict(record.headers or []).get(ALERT_ID_HEADER)
                        if alert_id is not None:
                            found.append((alert_id.decode(), tp.partition, record.offset))
            for tp in [tp for tp, end in pending.items() if consumer.position(tp) >= end]:
                del pending[tp]
                consumer.pause(tp)
        return found, {tp.partition: end for tp, end in ends.items()}

    # -- publishing -------------------------------------------------------------------------
    def publish_once(self) -> int:
        """The next batch of the outbox to Kafka, then marked published; how many."""
        assert self._conn is not None and self._producer is not None and self._lock_conn is not None
        with self._conn.transaction():
            rows = self._conn.execute(
                f"SELECT * FROM {ALERTS.name} WHERE published_at IS NULL ORDER BY seq LIMIT %s", (self.batch,)  # noqa: S608 - names from constants
            ).fetchall()
        if not rows:
            return 0
        self._lock_conn.execute("SELECT 1")  # still ours: the session holding the lock is alive
        futures = [self._producer.send(
            self.topic, key=row["customer_id"].encode(), value=orjson.dumps(alert_json(row)),
            headers=[(ALERT_ID_HEADER, row["alert_id"].encode()), (ALERT_SEQ_HEADER, str(row["seq"]).encode())],
        ) for row in rows]
        self._producer.flush(timeout=SEND_TIMEOUT_SECONDS)
        sent = [f.get(timeout=SEND_TIMEOUT_SECONDS) for f in futures]
        published = [(row["alert_id"], meta.partition, meta.offset) for row, meta in zip(rows, sent, strict=True)]
        self._mark(published, {})
        self.published += len(published)
        return len(published)

    def _mark(self, published: Sequence[tuple[str, int, int]], ends: dict[int, int]) -> None:
        """In one transaction: these alerts published at these partitions and offsets, and the marked
        offset of each partition moved past them (and to `ends`, after a read-back)."""
        assert self._conn is not None
        next_offsets = dict(ends)
        for _, partition, offset in published:
            next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
        if not next_offsets:
            return
        with self._conn.transaction():
            if published:
                self._conn.execute(
                    f"UPDATE {ALERTS.name} a SET published_at = clock_timestamp(), kafka_partition = m.p, "  # noqa: S608 - names from constants
                    "kafka_offset = m.o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS m(id, p, o) "
                    "WHERE a.alert_id = m.id AND a.published_at IS NULL",
                    ([p[0] for p in published], [p[1] for p in published], [p[2] for p in published]),
                )
            partitions = sorted(next_offsets)
            self._conn.execute(
                f"INSERT INTO {RELAY_POSITIONS.name} (topic, partition, next_offset) "  # noqa: S608 - names from constants
                "SELECT %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS m(p, o) ON CONFLICT (topic, partition) "
                "DO UPDATE SET next_offset = GREATEST(excluded.next_offset, alerts_relay_positions.next_offset)",
                (self.topic, partitions, [next_offsets[p] for p in partitions]),
            )
