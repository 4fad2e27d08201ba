"""Rapport's settings: read from the environment here, once; code receives them as arguments."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.lifecycle import LifecycleThresholds


class Settings(BaseSettings):
    """Every setting is an environment variable `RAPPORT_<NAME>`; the README has the table."""

    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        "postgresql://rapport:rapport@127.0.0.1:5432/rapport",
        description="PostgreSQL holding the event store and the read models.",
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    topic: str = Field("interactions", description="Topic the interaction events are read from.")
    dlq_topic: str = Field("", description="Dead-letter topic; default: <topic>.dlq.")
    consumer_group: str = Field("rapport-ingest", description="Kafka consumer group of the ingest processes.")
    ingest_max_poll_records: int = Field(5000, ge=1, description="Messages per poll = per event-store transaction.")
    ingest_poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for messages.")
    ingest_processes: int = Field(
        1, ge=1, le=64, description="`rapport ingest` processes that `rapport run` and `rapport demo` start "
                                    "(one consumer group: each takes a share of the partitions)."
    )
    aggregate_cache_size: int = Field(
        200_000, ge=0, description="Customers whose stream version ingest keeps in memory (0: none)."
    )
    default_phone_region: str = Field(
        "US", description="Identity matching: the region (ISO 3166 code, e.g. LK, GB) of phone numbers written "
                          "without a country code; numbers in international form (+94...) need none.")
    projection_page_size: int = Field(2000, ge=1, description="Events the projector applies per transaction.")
    projection_catch_up_events: int = Field(
        50_000, ge=0, description="Far behind the head (a catch-up, a rebuild), events the projector applies per "
                                  "transaction, pages merged; memory grows with it. 0: page by page."
    )
    at_risk_days: int = Field(180, ge=1, description="Lifecycle: days since the last purchase before 'at_risk'.")
    churn_days: int = Field(365, ge=1, description="Lifecycle: days since the last interaction before 'churned'.")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP API.")
    api_workers: int = Field(2, ge=1, le=64, description="Processes serving the HTTP API (each with its own "
                                                         "connection pool); about one per CPU core.")
    api_pool_size: int = Field(8, ge=1, le=100, description="PostgreSQL connections of each API process.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError("the port is not a number 1–65535") from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
            raise ValueError("not a PostgreSQL URL; use postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
        return value

    @field_validator("topic", "dlq_topic")
    @classmethod
    def _topic_name(cls, value: str, info: Any) -> str:
        if value == "" and info.field_name == "dlq_topic":
            return value  # default: <topic>.dlq
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
            raise ValueError(f"{value!r} is not a Kafka topic name: 1–249 of letters, digits, '.', '_', '-'")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers or not all(re.fullmatch(r"[^:\s]+:\d{1,5}", s) for s in servers):
            raise ValueError("use HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:9092")
        return value

    @model_validator(mode="after")
    def _topics_differ(self) -> Settings:
        if self.dead_letter_topic == self.topic:
            raise ValueError("RAPPORT_DLQ_TOPIC must differ from RAPPORT_TOPIC (dead letters would be read again)")
        return self

    @field_validator("default_phone_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows; use an ISO 3166 code such as US, GB, LK")
        return region

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in levels:
            raise ValueError(f"{value!r} is not a logging level; use one of {', '.join(levels)}")
        return value.upper()

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def thresholds(self) -> LifecycleThresholds:
        return LifecycleThresholds(at_risk_days=self.at_risk_days, churn_days=self.churn_days)

    @property
    def database(self) -> dict[str, str]:
        """The URL's parts: dbname, host, port, user, password."""
        parts = urlsplit(self.database_url)
        return {
            "dbname": parts.path.strip("/"),
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or 5432),
            "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""),
        }

    @property
    def kafka_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]


def describe_settings_errors(error: Exception) -> str:
    """pydantic's error as lines `RAPPORT_NAME: what is wrong`, without the values (secrets)."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    return "\n".join(
        f"  {'RAPPORT_' + '_'.join(str(p) for p in e['loc']).upper() if e['loc'] else 'settings'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in error.errors(include_url=False)
    )


def settings_help() -> str:
    """The settings table for `--help`, from the field descriptions."""
    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  RAPPORT_{name.upper():<28} {field.description} [default: {field.default!r}]")
    return "\n".join(lines)
