"""Production connections against the real stack: PostgreSQL over TLS checked against the local CA
(sslmode=verify-full), Kafka's SASL_SSL listener with a SCRAM-SHA-512 user (scripts/stack makes both),
every client built from Settings; a wrong password or CA fails with a message that says so."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from consumers.ingest import kafka_producer
from eventstore.store import InteractionLog
from services.bootstrap import (
    ServiceUnavailable,
    check_database,
    check_kafka,
    conninfo,
    event_store_env,
    ingest_consumer,
    interaction_log,
    read_pool,
)
from services.settings import Settings
from services.topics import delete_topics, ensure_topics
from tests.support import drain, envelope, new_customer_id, publish, stored_event_ids

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("RAPPORT_STATE_DIR") or ROOT / ".rapport")
CA = STATE_DIR / "tls" / "ca.crt"  # signed the broker's certificate
POSTGRES_CA = STATE_DIR / "tls" / "postgres-ca.crt"  # signed PostgreSQL's (scripts/stack: the cluster may be shared)
SASL_PASSWORD_FILE = STATE_DIR / "kafka" / "sasl-password"
CALL = {"direction": "inbound", "duration_seconds": 60}
SSL_QUERY = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def secure_port(settings: Settings) -> int:
    """scripts/stack puts the SASL_SSL listener on the bootstrap port + 2."""
    return int(settings.kafka_servers[0].rsplit(":", 1)[1]) + 2


def secure_values(settings: Settings, **overrides: object) -> dict[str, object]:
    """The settings of production connections to the local stack, as the environment would give them."""
    values: dict[str, object] = {
        "database_url": settings.database_url, "topic": settings.topic, "consumer_group": settings.consumer_group,
        "ingest_poll_timeout_ms": settings.ingest_poll_timeout_ms,
        "database_sslmode": "verify-full", "database_sslrootcert": str(POSTGRES_CA),
        "kafka_bootstrap": f"127.0.0.1:{secure_port(settings)}", "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "rapport",
        "kafka_sasl_password_file": str(SASL_PASSWORD_FILE), "kafka_ssl_cafile": str(CA),
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture
def secure(settings: Settings) -> Iterator[Settings]:
    """This test's settings (its database, topics and group) over TLS and SASL_SSL. libpq's TLS
    variables the event store exported for them are restored afterwards, for the tests that follow."""
    saved = {key: os.environ.get(key) for key in ("PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY")}
    yield Settings(**secure_values(settings))
    event_store_env(settings)  # removes what the secure settings exported
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA that signed nothing of the stack's."""
    key, cert = tmp_path / "other-ca.key", tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=Some other CA", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert


def test_ingest_stores_events_read_over_sasl_ssl_into_postgres_over_verified_tls(
        settings: Settings, secure: Settings) -> None:
    customer = new_customer_id()
    events = [envelope(customer, "call", f"2026-01-0{i}T10:00:00Z", CALL) for i in range(1, 4)]
    publish(secure, events)  # kafka_producer(secure.kafka_client_config)
    store = interaction_log(secure)
    try:
        consumer = ingest_consumer(secure, store)
        assert consumer.consumer.config["security_protocol"] == "SASL_SSL"
        drain(consumer, settings)  # the end offsets read on the plain listener; ingest reads over SASL_SSL

        assert sorted(stored_event_ids(store, [customer])) == sorted(e["event_id"] for e in events)
        with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            assert conn.execute(SSL_QUERY).fetchone()["ssl"] is True  # eventsourcing's pool: libpq's environment
    finally:
        store.close()


def test_the_apis_pools_and_health_check_use_tls_and_sasl_ssl(secure: Settings) -> None:
    from fastapi.testclient import TestClient

    from services.http.app import create_app

    with TestClient(create_app(secure)) as client:
        answer = client.get("/health")
        resources = client.app.state.resources  # type: ignore[attr-defined]
        with resources.pool.connection() as conn:
            sync_ssl = conn.execute(SSL_QUERY).fetchone()["ssl"]
        conn_info = resources.async_pool.conninfo

    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"] == {"postgresql": "ok", "kafka": "ok"}
    assert sync_ssl is True
    assert "sslmode=verify-full" in conn_info and f"sslrootcert={POSTGRES_CA}" in conn_info


def test_a_read_pool_connection_is_encrypted_and_checked_against_the_ca(secure: Settings) -> None:
    pool = read_pool(secure, max_size=1)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    finally:
        pool.close()

    assert row["ssl"] is True and row["version"].startswith("TLS")


