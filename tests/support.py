"""Helpers shared by integration and e2e tests: make events, publish, read back, wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition

from consumers.ingest import IngestConsumer, kafka_producer
from domain.customer import customer_id_for
from eventstore import tables
from eventstore.store import InteractionLog
from services.settings import Settings

T = TypeVar("T")


def api_key(settings: Settings, *roles: str, name: str = "tests") -> str:
    """A new API key with these roles, in the database of `settings` (its tables made if missing)."""
    import psycopg

    from services import access
    from services.bootstrap import conninfo, ensure_access_tables

    ensure_access_tables(settings)
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        return access.create_key(conn, name, roles)[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_customer_id() -> str:
    return f"crm-test-{uuid.uuid4().hex[:12]}"


def envelope(customer_id: str, event_type: str, occurred_at: str, data: dict[str, Any],
             event_id: str | None = None, **customer: str) -> dict[str, Any]:
    return {
        "event_id": event_id or f"test:{event_type}:{uuid.uuid4().hex}",
        "type": event_type,
        "occurred_at": occurred_at,
        "customer": {"id": customer_id, **customer},
        "source": "tests",
        "data": data,
    }


def encode(message: dict[str, Any] | bytes) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message).encode()


def publish(settings: Settings, messages: Iterable[dict[str, Any] | bytes], key: bytes | None = None,
            topic: str | None = None) -> int:
    producer = kafka_producer(settings.kafka_client_config)
    count = 0
    for message in messages:
        message_key = key
        if message_key is None and isinstance(message, dict):
            message_key = message["customer"].get("id", "").encode() or None
        producer.send(topic or settings.topic, key=message_key, value=encode(message))
        count += 1
    producer.flush()
    producer.close()
    return count


def end_offsets(settings: Settings, topic: str | None = None) -> dict[int, int]:
    topic = topic or settings.topic
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


@dataclass(frozen=True)
class Received:
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list[Received]:
    """Every message of a topic, from the beginning, once `expected` of them are there."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(received) < expected and time.monotonic() < deadline:
            for record in consumer:
                received.append(Received(record.key, record.value,
                                         {k: v.decode() for k, v in (record.headers or [])}))
        return received
    finally:
        consumer.close()


def wait_for(condition: Callable[[], T | None], timeout: float = 60, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll until `condition()` is truthy, with a deadline; never a blind sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def drain(consumer: IngestConsumer, settings: Settings, timeout: float = 60) -> None:
    """Poll until the stored position of every partition reaches the topic's end; then leave
    the group, as a stopped process does."""
    targets = end_offsets(settings)
    consumer.subscribe()

    def done() -> bool:
        consumer.poll_once()
        stored = consumer.store.interactions.kafka_positions(settings.topic, targets)
        return all(end == 0 or stored.get(p, -1) + 1 >= end for p, end in targets.items())

    try:
        wait_for(done, timeout=timeout, interval=0, what="ingest to reach the end of the topic")
    finally:
        consumer.close()


def stored_event_ids(store: InteractionLog, customer_ids: list[str]) -> list[str]:
    """event_id of every interaction stored for these customers, duplicates included."""
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            "SELECT convert_from(state, 'UTF8')::json->>'event_id' AS event_id FROM " + tables.EVENTS + " "
            "WHERE originator_id = ANY(%s) AND originator_version > 1",
            ([customer_id_for(c) for c in customer_ids],),
        ).fetchall()
    return [row["event_id"] for row in rows]


def parse(text: str) -> datetime:
    """An RFC 3339 time from an API answer, in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def deliver(settings: Settings, store: InteractionLog, messages: list[dict[str, Any]]) -> None:
    """Publish through Kafka, ingest to the end of the topic, project every read model to the head."""
    from services.bootstrap import ingest_consumer, projector

    publish(settings, messages)
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)
    assert consumer.stats.dead_lettered == 0, "test data must be valid"
    projector(settings, store).catch_up()


@contextmanager
def serving(command: str, env: dict[str, str], port: int) -> Iterator[str]:
    """`rapport <command>` (`api` or `run`) in its own process group, once its API answers
    /health; its base URL. Stopped with SIGTERM at the end (killed, children too, if it hangs)."""
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "services.cli", command], cwd=root, env=env,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=10) as response:  # noqa: S310 - localhost
                return response.status == 200
        except urllib.error.HTTPError:
            return False
        except OSError:
            assert process.poll() is None, f"rapport {command} exited with {process.returncode}"
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.1, what=f"rapport {command} to answer /health")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def own_database(settings: Settings, prefix: str) -> Iterator[Settings]:
    """`settings` on a new database of one test alone (its rows must not meet other tests'),
    dropped at the end."""
    import psycopg

    admin = psycopg.conninfo.make_conninfo(**settings.database)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = settings.database
    try:
        yield settings.model_copy(update={
            "database_url": f"postgresql://{db['user']}:{db['password']}@{db['host']}:{db['port']}/{name}"})
    finally:
        drop_database(admin, name)


def drop_database(admin: str, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE), tried again briefly: it is refused while an autovacuum
    worker is in the database (the role may not end it)."""
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        for attempt in range(5):
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.Error:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
