"""Fixtures for integration and e2e tests: the real PostgreSQL and Kafka of `scripts/stack`.

Each test session gets a fresh database; each test gets its own topics, consumer group and
random customer ids, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from kafka.errors import UnknownTopicOrPartitionError

from services.settings import Settings

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from eventstore.store import InteractionLog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack() -> None:
    """PostgreSQL and Kafka, started by the project's own script (quick when already up).
    A missing service fails the test; it never skips, so CI cannot pass without them."""
    result = subprocess.run([str(ROOT / "scripts" / "stack"), "up"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"scripts/stack up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def database_url(stack: None) -> Iterator[str]:
    """A fresh database of this test session's own, beside the demo's; dropped at the end."""
    base = Settings()
    name = f"rapport_test_{os.getpid()}"
    admin = psycopg.conninfo.make_conninfo(**base.database)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    db = base.database
    yield f"postgresql://{db['user']}:{db['password']}@{db['host']}:{db['port']}/{name}"
    from tests.support import drop_database

    drop_database(admin, name)


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings of one test: its own topic, dead-letter topic and consumer group."""
    from services.topics import delete_topics, ensure_topics

    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    topic = f"test-{name}-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url, topic=topic, consumer_group=f"group-{topic}",
        ingest_poll_timeout_ms=200,
    )
    ensure_topics(settings.kafka_servers, settings.topic, settings.dead_letter_topic)
    yield settings
    delete_topics(settings.kafka_servers, [settings.topic, settings.dead_letter_topic])
    try:  # made by `rapport alerts` when a test ran it (under `rapport run`)
        delete_topics(settings.kafka_servers, [settings.alert_topic])
    except UnknownTopicOrPartitionError:
        pass


@pytest.fixture
def store(settings: Settings) -> Iterator[InteractionLog]:
    """The event store of this test's settings."""
    from services.bootstrap import interaction_log

    log = interaction_log(settings)
    yield log
    log.close()


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a `rapport` child process these settings."""
    env = dict(os.environ)
    env.update({
        "RAPPORT_DATABASE_URL": settings.database_url,
        "RAPPORT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "RAPPORT_TOPIC": settings.topic,
        "RAPPORT_CONSUMER_GROUP": settings.consumer_group,
        "RAPPORT_INGEST_POLL_TIMEOUT_MS": str(settings.ingest_poll_timeout_ms),
        "RAPPORT_API_PORT": str(settings.api_port),
        **extra,
    })
    return env


@pytest.fixture
def client(settings: Settings, store: InteractionLog) -> Iterator[TestClient]:
    """The API in-process (FastAPI's TestClient) on this test's settings, after every read model
    has caught up with what earlier tests stored, so that "before" readings are settled."""
    from fastapi.testclient import TestClient

    from services.bootstrap import projector
    from services.http.app import create_app
    from tests.support import api_key

    projector(settings, store).catch_up()
    with TestClient(create_app(settings)) as test_client:
        # Every route but /health needs a key (issue 15): tests act as an admin unless they say otherwise
        # (tests/integration/test_access.py checks each role on each route).
        test_client.headers["Authorization"] = f"Bearer {api_key(settings, 'admin')}"
        yield test_client
