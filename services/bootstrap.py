"""The composition root: builds Rapport's parts from `Settings`. Tests build them the same way."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from consumers.ingest import DeadLetterPublisher, IngestConsumer, kafka_consumer, kafka_producer
from eventstore.store import InteractionLog, store_env
from projections.catalog import READ_MODELS
from projections.readmodel import LIVE_SCHEMA, ModelSettings, ReadModel
from projections.runner import ProjectionStore, Projector
from services.settings import Settings


class ServiceUnavailable(RuntimeError):
    """A service Rapport needs does not answer; the message says which and what to do."""


def conninfo(settings: Settings) -> str:
    return psycopg.conninfo.make_conninfo(**settings.database)


def check_database(settings: Settings) -> None:
    """Fail fast with a clear message (the pool would wait 30 s and say only 'no connection')."""
    db = settings.database
    try:
        with psycopg.connect(conninfo(settings), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise ServiceUnavailable(
            f"cannot use PostgreSQL database {db['dbname']!r} at {db['host']}:{db['port']} as user "
            f"{db['user']!r}: {str(error).strip()}\n"
            "Start the local stack with `scripts/stack up`, or set RAPPORT_DATABASE_URL."
        ) from None


# Any constant: processes starting together (ingest, projector, API) create tables one at a
# time, since concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalog.
SCHEMA_LOCK_KEY = 0x5241_5050  # "RAPP"


@contextmanager
def schema_lock(settings: Settings) -> Iterator[None]:
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


def check_kafka(settings: Settings, topics: list[str] | None = None) -> None:
    """Fail fast and clearly when Kafka does not answer or a topic is missing."""
    import logging

    from kafka.admin import KafkaAdminClient

    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # its retry lines would bury the one message below
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, client_id="rapport-check",
                                 request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    except Exception as error:  # noqa: BLE001 - kafka-python raises several kinds
        raise ServiceUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap}: {error}\n"
            "Start the local stack with `scripts/stack up`, or set RAPPORT_KAFKA_BOOTSTRAP."
        ) from None
    finally:
        kafka_log.setLevel(level)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    missing = [t for t in topics or [] if t not in existing]
    if missing:
        raise ServiceUnavailable(
            f"Kafka at {settings.kafka_bootstrap} has no topic {', '.join(map(repr, missing))}; "
            "create it with `rapport topics` (scripts/stack up does too), or set RAPPORT_TOPIC."
        )


def ensure_schema(settings: Settings) -> None:
    """Create the event store's and the read models' tables if missing (API start-up)."""
    store = interaction_log(settings)
    try:
        projector(settings, store)
    finally:
        store.close()


def interaction_log(settings: Settings) -> InteractionLog:
    check_database(settings)
    with schema_lock(settings):
        return InteractionLog(env=store_env(settings.database), versions_kept=settings.aggregate_cache_size)


def ingest_consumer(settings: Settings, store: InteractionLog | None = None, **consumer_overrides: Any) -> IngestConsumer:
    check_kafka(settings, [settings.topic, settings.dead_letter_topic])
    store = store or interaction_log(settings)
    return IngestConsumer(
        store=store,
        consumer=kafka_consumer(
            settings.kafka_servers, settings.consumer_group, settings.ingest_max_poll_records, **consumer_overrides
        ),
        dead_letters=DeadLetterPublisher(kafka_producer(settings.kafka_servers), settings.dead_letter_topic),
        topic=settings.topic,
        poll_timeout_ms=settings.ingest_poll_timeout_ms,
        max_poll_records=settings.ingest_max_poll_records,
        phone_region=settings.default_phone_region,
    )


class UnknownReadModel(ValueError):
    """A read model name that Rapport does not have; the message lists those it has."""


def read_models(settings: Settings, names: list[str] | None = None, schema: str = LIVE_SCHEMA) -> list[ReadModel]:
    """The read models called `names` (all when None), writing to tables in `schema`."""
    unknown = [n for n in names or [] if n not in READ_MODELS]
    if unknown:
        raise UnknownReadModel(f"no read model {', '.join(map(repr, unknown))}; "
                               f"the read models are: {', '.join(READ_MODELS)}")
    options = ModelSettings(thresholds=settings.thresholds)
    return [READ_MODELS[name](schema, options) for name in names or READ_MODELS]


def projector(settings: Settings, store: InteractionLog | None = None, only: list[str] | None = None,
              schema: str = LIVE_SCHEMA, check_versions: bool = True) -> Projector:
    """A projector of the chosen read models (all by default), their tables created if missing;
    live read models whose tables another version made are left out (see `leave_out_stale`)."""
    store = store or interaction_log(settings)
    result = Projector(store.recorder, store.mapper, ProjectionStore(store.factory.datastore),  # type: ignore[attr-defined]
                       read_models(settings, only, schema), page_size=settings.projection_page_size,
                       catch_up_events=settings.projection_catch_up_events)
    with schema_lock(settings):
        result.create_tables()
    if schema == LIVE_SCHEMA and check_versions:
        result.leave_out_stale()
    return result


def read_pool(settings: Settings, max_size: int = 8, timeout: float = 0.5) -> ConnectionPool:
    """Connections for queries of the read models (autocommit, dict rows).

    Each connection is checked before it is handed out (`check_idle_connection`): a restarted
    PostgreSQL leaves closed ones in the pool, which are replaced, so the API recovers by itself. A
    request waits at most `timeout` seconds for a connection, then the API answers 503 with
    Retry-After (services/http/errors.py) instead of holding it for the pool's default 30 s. A
    connection is normally handed out at once; while the database is away the pool retries
    connecting after 1 s, 2 s, 4 s…, and requests in between are answered 503 promptly."""
    check_database(settings)
    return ConnectionPool(
        conninfo(settings), min_size=1, max_size=max_size, open=True, timeout=timeout,
        check=check_idle_connection,
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
    )


def readable_now(fd: int) -> bool:
    """Whether the socket has something to read (or is closed) at once (poll: any fd number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before handing out an idle connection, without a round trip when it is
    sound: an idle connection has nothing to read, unless the server closed it (a restart or a
    terminated backend: a FATAL message, then end of file) or sent a notice. Then, and when psycopg
    already knows it closed, the library's check (an empty query) decides, and raises if broken."""
    if not conn.closed and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        if not readable_now(conn.fileno()):
            return
    ConnectionPool.check_connection(conn)
