"""Production connections (issue 15): secrets from files, rules between the connection settings, and
no secret in repr, --help, error messages or kafka-python's logged configuration."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr, ValidationError

from services.settings import MaskedStr, Settings, describe_settings_errors, redact_url, settings_help

SECRET = "s3cret-Ü-value"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no RAPPORT_* or PGSSL* of the machine running the tests."""
    for key in list(os.environ):
        if key.startswith(("RAPPORT_", "PGSSL")):
            monkeypatch.delenv(key)


def secret_file(tmp_path: Path, content: str = SECRET + "\n", name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    return path


def settings_error(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return describe_settings_errors(caught.value)


def sasl_ssl(**values: object) -> dict[str, object]:
    return {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "rapport", **values}


# ---------------------------------------------------------------- secrets from files

def test_database_password_comes_from_the_file_without_its_trailing_newline(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_DATABASE_URL", "postgresql://rapport@db.example:5432/rapport")
    monkeypatch.setenv("RAPPORT_DATABASE_PASSWORD_FILE", str(secret_file(tmp_path, SECRET + "\r\n")))

    settings = Settings()

    assert settings.database["password"] == SECRET
    assert settings.database_password == SecretStr(SECRET)


def test_kafka_secrets_come_from_their_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_KAFKA_SASL_PASSWORD_FILE", str(secret_file(tmp_path, SECRET + "\n", "sasl")))
    monkeypatch.setenv("RAPPORT_KAFKA_SSL_KEY_PASSWORD_FILE", str(secret_file(tmp_path, "key-pass\n", "key")))
    cert = secret_file(tmp_path, "not checked here", "client.pem")

    settings = Settings(**sasl_ssl(kafka_ssl_certfile=cert))
    config = settings.kafka_client_config

    assert config["sasl_plain_password"] == SECRET
    assert config["ssl_password"] == "key-pass"


def test_database_url_comes_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://app:{SECRET}@db.example:6432/crm"
    monkeypatch.setenv("RAPPORT_DATABASE_URL_FILE", str(secret_file(tmp_path, url + "\n")))

    database = Settings().database

    assert (database["host"], database["port"], database["dbname"], database["password"]) == (
        "db.example", "6432", "crm", SECRET)


def test_a_missing_secret_file_is_named_with_its_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    message = settings_error(kafka_sasl_password_file=str(missing))

    assert f"RAPPORT_KAFKA_SASL_PASSWORD_FILE: '{missing}' does not exist" in message


def test_an_unreadable_secret_file_is_named_never_its_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = secret_file(tmp_path)
    real_read_text = Path.read_text

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse)

    message = settings_error(database_password_file=str(path))

    assert f"RAPPORT_DATABASE_PASSWORD_FILE: '{path}' cannot be read (permission denied)" in message
    assert SECRET not in message


def test_a_directory_or_an_empty_file_is_no_secret_file(tmp_path: Path) -> None:
    assert f"RAPPORT_DATABASE_PASSWORD_FILE: '{tmp_path}' cannot be read" in settings_error(
        database_password_file=str(tmp_path))
    assert "is empty" in settings_error(database_password_file=str(secret_file(tmp_path, "\n")))


def test_a_url_file_that_holds_no_postgresql_url_is_refused_without_showing_it(tmp_path: Path) -> None:
    message = settings_error(database_url_file=str(secret_file(tmp_path, f"mysql://app:{SECRET}@h/db\n")))

    assert "RAPPORT_DATABASE_URL_FILE: the URL in" in message and "not a PostgreSQL URL" in message
    assert SECRET not in message


@pytest.mark.parametrize("name", ["database_url", "database_password", "kafka_sasl_password", "kafka_ssl_key_password"])
def test_a_secret_and_its_file_both_set_is_an_error_naming_both(name: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    value = "postgresql://rapport@127.0.0.1:5432/rapport" if name == "database_url" else SECRET
    monkeypatch.setenv(f"RAPPORT_{name.upper()}", value)
    monkeypatch.setenv(f"RAPPORT_{name.upper()}_FILE", str(secret_file(tmp_path, value + "\n")))

    message = settings_error(**(sasl_ssl() if name.startswith("kafka") else {}))

    assert f"RAPPORT_{name.upper()} and RAPPORT_{name.upper()}_FILE are both set; set only one" in message
    assert SECRET not in message


# ---------------------------------------------------------------- rules between the connection settings

def test_a_password_in_the_url_and_the_password_setting_conflict() -> None:
    message = settings_error(database_url="postgresql://app:one@db:5432/crm", database_password="two")

    assert "RAPPORT_DATABASE_URL holds a password and RAPPORT_DATABASE_PASSWORD is set" in message


def test_the_password_setting_replaces_the_default_urls_password() -> None:
    assert Settings(database_password=SECRET).database["password"] == SECRET


def test_tls_in_the_urls_query_is_refused_rather_than_ignored() -> None:
    message = settings_error(database_url="postgresql://app@db:5432/crm?sslmode=verify-full")

    assert "RAPPORT_DATABASE_URL: TLS is not read from the URL (sslmode)" in message
    assert "RAPPORT_DATABASE_SSLMODE" in message


def test_a_ca_without_an_sslmode_that_checks_it_is_an_error(tmp_path: Path) -> None:
    message = settings_error(database_sslrootcert=str(secret_file(tmp_path, "CA")))

    assert "RAPPORT_DATABASE_SSLMODE is not; set it to verify-full" in message


def test_tls_files_must_exist_and_be_named_by_their_variable(tmp_path: Path) -> None:
    message = settings_error(database_sslmode="verify-full", database_sslrootcert=str(tmp_path / "ca.crt"),
                             kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "kafka-ca.crt"))

    assert f"RAPPORT_DATABASE_SSLROOTCERT: '{tmp_path / 'ca.crt'}' does not exist; give the path of the CA" in message
    assert f"RAPPORT_KAFKA_SSL_CAFILE: '{tmp_path / 'kafka-ca.crt'}' does not exist" in message


def test_a_client_key_that_others_may_read_is_refused_as_libpq_would(tmp_path: Path) -> None:
    cert, key = secret_file(tmp_path, "cert", "client.crt"), secret_file(tmp_path, "key", "client.key")
    key.chmod(0o644)

    message = settings_error(database_sslmode="require", database_sslcert=str(cert), database_sslkey=str(key))

    assert "RAPPORT_DATABASE_SSLKEY:" in message and "chmod" in message


def test_sslmode_and_the_kafka_protocol_are_read_in_any_case() -> None:
    settings = Settings(database_sslmode="Verify-Full", **sasl_ssl(kafka_security_protocol="sasl_ssl",
                                                                   kafka_sasl_mechanism="scram-sha-512",
                                                                   kafka_sasl_password=SECRET))

    assert (settings.database_sslmode, settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "verify-full", "SASL_SSL", "SCRAM-SHA-512")


def test_sasl_needs_mechanism_user_and_password() -> None:
    message = settings_error(kafka_security_protocol="SASL_SSL")

    assert ("RAPPORT_KAFKA_SECURITY_PROTOCOL is SASL_SSL, which needs RAPPORT_KAFKA_SASL_MECHANISM, "
            "RAPPORT_KAFKA_SASL_USERNAME, RAPPORT_KAFKA_SASL_PASSWORD") in message


def test_sasl_and_tls_settings_without_a_protocol_that_uses_them_are_errors(tmp_path: Path) -> None:
    message = settings_error(kafka_sasl_username="rapport", kafka_ssl_cafile=str(secret_file(tmp_path, "CA")))

    assert "RAPPORT_KAFKA_SASL_USERNAME is set, but RAPPORT_KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in message
    assert "RAPPORT_KAFKA_SSL_CAFILE is set, but RAPPORT_KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in message


def test_an_unknown_protocol_or_mechanism_names_the_choices() -> None:
    assert "RAPPORT_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'" in (
        settings_error(kafka_security_protocol="TLS"))
    assert "RAPPORT_KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'" in (
        settings_error(**sasl_ssl(kafka_sasl_mechanism="GSSAPI", kafka_sasl_password=SECRET)))


# ---------------------------------------------------------------- the one place for connection arguments

def test_database_parameters_carry_the_tls_settings_and_libpq_gets_them_too(tmp_path: Path) -> None:
    ca = secret_file(tmp_path, "CA", "ca.crt")
    settings = Settings(database_sslmode="verify-full", database_sslrootcert=str(ca))

    assert {k: v for k, v in settings.database.items() if k.startswith("ssl")} == {
        "sslmode": "verify-full", "sslrootcert": str(ca)}
    assert settings.libpq_tls_environment == {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca)}
    assert settings.psql_url == "postgresql://rapport@127.0.0.1:5432/rapport?" + urlencode(
        {"sslmode": "verify-full", "sslrootcert": str(ca)})


def test_without_tls_settings_the_connection_arguments_are_as_before() -> None:
    settings = Settings()

    assert settings.database == {"dbname": "rapport", "host": "127.0.0.1", "port": "5432", "user": "rapport",
                                 "password": "rapport"}
    assert settings.kafka_client_config == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert settings.libpq_tls_environment == {}


def test_kafka_client_config_holds_what_kafka_python_needs(tmp_path: Path) -> None:
    ca = secret_file(tmp_path, "CA", "ca.crt")
    settings = Settings(kafka_bootstrap="b1:9094,b2:9094", kafka_ssl_cafile=ca, kafka_ssl_check_hostname="false",
                        **sasl_ssl(kafka_sasl_password=SECRET))

    assert settings.kafka_client_config == {
        "bootstrap_servers": ["b1:9094", "b2:9094"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "rapport", "sasl_plain_password": SECRET,
        "ssl_check_hostname": False, "ssl_cafile": str(ca)}


def test_the_event_store_gets_tls_through_libpq_environment_and_loses_it_again(monkeypatch: pytest.MonkeyPatch,
                                                                                 tmp_path: Path) -> None:
    from services import bootstrap

    monkeypatch.setattr(bootstrap, "_exported_libpq", {})
    ca = secret_file(tmp_path, "CA", "ca.crt")

    env = bootstrap.event_store_env(Settings(database_sslmode="verify-full", database_sslrootcert=str(ca)))
    assert (os.environ["PGSSLMODE"], os.environ["PGSSLROOTCERT"]) == ("verify-full", str(ca))
    assert env["POSTGRES_HOST"] == "127.0.0.1"

    bootstrap.event_store_env(Settings())
    assert "PGSSLMODE" not in os.environ and "PGSSLROOTCERT" not in os.environ


def test_an_operators_own_pgsslmode_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from services import bootstrap

    monkeypatch.setattr(bootstrap, "_exported_libpq", {})
    monkeypatch.setenv("PGSSLMODE", "require")

    bootstrap.event_store_env(Settings())

    assert os.environ["PGSSLMODE"] == "require"


# ---------------------------------------------------------------- no secret shown

def secret_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"postgresql://rapport:{SECRET}@127.0.0.1:5432/rapport",
                    kafka_ssl_key_password_file=str(secret_file(tmp_path, "key-" + SECRET)),
                    kafka_ssl_certfile=str(secret_file(tmp_path, "cert", "client.pem")),
                    **sasl_ssl(kafka_sasl_password=SECRET))


def test_repr_and_str_of_the_settings_show_no_secret(tmp_path: Path) -> None:
    settings = secret_settings(tmp_path)

    for text in (repr(settings), str(settings), repr(settings.kafka_client_config), str(settings.kafka_client_config)):
        assert SECRET not in text


def test_kafka_pythons_debug_line_of_its_configuration_shows_no_password(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = secret_settings(tmp_path).kafka_client_config
    assert isinstance(config["sasl_plain_password"], MaskedStr)

    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        # kafka/admin/client.py: log.debug("Starting KafkaAdminClient with configuration: %s", configs)
        logging.getLogger("kafka.admin.client").debug("Starting KafkaAdminClient with configuration: %s", config)

    assert "'**********'" in caplog.text and SECRET not in caplog.text


def test_help_shows_no_password_of_the_default_url_nor_any_secret_default() -> None:
    text = settings_help()

    assert "rapport:rapport" not in text
    assert "RAPPORT_DATABASE_URL " in text and "'postgresql://rapport:***@127.0.0.1:5432/rapport'" in text
    for name in ("DATABASE_PASSWORD", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_KEY_PASSWORD"):
        assert f"RAPPORT_{name} " in text


def test_rapport_help_shows_no_password() -> None:
    from services.cli import build_parser

    assert "rapport:rapport" not in build_parser().format_help()


def test_invalid_settings_are_reported_without_the_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    monkeypatch.setenv("RAPPORT_DATABASE_URL", f"postgresql://rapport:{SECRET}@127.0.0.1:99999/rapport")
    monkeypatch.setenv("RAPPORT_KAFKA_SASL_PASSWORD", SECRET)

    assert main(["topics"]) == 2

    err = capsys.readouterr().err
    assert "RAPPORT_DATABASE_URL: the port is not a number" in err
    assert SECRET not in err


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://rapport:rapport@127.0.0.1:5432/rapport", "postgresql://rapport:***@127.0.0.1:5432/rapport"),
    ("postgresql://app:p%40ss@db:5432/crm?sslmode=require", "postgresql://app:***@db:5432/crm?sslmode=require"),
    ("postgresql://app@db:5432/crm", "postgresql://app@db:5432/crm"),
    ("postgresql://db/crm", "postgresql://db/crm"),
])
def test_redact_url_masks_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
