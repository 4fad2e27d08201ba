"""Kafka topics: create them when missing (the local stack script does the same with Kafka's tools)."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def ensure_topics(servers: list[str], topics: list[str], partitions: int = 6) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="rapport-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name=t, num_partitions=partitions, replication_factor=1,
                            topic_configs={"max.message.bytes": "2097152"})
                   for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another process
    finally:
        admin.close()


def delete_topics(servers: list[str], topics: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="rapport-admin")
    try:
        admin.delete_topics(topics)
    finally:
        admin.close()
