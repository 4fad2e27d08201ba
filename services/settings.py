"""Rapport's settings: read from the environment here, once; code receives them as arguments."""

from __future__ import annotations

import functools
import os
import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import Field, PlainValidator, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.lifecycle import LifecycleThresholds


class SecretFile:
    """A file holding one secret, named by `RAPPORT_<NAME>_FILE` (as secret stores mount them): its
    path, and its content without the trailing newline as a SecretStr (never shown)."""

    __slots__ = ("path", "secret")

    def __init__(self, path: Path, secret: SecretStr) -> None:
        self.path = path
        self.secret = secret

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"


def read_secret_file(value: Any) -> SecretFile:
    """The secret in the file at `value`; the errors name the path and the fix, never the content."""
    if isinstance(value, SecretFile):
        return value
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError("give the path of a file that holds the secret")
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} does not exist; give the path of the file that holds the secret") from None
    except PermissionError:
        raise ValueError(f"{str(path)!r} cannot be read (permission denied); let the user running Rapport read it") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text") from None
    except OSError as error:
        raise ValueError(f"{str(path)!r} cannot be read ({error.strerror or type(error).__name__})") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"{str(path)!r} is empty; write the secret into it")
    return SecretFile(path, SecretStr(secret))


def check_postgres_url(value: str) -> str:
    """`value` if it is a PostgreSQL URL Rapport can use; the error never repeats it (a password)."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise ValueError("the port is not a number 1–65535") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
        raise ValueError("not a PostgreSQL URL; use postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
    ignored_tls = sorted({key for key, _ in parse_qsl(parts.query)} & set(LIBPQ_TLS))
    if ignored_tls:
        # The URL's query is not read: TLS asked for there would silently not happen.
        raise ValueError(f"TLS is not read from the URL ({', '.join(ignored_tls)}); remove it from the URL and set "
                         + ", ".join(f"RAPPORT_DATABASE_{key.upper()}" for key in ignored_tls) + " instead")
    return value


def read_database_url_file(value: Any) -> SecretFile:
    source = read_secret_file(value)
    try:
        check_postgres_url(source.secret.get_secret_value())
    except ValueError as error:
        raise ValueError(f"the URL in {str(source.path)!r}: {error}") from None
    return source


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{parts.username}:***@{netloc[2]}").geturl()


class MaskedStr(str):
    """A secret handed to a library as a plain str (kafka-python needs one) whose repr is masked:
    kafka-python logs its admin client's whole configuration at DEBUG, and a dict of the
    configuration shows its values by repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


SecretFilePath = Annotated[SecretFile, PlainValidator(read_secret_file)]
DatabaseUrlFile = Annotated[SecretFile, PlainValidator(read_database_url_file)]

# libpq's TLS parameters that Rapport passes on (RAPPORT_DATABASE_<NAME>), with the environment
# variable libpq reads for each (the event store's connections get them that way: bootstrap).
LIBPQ_TLS = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"}
# Secrets that may come from a file: RAPPORT_<NAME>_FILE.
SECRET_FILE_SETTINGS = ("database_url", "database_password", "kafka_sasl_password", "kafka_ssl_key_password",
                        "identity_key")
# Where the identity key is kept when RAPPORT_IDENTITY_KEY(_FILE) is not set: beside the local stack's state.
DEFAULT_IDENTITY_KEY_FILE = Path(__file__).resolve().parents[1] / ".rapport" / "identity.key"
# What each TLS file is, for the error when it cannot be read.
TLS_FILES = {
    "database_sslrootcert": "the CA certificate (PEM) that signed the PostgreSQL server's certificate",
    "database_sslcert": "the client certificate (PEM) for PostgreSQL",
    "database_sslkey": "the client certificate's private key (PEM) for PostgreSQL",
    "kafka_ssl_cafile": "the CA certificate (PEM) that signed the Kafka brokers' certificates",
    "kafka_ssl_certfile": "the client certificate (PEM) for Kafka",
    "kafka_ssl_keyfile": "the client certificate's private key (PEM) for Kafka",
}


