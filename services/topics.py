"""Kafka topics: create them when missing (the local stack script does the same with Kafka's tools)."""

from __future__ import annotations

from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

# The broker takes messages up to 2 MiB (message.max.bytes); a dead letter is such a message
# plus headers (a reason of at most 4,000 characters), so its topic takes twice as much:
# a message that reached the topic can always be dead-lettered.
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024


def admin_client(client: dict[str, Any] | list[str]) -> KafkaAdminClient:
    """An admin client. `client`: `Settings.kafka_client_config` (servers, TLS, SASL), or just a list
    of servers for a plain broker (the local stack's, in tests and benchmarks)."""
    config = {"bootstrap_servers": client} if isinstance(client, list) else client
    return KafkaAdminClient(**config, client_id="rapport-admin")


def ensure_topics(client: dict[str, Any] | list[str], topic: str, dead_letter_topic: str, partitions: int = 6) -> None:
    admin = admin_client(client)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name=topic, num_partitions=partitions, replication_factor=1),
            NewTopic(name=dead_letter_topic, num_partitions=partitions, replication_factor=1,
                     topic_configs={"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another process
        if dead_letter_topic in existing:  # made before the limit was raised: raise it now
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, dead_letter_topic,
                                                configs={"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)})])
    finally:
        admin.close()


def delete_topics(client: dict[str, Any] | list[str], topics: list[str]) -> None:
    admin = admin_client(client)
    try:
        admin.delete_topics(topics)
    finally:
        admin.close()


def ensure_alert_topic(client: dict[str, Any] | list[str], topic: str, partitions: int = 6) -> None:
    """The topic `rapport alerts` publishes to (contract §6), keyed by customer like `interactions`."""
    admin = admin_client(client)
    try:
        if topic not in set(admin.list_topics()):
            try:
                admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another process
    finally:
        admin.close()