def test_a_client_certificate_of_the_local_ca_is_accepted(settings: Settings) -> None:
    client = Settings(**secure_values(settings, database_sslcert=str(STATE_DIR / "tls" / "client.crt"),
                                      database_sslkey=str(STATE_DIR / "tls" / "client.key"),
                                      kafka_ssl_certfile=str(STATE_DIR / "tls" / "client.crt"),
                                      kafka_ssl_keyfile=str(STATE_DIR / "tls" / "client.key")))

    with psycopg.connect(conninfo(client)) as conn:
        row = conn.execute("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    check_kafka(client)  # the listener checks a client certificate that is presented

    assert row == (True, "/CN=rapport")


def test_a_message_round_trips_through_producer_consumer_and_admin_built_from_settings(
        secure: Settings, caplog: pytest.LogCaptureFixture) -> None:
    topic = f"test-secure-{uuid.uuid4().hex[:8]}"
    password = SASL_PASSWORD_FILE.read_text().strip()
    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        ensure_topics(secure.kafka_client_config, topic, f"{topic}.dlq", partitions=1)
    try:
        producer = kafka_producer(secure.kafka_client_config)
        producer.send(topic, key=b"k", value=b"over SASL_SSL").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(**secure.kafka_client_config, enable_auto_commit=False, consumer_timeout_ms=5000)
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            values = [record.value for record in consumer]
        finally:
            consumer.close()
    finally:
        delete_topics(secure.kafka_client_config, [topic, f"{topic}.dlq"])

    assert values == [b"over SASL_SSL"]
    assert "Starting KafkaAdminClient with configuration" in caplog.text  # kafka-python logged its configuration ...
    assert password not in caplog.text  # ... with the password masked


def test_a_wrong_sasl_password_is_reported_as_refused_credentials(settings: Settings) -> None:
    wrong = Settings(**secure_values(settings, kafka_sasl_password_file=None, kafka_sasl_password="not-the-password"))

    with pytest.raises(ServiceUnavailable) as caught:
        check_kafka(wrong)

    message = str(caught.value)
    assert "127.0.0.1:" in message and "(SASL_SSL, user 'rapport', SCRAM-SHA-512)" in message
    # kafka-python logs the broker's answer, or, when the close came with it, only the closed socket
    assert "invalid credentials" in message or "refuses the user or password" in message
    assert "RAPPORT_KAFKA_SASL_PASSWORD" in message
    assert "not-the-password" not in message


def test_a_broker_certificate_from_another_ca_is_reported_as_such(settings: Settings, other_ca: Path) -> None:
    wrong = Settings(**secure_values(settings, kafka_ssl_cafile=str(other_ca)))

    with pytest.raises(ServiceUnavailable) as caught:
        check_kafka(wrong)

    assert "certificate verify failed" in str(caught.value)
    assert "RAPPORT_KAFKA_SSL_CAFILE" in str(caught.value)


def test_a_database_certificate_from_another_ca_is_reported_as_such(settings: Settings, other_ca: Path) -> None:
    wrong = Settings(**secure_values(settings, database_sslrootcert=str(other_ca)))

    with pytest.raises(ServiceUnavailable) as caught:
        check_database(wrong)

    assert "certificate verify failed" in str(caught.value)
    assert "(sslmode verify-full)" in str(caught.value)
    assert "RAPPORT_DATABASE_SSLROOTCERT" in str(caught.value)


def test_rapport_reads_secure_settings_and_secret_files_from_its_environment(settings: Settings) -> None:
    """`rapport topics` as a deployment runs it: every setting from the environment, the password from a file."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAPPORT_")}
    env.update({f"RAPPORT_{name.upper()}": str(value) for name, value in secure_values(settings).items()})

    result = subprocess.run([sys.executable, "-m", "services.cli", "topics"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert f"topics ready: {settings.topic}" in result.stdout
    assert SASL_PASSWORD_FILE.read_text().strip() not in result.stdout + result.stderr


def test_the_event_store_of_plain_settings_after_secure_ones_connects_as_before(settings: Settings,
                                                                               secure: Settings) -> None:
    interaction_log(secure).close()
    store: InteractionLog = interaction_log(settings)
    try:
        assert os.environ.get("PGSSLROOTCERT") != str(POSTGRES_CA)
        with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        store.close()
