"""Ingest: Kafka topic `interactions` → the event store, exactly once.

Delivery guarantee: exactly-once into the event store. Each poll's messages become ONE
PostgreSQL transaction holding the new events and every consumed partition's offset; on
start and on every rebalance the consumer seeks to the offsets stored there, and Kafka's
own committed offsets are never used (auto-commit is off). A crash before the commit
re-reads the batch; a crash after it resumes right after it.
Dead letters: at-least-once to `interactions.dlq` (published before the commit, so a crash
in between publishes them again; headers name the source partition and offset, which
identify such repeats), and exactly-once into the `rapport_dead_letters` table.
Counters (stored, duplicates, dead-lettered, batches per partition): in the same transaction,
so they are exact too.

PostgreSQL going away (a restart, a cut connection) anywhere in a batch stores nothing of it (a
connection cut just as it committed may have stored all of it: the stored offsets then say so,
and the batch is counted once): ingest forgets the stream versions it remembers, backs off
(capped exponential), seeks back to the stored positions and tries again; after about 5 minutes
without a stored batch it gives up (the error ends the process with exit code 1, for a
supervisor to restart it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import OffsetOutOfRangeError

from consumers.identity import IdentityResolver
from domain.contract import Envelope, InvalidEvent, parse_envelope
from domain.customer import Customer, customer_id_for, interaction_after
from domain.identity import DEFAULT_REGION, Identifier, UnreadableIdentifier, identifiers_of
from eventstore.store import (
    DATABASE_UNAVAILABLE,
    DeadLetterRow,
    EventIdRow,
    InteractionLog,
    PartitionCounts,
    kafka_position_name,
)

log = logging.getLogger("rapport.ingest")

ERROR_HEADER = "rapport-error"
MAX_RETRIES_IN_A_ROW = 10  # rebalances settle within a few; more means a persistent conflict
GIVE_UP_AFTER_SECONDS = 300.0  # PostgreSQL away this long: stop and let a supervisor decide
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
# A batch whose identity decision or stream versions another ingest process changed meanwhile is
# decided again at once, this many times, before it is re-read from Kafka like any failed batch.
STORE_ATTEMPTS = 4


@dataclass
class IngestStats:
    """Running totals, for the throughput log line and for callers that wait on progress."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retried_batches: int = 0
    redecided_batches: int = 0  # decided again in place (identity or a stream changed by another process)
    database_failures: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Batch:
    """What one batch did, added to the running totals once it is known to be stored. A batch whose
    commit got no answer may have been stored before the connection was cut: the stored positions
    decide (`last_offsets`), once the database answers again."""

    last_offsets: dict[int, int]
    messages: int
    stored: int
    duplicates: int
    dead_lettered: int

    def count(self, stats: IngestStats) -> None:
        stats.messages += self.messages
        stats.stored += self.stored
        stats.duplicates += self.duplicates
        stats.dead_lettered += self.dead_lettered
        stats.batches += 1


@dataclass(frozen=True)
class _Accepted:
    record: Any
    envelope: Envelope
    fingerprint: str
    identifiers: tuple[Identifier, ...]  # normalised, the anchor first: its stream holds the event

    @property
    def stream(self) -> Any:
        return customer_id_for(self.identifiers[0].value)


def dead_letter_headers(record: Any, reason: str) -> list[tuple[str, bytes]]:
    """The original headers plus contract §1's four `rapport-*` headers."""
    return list(record.headers or []) + [
        # A reason never stops ingest: whatever it quotes is written, escaped if need be.
        (ERROR_HEADER, reason.encode("utf-8", "backslashreplace")),
        ("rapport-source-topic", record.topic.encode()),
        ("rapport-source-partition", str(record.partition).encode()),
        ("rapport-source-offset", str(record.offset).encode()),
    ]


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL stayed away for longer than ingest waits; nothing of the last batch was stored."""


class MissingOffsets(RuntimeError):
    """Messages were deleted from Kafka (retention, or the topic was recreated) before ingest read them."""

    def __init__(self, topic: str, error: OffsetOutOfRangeError) -> None:
        offsets = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
        where = ", ".join(f"partition {tp.partition} from offset {offset}" for tp, offset in offsets.items())
        super().__init__(
            f"topic {topic!r} no longer has the messages ingest must read next ({where or error}): they were "
            "deleted by retention, or the topic was recreated. Stopping rather than skipping them silently. "
            "Republish the missing events if you have them; to accept the loss, delete the rows "
            f"'kafka:{topic}:<partition>' from rapport_tracking and restart (ingest then reads from the start)."
        )


class DeadLetterPublisher:
    """Writes rejected messages, original bytes unchanged, to the dead-letter topic."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def publish(self, rejected: Sequence[tuple[Any, str]]) -> None:
        """Send and wait for the broker's acknowledgement of every one (raises if any fails)."""
        futures = [
            self.producer.send(self.topic, key=record.key, value=record.value or b"",
                               headers=dead_letter_headers(record, reason))
            for record, reason in rejected
        ]
        self.producer.flush()
        for future in futures:
            future.get(timeout=30)