class Settings(BaseSettings):
    """Every setting is an environment variable `RAPPORT_<NAME>`; the README has the table."""

    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore", hide_input_in_errors=True)

    # A str, not a SecretStr: many callers use it as the URL it is. repr=False keeps a password in it
    # out of repr(settings); --help and logs show it through `redact_url`.
    database_url: str = Field(
        "postgresql://rapport:rapport@127.0.0.1:5432/rapport", repr=False,
        description="PostgreSQL holding the event store and the read models (the password may be left out: "
                    "RAPPORT_DATABASE_PASSWORD).",
    )
    database_url_file: DatabaseUrlFile | None = Field(
        None, description="A file holding RAPPORT_DATABASE_URL instead (trailing newline ignored).")
    database_password: SecretStr | None = Field(
        None, description="Password of the database user, when RAPPORT_DATABASE_URL holds none.")
    database_password_file: SecretFilePath | None = Field(
        None, description="A file holding RAPPORT_DATABASE_PASSWORD instead (trailing newline ignored).")
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None, description="TLS to PostgreSQL (libpq sslmode): verify-full checks the server's certificate against "
                          "RAPPORT_DATABASE_SSLROOTCERT and its name; require encrypts without checking. "
                          "Unset: libpq's default (prefer, or PGSSLMODE).")
    database_sslrootcert: str | None = Field(
        None, description="CA certificate file (PEM) to check the server's certificate against "
                          "(libpq sslrootcert; 'system': the system's CAs).")
    database_sslcert: Path | None = Field(None, description="Client certificate file (PEM) for PostgreSQL (libpq sslcert).")
    database_sslkey: Path | None = Field(
        None, description="The client certificate's private key (PEM, unencrypted, mode 0600; libpq sslkey).")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to Kafka: PLAINTEXT, SSL (TLS), SASL_SSL (TLS and a user), "
                                 "SASL_PLAINTEXT (a user, unencrypted).")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism of the Kafka user (with SASL_SSL or SASL_PLAINTEXT).")
    kafka_sasl_username: str | None = Field(None, description="Kafka user (SASL).")
    kafka_sasl_password: SecretStr | None = Field(None, description="The Kafka user's password (SASL).")
    kafka_sasl_password_file: SecretFilePath | None = Field(
        None, description="A file holding RAPPORT_KAFKA_SASL_PASSWORD instead (trailing newline ignored).")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA certificate file (PEM) to check the brokers' certificates against (SSL, SASL_SSL); "
                          "unset: the system's CAs.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate file (PEM) for Kafka (SSL, SASL_SSL).")
    kafka_ssl_keyfile: Path | None = Field(None, description="The Kafka client certificate's private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Passphrase of RAPPORT_KAFKA_SSL_KEYFILE, if it is encrypted.")
    kafka_ssl_key_password_file: SecretFilePath | None = Field(
        None, description="A file holding RAPPORT_KAFKA_SSL_KEY_PASSWORD instead (trailing newline ignored).")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to (SSL, SASL_SSL).")
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
    identity_key: SecretStr | None = Field(
        None, description="Secret (at least 32 characters) under which emails and phones are kept as keyed hashes for "
                          "identity matching (HMAC-SHA256). Every process of one database needs the same; losing it "
                          "splits every customer from its future events. Unset: RAPPORT_IDENTITY_KEY_FILE.")
    identity_key_file: SecretFilePath | None = Field(
        None, description="A file holding RAPPORT_IDENTITY_KEY instead. Neither set: <repo>/.rapport/identity.key, made "
                          "(random, mode 0600) when missing: right for the local stack, not for production.")
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
    alerts_topic: str = Field("", description="Topic `rapport alerts` publishes alerts to; default: <topic>.alerts.")
    alert_max_age_days: int = Field(
        30, ge=1, description="Alerts: a change older than this when Rapport learns of it (a replay of history, a first "
                              "deployment, a late event) raises no alert.")
    alert_raise_interval_seconds: float = Field(
        5.0, gt=0, description="Alerts: how often `rapport alerts` looks for stage changes by the passing of time.")
    value_currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="Segments: the currency whose purchases "
                                "rank customers by RFM (ISO 4217).")
    value_discount_rate: float = Field(0.10, ge=0, le=1, description="Customer value: the annual rate future "
                                       "purchases are discounted at in clv_12m (compounded monthly).")
    value_refresh_seconds: int = Field(300, ge=5, description="Customer value: seconds between refreshes of the "
                                       "customers' segments and predictions by `rapport value refresh --every` "
                                       "(started by `rapport run`).")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP API.")
    api_workers: int = Field(2, ge=1, le=64, description="Processes serving the HTTP API (each with its own "
                                                         "connection pool); about one per CPU core.")
    api_pool_size: int = Field(8, ge=1, le=100, description="PostgreSQL connections of each API process.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        return check_postgres_url(value)

    @field_validator("database_sslmode", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(*TLS_FILES)
    @classmethod
    def _readable_tls_file(cls, value: Any, info: Any) -> Any:
        if value is None or (info.field_name == "database_sslrootcert" and value == "system"):
            return value
        path = Path(value)
        what = TLS_FILES[info.field_name]
        try:
            with path.open("rb") as file:
                file.read(1)
        except FileNotFoundError:
            raise ValueError(f"{str(path)!r} does not exist; give the path of {what}") from None
        except PermissionError:
            raise ValueError(f"{str(path)!r} cannot be read (permission denied); let the user running Rapport "
                             f"read {what}") from None
        except OSError as error:
            raise ValueError(f"{str(path)!r} cannot be read ({error.strerror or type(error).__name__}); "
                             f"give the path of {what}") from None
        if info.field_name == "database_sslkey":
            _check_libpq_key_mode(path)
        return value

    @field_validator("topic", "dlq_topic", "alerts_topic")
    @classmethod
    def _topic_name(cls, value: str, info: Any) -> str:
        if value == "" and info.field_name in ("dlq_topic", "alerts_topic"):
            return value  # default: <topic>.dlq, <topic>.alerts
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
    def _connections(self) -> Settings:
        """Secrets from their files, then the rules between the connection settings."""
        problems = self._secrets_from_files()
        problems += _database_problems(self)
        problems += _kafka_problems(self)
        if problems:
            raise ValueError("\n".join(problems))  # one line each (describe_settings_errors)
        return self

    def _secrets_from_files(self) -> list[str]:
        problems = []
        for name in SECRET_FILE_SETTINGS:
            source: SecretFile | None = getattr(self, f"{name}_file")
            if source is None:
                continue
            if name in self.model_fields_set:
                problems.append(f"RAPPORT_{name.upper()} and RAPPORT_{name.upper()}_FILE are both set; "
                                "set only one (the file keeps the secret out of the environment)")
                continue
            # The URL stays a str (see database_url); the other secrets are SecretStr.
            setattr(self, name, source.secret.get_secret_value() if name == "database_url" else source.secret)
        return problems

    @model_validator(mode="after")
    def _topics_differ(self) -> Settings:
        if self.dead_letter_topic == self.topic:
            raise ValueError("RAPPORT_DLQ_TOPIC must differ from RAPPORT_TOPIC (dead letters would be read again)")
        if self.alert_topic in (self.topic, self.dead_letter_topic):
            raise ValueError("RAPPORT_ALERTS_TOPIC must differ from RAPPORT_TOPIC and RAPPORT_DLQ_TOPIC")
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

    @field_validator("identity_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("is too short: use at least 32 random characters, e.g. `openssl rand -hex 32`")
        return value

    def matching_key(self) -> bytes:
        """The identity key's bytes (made and kept in DEFAULT_IDENTITY_KEY_FILE when none is set)."""
        if self.identity_key is not None:
            return self.identity_key.get_secret_value().encode()
        return default_identity_key()

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def alert_topic(self) -> str:
        return self.alerts_topic or f"{self.topic}.alerts"

    @property
    def alert_max_age(self) -> timedelta:
        return timedelta(days=self.alert_max_age_days)

    @property
    def thresholds(self) -> LifecycleThresholds:
        return LifecycleThresholds(at_risk_days=self.at_risk_days, churn_days=self.churn_days)

    @property
    def database(self) -> dict[str, str]:
        """psycopg's connection parameters, the one place they are made: the URL's dbname, host, port,
        user and password (RAPPORT_DATABASE_PASSWORD's, if set), and the TLS parameters that are set
        (sslmode, sslrootcert, sslcert, sslkey)."""
        parts = urlsplit(self.database_url)
        password = self.database_password.get_secret_value() if self.database_password else unquote(parts.password or "")
        return {
            "dbname": parts.path.strip("/"),
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or 5432),
            "user": unquote(parts.username or ""),
            "password": password,
            **self.database_tls,
        }

    @property
    def database_tls(self) -> dict[str, str]:
        """libpq's TLS parameters that are set: sslmode, sslrootcert, sslcert, sslkey."""
        values = {key: getattr(self, f"database_{key}") for key in LIBPQ_TLS}
        return {key: str(value) for key, value in values.items() if value is not None}

    @property
    def libpq_tls_environment(self) -> dict[str, str]:
        """The same TLS parameters as libpq's environment variables (PGSSLMODE, ...), for connections
        made by a library that passes none of them (eventsourcing's: services.bootstrap)."""
        return {LIBPQ_TLS[key]: value for key, value in self.database_tls.items()}

    @property
    def psql_url(self) -> str:
        """The database as a URL for psql, without the password (psql asks, or reads PGPASSWORD) and with
        the TLS parameters."""
        db = self.database
        user = quote(db["user"], safe="") + "@" if db["user"] else ""
        query = urlencode(self.database_tls)
        return f"postgresql://{user}{db['host']}:{db['port']}/{quote(db['dbname'], safe='')}" + (f"?{query}" if query else "")

    @property
    def kafka_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]

    @property
    def kafka_client_config(self) -> dict[str, Any]:
        """kafka-python's keyword arguments for any client (consumer, producer, admin), the one place they
        are made: the bootstrap servers and the security settings. Secrets are `MaskedStr`."""
        config: dict[str, Any] = {"bootstrap_servers": self.kafka_servers,
                                  "security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            config.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=_masked(self.kafka_sasl_password))
        if self.kafka_security_protocol.endswith("SSL"):
            config.update(ssl_check_hostname=self.kafka_ssl_check_hostname)
            files = {"ssl_cafile": self.kafka_ssl_cafile, "ssl_certfile": self.kafka_ssl_certfile,
                     "ssl_keyfile": self.kafka_ssl_keyfile}
            config.update({key: str(path) for key, path in files.items() if path is not None})
            if self.kafka_ssl_key_password is not None:
                config["ssl_password"] = _masked(self.kafka_ssl_key_password)
        return config

    @property
    def kafka_description(self) -> str:
        """Where and how clients reach Kafka, for messages: the servers and the security protocol (and the user)."""
        how = self.kafka_security_protocol
        if self.kafka_sasl_username:
            how += f", user {self.kafka_sasl_username!r}, {self.kafka_sasl_mechanism}"
        return f"{self.kafka_bootstrap} ({how})"


@functools.lru_cache(maxsize=1)  # read once per process: every caller needs the same key
def default_identity_key() -> bytes:
    """The local stack's identity key: read from DEFAULT_IDENTITY_KEY_FILE, made there when missing
    (by one process: the file is created exclusively, and the others read it)."""
    import os
    import secrets

    path = DEFAULT_IDENTITY_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    for _ in range(50):  # another process may be writing it this instant
        text = path.read_text().strip()
        if len(text) >= 32:
            return text.encode()
        import time

        time.sleep(0.02)
    raise RuntimeError(f"{path} holds no identity key (at least 32 characters); delete it, or set RAPPORT_IDENTITY_KEY_FILE")


def _masked(secret: SecretStr | None) -> MaskedStr | None:
    return None if secret is None else MaskedStr(secret.get_secret_value())


def _check_libpq_key_mode(path: Path) -> None:
    """libpq refuses a private key that others may read: say so now, naming the file and the fix."""
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{str(path)!r} may be read by group or others, and libpq refuses such a key; chmod 600 it")
    if info.st_uid == 0 and info.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        raise ValueError(f"{str(path)!r} is root's and may be read by others, and libpq refuses such a key; chmod 640 it")


def _database_problems(settings: Settings) -> list[str]:
    problems = []
    url_set = "database_url" in settings.model_fields_set or settings.database_url_file is not None
    if settings.database_password is not None and url_set and urlsplit(settings.database_url).password is not None:
        problems.append("RAPPORT_DATABASE_URL holds a password and RAPPORT_DATABASE_PASSWORD is set; remove the "
                        "password from the URL (postgresql://USER@HOST:PORT/DBNAME)")
    if settings.database_sslrootcert is not None and settings.database_sslmode is None:
        # libpq's default, prefer, would not check the certificate against the CA given.
        problems.append("RAPPORT_DATABASE_SSLROOTCERT is set but RAPPORT_DATABASE_SSLMODE is not; set it to "
                        "verify-full (or verify-ca) so that the server's certificate is checked against the CA")
    if (settings.database_sslcert is None) != (settings.database_sslkey is None):
        problems.append("RAPPORT_DATABASE_SSLCERT and RAPPORT_DATABASE_SSLKEY go together; set both or neither")
    return problems


def _are_set(names: list[str]) -> str:
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} set"


def _kafka_problems(settings: Settings) -> list[str]:
    problems = []
    protocol = settings.kafka_security_protocol
    sasl = {"RAPPORT_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
            "RAPPORT_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
            "RAPPORT_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password}
    ssl = {"RAPPORT_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
           "RAPPORT_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
           "RAPPORT_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
           "RAPPORT_KAFKA_SSL_KEY_PASSWORD": settings.kafka_ssl_key_password}
    if protocol.startswith("SASL_"):
        missing = [name for name, value in sasl.items() if not value]
        if missing:
            problems.append(f"RAPPORT_KAFKA_SECURITY_PROTOCOL is {protocol}, which needs {', '.join(missing)} "
                            "(mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
    elif given := [name for name, value in sasl.items() if value is not None]:
        problems.append(f"{_are_set(given)}, but RAPPORT_KAFKA_SECURITY_PROTOCOL is {protocol}, which uses no SASL; "
                        "set it to SASL_SSL (or SASL_PLAINTEXT), or unset them")
    if not protocol.endswith("SSL") and (given := [name for name, value in ssl.items() if value is not None]):
        problems.append(f"{_are_set(given)}, but RAPPORT_KAFKA_SECURITY_PROTOCOL is {protocol}, which uses no TLS; "
                        "set it to SSL or SASL_SSL, or unset them")
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        problems.append("RAPPORT_KAFKA_SSL_KEYFILE is set without RAPPORT_KAFKA_SSL_CERTFILE; set the certificate too")
    if settings.kafka_ssl_key_password is not None and settings.kafka_ssl_certfile is None:
        problems.append("RAPPORT_KAFKA_SSL_KEY_PASSWORD is set without a client certificate (RAPPORT_KAFKA_SSL_CERTFILE)")
    return problems


def describe_settings_errors(error: Exception) -> str:
    """pydantic's error as lines `RAPPORT_NAME: what is wrong`, without the values (secrets); a rule
    between settings is one line that names them."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    lines = []
    for e in error.errors(include_url=False):
        message = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            lines.append(f"  RAPPORT_{'_'.join(str(p) for p in e['loc']).upper()}: {message}")
        else:  # rules between settings (Settings._connections): each line names its settings
            lines.extend(f"  {problem}" for problem in message.splitlines())
    return "\n".join(lines)


def shown_default(name: str) -> str:
    """A setting's default as --help shows it: a URL's password masked, a secret never."""
    field = Settings.model_fields[name]
    if field.default is None:
        return "none"
    if isinstance(field.default, SecretStr) or (name in SECRET_FILE_SETTINGS and name != "database_url"):
        return "(secret)"
    if isinstance(field.default, str) and "://" in field.default:
        return repr(redact_url(field.default))
    return repr(field.default)


def settings_help() -> str:
    """The settings table for `--help`, from the field descriptions."""
    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  RAPPORT_{name.upper():<28} {field.description} [default: {shown_default(name)}]")
    return "\n".join(lines)
