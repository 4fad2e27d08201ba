"""The composition root: builds Rapport's parts from `Settings`. Tests build them the same way."""

from __future__ import annotations

import logging
import os
import re
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from consumers.ingest import DeadLetterPublisher, IngestConsumer, kafka_consumer, kafka_producer
from domain.identity import key_fingerprint
from eventstore.identity import check_identity_key
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
        tls = f" (sslmode {db['sslmode']})" if "sslmode" in db else ""
        raise ServiceUnavailable(
            f"cannot use PostgreSQL database {db['dbname']!r} at {db['host']}:{db['port']}{tls} as user "
            f"{db['user']!r}: {str(error).strip()}\n{_database_fix(str(error))}"
        ) from None


def _database_fix(error: str) -> str:
    """What to do about a failed connection, from libpq's message."""
    if "certificate verify failed" in error or "does not match host name" in error or "root certificate" in error:
        return ("Set RAPPORT_DATABASE_SSLROOTCERT to the CA that signed the server's certificate (with sslmode "
                "verify-full the certificate must also name the host of RAPPORT_DATABASE_URL).")
    if "password authentication failed" in error:
        return "Check the user and password: RAPPORT_DATABASE_URL, RAPPORT_DATABASE_PASSWORD (or _FILE)."
    if "SSL" in error or "certificate" in error:
        return "Check RAPPORT_DATABASE_SSLMODE and the certificate files (RAPPORT_DATABASE_SSLCERT, _SSLKEY)."
    return "Start the local stack with `scripts/stack up`, or set RAPPORT_DATABASE_URL."


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
    """Fail fast and clearly when Kafka does not answer, refuses the user or the certificate, or a
    topic is missing."""
    from kafka.admin import KafkaAdminClient

    # kafka-python retries until its timeout and then says only "Unable to bootstrap"; why (a refused
    # password, an unknown CA) is in its log lines, which are kept here, off the log, to explain it.
    # One check at a time changes the logger (API request threads), so that each restores it as it was.
    kafka_log = logging.getLogger("kafka")
    lines = _KeptLines()
    with _KAFKA_CHECK:
        level, propagate = kafka_log.level, kafka_log.propagate
        kafka_log.setLevel(logging.WARNING)
        kafka_log.propagate = False
        kafka_log.addHandler(lines)
        try:
            admin = KafkaAdminClient(**settings.kafka_client_config, client_id="rapport-check",
                                     request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        except Exception as error:  # noqa: BLE001 - kafka-python raises several kinds
            raise ServiceUnavailable(f"cannot reach Kafka at {settings.kafka_description}: "
                                     f"{_kafka_failure(error, lines.messages, settings.kafka_security_protocol)}") from None
        finally:
            kafka_log.removeHandler(lines)
            kafka_log.setLevel(level)
            kafka_log.propagate = propagate
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


_KAFKA_CHECK = threading.Lock()


class _KeptLines(logging.Handler):
    """kafka-python's warnings while one check runs (they name no secret)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 200:
            self.messages.append(record.getMessage())


_SASL_FIX = "check RAPPORT_KAFKA_SASL_USERNAME, RAPPORT_KAFKA_SASL_PASSWORD (or _FILE) and RAPPORT_KAFKA_SASL_MECHANISM"
# What kafka-python's log lines say when it could not connect, and what to do about it.
_KAFKA_FAILURES = [
    (re.compile(r"SaslAuthenticationFailed|Authentication failed", re.I), _SASL_FIX + "."),
    (re.compile(r"UnsupportedSaslMechanism", re.I), "set RAPPORT_KAFKA_SASL_MECHANISM to one the broker's listener enables."),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", re.I),
     "set RAPPORT_KAFKA_SSL_CAFILE to the CA that signed the brokers' certificates (and check that they name the "
     "host in RAPPORT_KAFKA_BOOTSTRAP)."),
    (re.compile(r"Handshake failed|\[SSL", re.I),
     "check RAPPORT_KAFKA_SECURITY_PROTOCOL: the listener at RAPPORT_KAFKA_BOOTSTRAP must speak it."),
    (re.compile(r"ECONNREFUSED|Connection refused", re.I),
     "start the local stack with `scripts/stack up`, or set RAPPORT_KAFKA_BOOTSTRAP to where the brokers listen."),
]


def _kafka_failure(error: Exception, messages: list[str], protocol: str) -> str:
    """Why kafka-python could not connect, from its log lines when they say, and the fix."""
    for pattern, fix in _KAFKA_FAILURES:
        for message in reversed(messages):
            if pattern.search(message):
                reason = re.sub(r"\s*\(backoff [^)]*\)$", "", message.split("failed: ", 1)[-1]).strip()
                return f"{reason}\nTo fix it, {fix}"
    if protocol.startswith("SASL_") and any("socket disconnected" in message for message in messages):
        # A broker that refuses the user answers and closes at once; kafka-python often reports only the
        # closed socket (it drops an answer that arrives with the close).
        return ("the broker closed each connection while it was being set up, as it does when it refuses the user "
                f"or password, or when the listener speaks another protocol\nTo fix it, {_SASL_FIX}, and that the "
                "listener at RAPPORT_KAFKA_BOOTSTRAP speaks RAPPORT_KAFKA_SECURITY_PROTOCOL.")
    return (f"{error}\nStart the local stack with `scripts/stack up`, or set RAPPORT_KAFKA_BOOTSTRAP "
            "(and RAPPORT_KAFKA_SECURITY_PROTOCOL for its listener).")


def ensure_schema(settings: Settings) -> None:
    """Create the event store's, the read models' and the access tables if missing (API start-up)."""
    store = interaction_log(settings)
    try:
        projector(settings, store)
    finally:
        store.close()
    ensure_access_tables(settings)
    ensure_value_tables(settings)


def ensure_value_tables(settings: Settings) -> None:
    """The value models' and the customers' scores' tables (services.value), if missing."""
    from services import value

    with schema_lock(settings), psycopg.connect(conninfo(settings), autocommit=True) as conn:
        value.create_tables(conn)


def ensure_access_tables(settings: Settings) -> None:
    """The API keys' and the access log's tables (services.access), if missing."""
    from services import access

    with schema_lock(settings), psycopg.connect(conninfo(settings), autocommit=True) as conn:
        access.create_tables(conn)


def interaction_log(settings: Settings) -> InteractionLog:
    check_database(settings)
    with schema_lock(settings):
        store = InteractionLog(env=event_store_env(settings), versions_kept=settings.aggregate_cache_size)
    # Every process that writes or reads identities uses the key the database's were hashed under.
    with store.interactions.datastore.get_connection() as conn:
        check_identity_key(conn, key_fingerprint(settings.matching_key()))
    return store


# libpq variables this process set for the event store (event_store_env), and their values.
_exported_libpq: dict[str, str] = {}


def event_store_env(settings: Settings) -> dict[str, str]:
    """The event store's eventsourcing environment (`store_env`) for these settings.

    eventsourcing's PostgresDatastore passes only dbname, host, port, user and password to psycopg;
    it has no TLS setting (eventsourcing 9.5.6). Its connections get TLS the way libpq supports for
    any connection: from the environment variables PGSSLMODE, PGSSLROOTCERT, PGSSLCERT and PGSSLKEY,
    set here for this process. Our own connections (`conninfo`) name the same values explicitly.
    Variables set for earlier settings without TLS are removed again (tests use both in one process)."""
    wanted = settings.libpq_tls_environment
    for key, value in _exported_libpq.items():
        if key not in wanted and os.environ.get(key) == value:
            del os.environ[key]
    os.environ.update(wanted)
    _exported_libpq.clear()
    _exported_libpq.update(wanted)
    return store_env(settings.database)


def ingest_consumer(settings: Settings, store: InteractionLog | None = None, **consumer_overrides: Any) -> IngestConsumer:
    check_kafka(settings, [settings.topic, settings.dead_letter_topic])
    store = store or interaction_log(settings)
    return IngestConsumer(
        store=store,
        consumer=kafka_consumer(
            settings.kafka_client_config, settings.consumer_group, settings.ingest_max_poll_records, **consumer_overrides
        ),
        dead_letters=DeadLetterPublisher(kafka_producer(settings.kafka_client_config), settings.dead_letter_topic),
        topic=settings.topic,
        poll_timeout_ms=settings.ingest_poll_timeout_ms,
        max_poll_records=settings.ingest_max_poll_records,
        phone_region=settings.default_phone_region,
        identity_key=settings.matching_key(),
    )


class UnknownReadModel(ValueError):
    """A read model name that Rapport does not have; the message lists those it has."""


def read_models(settings: Settings, names: list[str] | None = None, schema: str = LIVE_SCHEMA) -> list[ReadModel]:
    """The read models called `names` (all when None), writing to tables in `schema`."""
    unknown = [n for n in names or [] if n not in READ_MODELS]
    if unknown:
        raise UnknownReadModel(f"no read model {', '.join(map(repr, unknown))}; "
                               f"the read models are: {', '.join(READ_MODELS)}")
    options = ModelSettings(thresholds=settings.thresholds, alert_max_age=settings.alert_max_age)
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