class IngestConsumer:
    """One member of the ingest consumer group; run several to split the partitions."""

    def __init__(
        self,
        store: InteractionLog,
        consumer: KafkaConsumer,
        dead_letters: DeadLetterPublisher,
        topic: str,
        poll_timeout_ms: int = 500,
        max_poll_records: int = 5000,
        log_every_seconds: float = 10.0,
        give_up_after_seconds: float = GIVE_UP_AFTER_SECONDS,
        phone_region: str = DEFAULT_REGION,
        identity_key: bytes | None = None,
    ) -> None:
        self.store = store
        self.phone_region = phone_region
        self.identity_key = identity_key  # emails and phones are matched as keyed hashes under it
        self.identities = IdentityResolver(store.interactions.identity, store.interactions.datastore.get_connection)
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.topic = topic
        self.poll_timeout_ms = poll_timeout_ms
        self.max_poll_records = max_poll_records
        self.log_every_seconds = log_every_seconds
        self.stats = IngestStats()
        self.give_up_after_seconds = give_up_after_seconds
        self._logged = IngestStats()
        self._conflicts_in_a_row = 0
        self._database_failures_in_a_row = 0
        self._unavailable_since: float | None = None
        # Partitions whose position must be read from the event store before they are read
        # again (after a failed batch, or an assignment while PostgreSQL was away). They are
        # paused meanwhile, so no message of theirs is fetched or returned.
        self._unpositioned: set[TopicPartition] = set()
        self._in_doubt: _Batch | None = None
        self._stop = threading.Event()  # `run` passes its own: a SIGTERM cuts a back-off short

    # -- positions -----------------------------------------------------------------------
    def seek_to_stored_positions(self, partitions: Iterable[TopicPartition]) -> None:
        """Continue right after the last offset recorded in the event store (or from the start)."""
        partitions = [tp for tp in partitions if tp.topic == self.topic]
        stored = self.store.interactions.kafka_positions(self.topic, [tp.partition for tp in partitions])
        for tp in partitions:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition] + 1)
            else:
                self.consumer.seek_to_beginning(tp)
        if partitions:
            log.info("partitions %s: reading from the stored positions %s", sorted(tp.partition for tp in partitions),
                     {p: o + 1 for p, o in sorted(stored.items())} or "(none yet: from the beginning)")

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # No database access here: kafka-python runs the listener on its network thread, which
        # sends no heartbeats meanwhile, and PostgreSQL may be away. The partitions are held, and
        # `poll_once` seeks them to their stored positions before it reads them.
        self._hold([tp for tp in assigned if tp.topic == self.topic])

    def _hold(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop reading these partitions until `_seek_unpositioned` has put them at their stored positions."""
        assigned = self.consumer.assignment()
        partitions = [tp for tp in partitions if tp in assigned]
        if not partitions:
            return
        self.consumer.pause(*partitions)
        # A paused partition still needs a position, or the next poll fails for one just assigned
        # (auto_offset_reset is "none"); any will do: nothing is fetched before the real seek,
        # and records fetched earlier are dropped by kafka-python when that seek moves the position.
        self.consumer.seek_to_beginning(*partitions)
        self._unpositioned.update(partitions)

    def _seek_unpositioned(self) -> None:
        assigned = self.consumer.assignment()
        partitions = [tp for tp in self._unpositioned if tp in assigned]
        self._settle_batch_in_doubt()  # may raise: they stay held
        self.seek_to_stored_positions(partitions)
        if partitions:
            self.consumer.resume(*partitions)
        self._unpositioned.clear()

    def subscribe(self) -> None:
        ingest = self

        class SeekOnAssign(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                # nothing in flight: every batch is committed before the next poll
                ingest._unpositioned.difference_update(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                ingest._on_assigned(assigned)

        self.consumer.subscribe([self.topic], listener=SeekOnAssign())
        # Have the subscribed topic's metadata before the first poll joins the group. Otherwise the
        # leader assigns from empty metadata, joins again once the metadata arrives, and
        # kafka-python 3.0.12 can lose that second join when a poll's timeout ends just as it
        # completes: the member then gets no partitions and sends no heartbeats, for ever (seen
        # in tests under load). `topics()` always asks the broker and waits for the answer.
        self.consumer.topics()

    def _settle_batch_in_doubt(self) -> None:
        """Count a batch whose commit went unanswered if the stored positions show it was stored."""
        batch = self._in_doubt
        if batch is None:
            return
        stored = self.store.interactions.kafka_positions(self.topic, batch.last_offsets)
        still_ours = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        # After a rebalance another member may have stored those offsets: then it is not known who did.
        if set(batch.last_offsets) <= still_ours and all(stored.get(p, -1) >= o for p, o in batch.last_offsets.items()):
            log.info("the batch whose commit went unanswered was stored (%d events); it is counted once",
                     batch.stored)
            batch.count(self.stats)
        self._in_doubt = None

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll and store until `stop` is set (SIGTERM sets it); then close cleanly."""
        self._stop = stop
        self.subscribe()
        try:
            while not stop.is_set():
                self.poll_once()
                self._maybe_log()
        finally:
            self._log_totals()
            self.close()

    def close(self) -> None:
        """Leave the group (its partitions go to the other members at once) and flush."""
        self.consumer.close(autocommit=False)
        self.dead_letters.producer.close(timeout=10)

    def poll_once(self) -> int:
        """Read one batch and store it; the number of messages read (0 if none, or if held back)."""
        records: list[Any] = []
        try:
            if self._unpositioned:
                self._seek_unpositioned()
            try:
                batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_poll_records)
            except OffsetOutOfRangeError as error:
                raise MissingOffsets(self.topic, error) from None
            records = [record for tp in sorted(batch, key=lambda tp: tp.partition) for record in batch[tp]]
            if records:
                self.process(records)
        except IntegrityError as error:
            # Another member wrote these offsets or customers (a rebalance, a stale cache):
            # nothing of this batch was stored; forget cached state and re-read from the store.
            self.stats.retried_batches += 1
            self._conflicts_in_a_row += 1
            if self._conflicts_in_a_row > MAX_RETRIES_IN_A_ROW:
                self.store.forget_stream_versions()
                raise RuntimeError(
                    f"the same batch failed to store {MAX_RETRIES_IN_A_ROW} times in a row ({error}); "
                    "stopping instead of retrying for ever"
                ) from error
            log.warning("batch not stored (%s); re-reading from the stored positions", error)
            self._retry_later(min(0.1 * 2 ** self._conflicts_in_a_row, 10.0))  # don't spin if it persists
            return len(records)
        except DATABASE_UNAVAILABLE as error:
            self._database_unavailable(error)
            return len(records)
        except BaseException:
            # Remembered stream versions may count facts that were never stored: a later save would
            # leave a gap in their streams. Forget them; the error ends the process.
            self.store.forget_stream_versions()
            raise
        if records:
            self._conflicts_in_a_row = 0
        if self._unavailable_since is not None:
            log.info("PostgreSQL answers again after %.1f s; continuing from the stored positions",
                     time.monotonic() - self._unavailable_since)
        self._database_failures_in_a_row = 0
        self._unavailable_since = None
        return len(records)

    def _retry_later(self, delay: float) -> None:
        """The batch was not stored (or its commit went unanswered): forget what may be stale, wait, and read again from
        the stored positions (the partitions are held until then)."""
        # Remembered versions count the failed batch's facts (never stored).
        self.store.forget_stream_versions()
        self._hold(self.consumer.assignment())
        self._stop.wait(delay)

    def _database_unavailable(self, error: BaseException) -> None:
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
        self._database_failures_in_a_row += 1
        self.stats.database_failures += 1
        away = now - self._unavailable_since
        if away >= self.give_up_after_seconds:
            self.store.forget_stream_versions()
            log.error("PostgreSQL has been unavailable for %.0f s (%d attempts; last: %s); stopping",
                      away, self._database_failures_in_a_row, _one_line(error))
            raise DatabaseUnavailable(
                f"PostgreSQL has been unavailable for {away:.0f} s ({_one_line(error)}); the last batch "
                "was not stored (or was, if the connection was cut as it committed); restart ingest once the "
                "database answers (it resumes at the stored positions)"
            ) from error
        delay = min(FIRST_BACKOFF_SECONDS * 2 ** (self._database_failures_in_a_row - 1), MAX_BACKOFF_SECONDS)
        delay = min(delay, max(self.give_up_after_seconds - away, 0.0))
        log.warning("PostgreSQL unavailable (%s); the batch was not stored (unless the connection was cut as "
                    "it committed: the stored positions tell); retrying from the stored positions in %.1f s "
                    "(attempt %d, giving up after %.0f s)", _one_line(error), delay,
                    self._database_failures_in_a_row, self.give_up_after_seconds)
        self._retry_later(delay)

    def process(self, records: Sequence[Any]) -> None:
        """Validate, deduplicate, dead-letter, then store the new facts, who is who, and the batch's
        positions and counts in one transaction."""
        candidates, rejected = self._validate(records, self.phone_region, self.identity_key)
        accepted, duplicates, conflicts = self._deduplicate(candidates)
        rejected += conflicts
        counts = self._partition_counts(records, accepted, duplicates, rejected)
        if rejected:
            self.dead_letters.publish(rejected)
        last_offsets: dict[int, int] = {}
        for record in records:
            last_offsets[record.partition] = max(last_offsets.get(record.partition, -1), record.offset)
        batch = _Batch(last_offsets, len(records), len(accepted), len(duplicates), len(rejected))
        positions = [Tracking(kafka_position_name(self.topic, p), o) for p, o in sorted(last_offsets.items())]
        event_ids = [EventIdRow(a.envelope.event_id, a.fingerprint, a.stream, a.record.topic, a.record.partition,
                                a.record.offset) for a in accepted]
        # PostgreSQL text holds no NUL and no lone surrogate: the stored reason escapes them.
        dead_letters = [DeadLetterRow(r.topic, r.partition, r.offset, _storable(reason), r.key, r.value or b"")
                        for r, reason in rejected]
        for attempt in range(1, STORE_ATTEMPTS + 1):
            plan = self.identities.plan([(a.identifiers, a.envelope.occurred_at, a.envelope.event_id) for a in accepted])
            facts, versions = self._facts(accepted)
            facts += plan.events(versions, self.store.stream_versions)
            try:
                self.store.record(facts, positions=positions, event_ids=event_ids, dead_letters=dead_letters,
                                  counters=counts, identity_writes=plan.writes)
                break
            except IntegrityError:
                # Another ingest process changed a customer this batch decided from, or wrote to one of
                # its streams: what is remembered of them may be stale. Read them again and decide again.
                self.store.forget_stream_versions()
                if attempt == STORE_ATTEMPTS:
                    raise
                self.stats.redecided_batches += 1
                self._stop.wait(0.01 * attempt)
            except DATABASE_UNAVAILABLE:
                self._in_doubt = batch
                raise
        self.identities.stored(plan)
        batch.count(self.stats)

    @staticmethod
    def _validate(records: Sequence[Any], region: str, key: bytes | None
                  ) -> tuple[list[_Accepted], list[tuple[Any, str]]]:
        """Each message as an envelope, or with the reason it is dead-lettered."""
        rejected: list[tuple[Any, str]] = []
        candidates: list[_Accepted] = []
        for record in records:
            if record.value is None:
                rejected.append((record, "message has no value (a tombstone); an event needs a JSON object"))
                continue
            try:
                envelope = parse_envelope(record.value)
                identifiers = identifiers_of(envelope.customer.__dict__, region, key)
            except InvalidEvent as invalid:
                rejected.append((record, invalid.reason))
                continue
            except UnreadableIdentifier as unreadable:
                rejected.append((record, unreadable.reason))
                continue
            except Exception as error:  # a bug of ours must not block the partition for ever
                log.exception("validation failed unexpectedly at %s/%d@%d", record.topic, record.partition, record.offset)
                rejected.append((record, f"could not be validated ({type(error).__name__}: {error}); "
                                         "report this to Rapport's maintainers with the message"))
                continue
            candidates.append(_Accepted(record, envelope, envelope.fingerprint(), identifiers))
        return candidates, rejected

    @staticmethod
    def _partition_counts(records: Sequence[Any], accepted: Sequence[_Accepted], duplicates: Sequence[Any],
                          rejected: Sequence[tuple[Any, str]]) -> list[PartitionCounts]:
        """Per partition of the batch: events stored, duplicates ignored, messages dead-lettered."""
        stored = Counter((a.record.topic, a.record.partition) for a in accepted)
        duplicated = Counter((r.topic, r.partition) for r in duplicates)
        dead = Counter((r.topic, r.partition) for r, _ in rejected)
        partitions = sorted({(r.topic, r.partition) for r in records})
        return [PartitionCounts(topic, partition, stored[topic, partition], duplicated[topic, partition],
                                dead[topic, partition]) for topic, partition in partitions]

    def _deduplicate(
        self, candidates: list[_Accepted]
    ) -> tuple[list[_Accepted], list[Any], list[tuple[Any, str]]]:
        """Split into new events, ignored duplicates (their records) and conflicting re-uses of an `event_id`."""
        known = self.store.interactions.known_event_ids(c.envelope.event_id for c in candidates)
        first_seen: dict[str, tuple[str, str]] = {
            event_id: (row.fingerprint, f"{row.topic}/{row.partition}@{row.offset}") for event_id, row in known.items()
        }
        accepted: list[_Accepted] = []
        conflicts: list[tuple[Any, str]] = []
        duplicates: list[Any] = []
        for candidate in candidates:
            event_id = candidate.envelope.event_id
            prior = first_seen.get(event_id)
            if prior is None:
                first_seen[event_id] = (
                    candidate.fingerprint,
                    f"{candidate.record.topic}/{candidate.record.partition}@{candidate.record.offset}",
                )
                accepted.append(candidate)
            elif prior[0] == candidate.fingerprint:
                duplicates.append(candidate.record)
            else:
                conflicts.append((
                    candidate.record,
                    f"conflict: event_id {event_id!r} was already recorded with different content "
                    f"(first from {prior[1]}); the event store keeps the first; "
                    "send a correction as a new event with its own event_id",
                ))
        return accepted, duplicates, conflicts

    def _facts(self, accepted: Sequence[_Accepted]) -> tuple[list[Any], dict[UUID, int]]:
        """The new facts of the batch, in the order the messages came, and each stream's version
        after them: an event is stored in the stream of its anchor identifier (the id, else the
        email, else the phone, in normal form), going on from its stored version; a new stream is
        registered first."""
        versions = self.store.stream_versions({a.stream for a in accepted})
        facts: list[Any] = []
        for item in accepted:
            stream = item.stream
            version = versions.get(stream)
            if version is None:
                customer = Customer(item.identifiers[0].value)
                facts.extend(customer.collect_events())
                version = customer.version
            facts.append(interaction_after(item.envelope, stream, version))
            versions[stream] = version + 1
        return facts, versions

    # -- logging -------------------------------------------------------------------------
    def _maybe_log(self) -> None:
        now = time.monotonic()
        elapsed = now - self._logged.started
        if elapsed < self.log_every_seconds:
            return
        stored = self.stats.stored - self._logged.stored
        if self.stats.messages != self._logged.messages:
            log.info(
                "stored %d events in %.1f s (%.0f events/s); totals: %d messages, %d stored, "
                "%d duplicates ignored, %d dead-lettered",
                stored, elapsed, stored / elapsed, self.stats.messages, self.stats.stored,
                self.stats.duplicates, self.stats.dead_lettered,
            )
        self._logged = IngestStats(**{**self.stats.__dict__, "started": now})

    def _log_totals(self) -> None:
        log.info(
            "stopping: %d messages, %d events stored, %d duplicates ignored, %d dead-lettered, %d batches retried, "
            "%d decided again, %d database failures",
            self.stats.messages, self.stats.stored, self.stats.duplicates, self.stats.dead_lettered,
            self.stats.retried_batches, self.stats.redecided_batches, self.stats.database_failures,
        )


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:500]


def kafka_consumer(client: dict[str, Any], group_id: str, max_poll_records: int, **overrides: Any) -> KafkaConsumer:
    """A consumer tuned for big batches; offsets are ours to keep, so auto-commit is off. `client`: where
    and how to connect (`Settings.kafka_client_config`: servers, TLS, SASL)."""
    return KafkaConsumer(
        **client,
        group_id=group_id,
        enable_auto_commit=False,
        # We always seek to the offsets stored in PostgreSQL; if the broker no longer has them,
        # fail loudly (MissingOffsets) instead of silently jumping over the gap.
        auto_offset_reset="none",
        max_poll_records=max_poll_records,
        # Enough for a few polls of 5,000 messages ahead, not more: fetched data is held in memory
        # (decoded, about three times its size), and 16 MB per partition took ingest's RSS past
        # 300 MB. A message larger than these limits is still fetched (Kafka returns it whole).
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        max_poll_interval_ms=600_000,
        # A member that died is noticed after this long and its partitions move on
        # (the client's 45 s default would stall a restarted ingest for as long).
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        client_id="rapport-ingest",
        **overrides,
    )


def kafka_producer(client: dict[str, Any], **overrides: Any) -> KafkaProducer:
    """A producer that waits for the broker to have the message (acks=all). `client`: where and how to
    connect (`Settings.kafka_client_config`: servers, TLS, SASL)."""
    settings: dict[str, Any] = {
        **client, "acks": "all", "linger_ms": 20, "batch_size": 512 * 1024,
        "max_request_size": 5 * 1024 * 1024, "retries": 5,  # dead letters: up to 4 MiB
    }
    settings.update(overrides)
    return KafkaProducer(**settings)

