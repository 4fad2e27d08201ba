"""contract/asyncapi.yaml: a valid AsyncAPI 3.0.0 document that says what the code does.

Validated against the official JSON Schema of AsyncAPI 3.0.0 (draft-07), vendored in
`tests/resources/asyncapi-3.0.0.schema.json` from the npm package `@asyncapi/specs` 6.11.1
(`schemas/3.0.0-without-$id.json`; see tests/resources/README.md). Topic names, partitions,
dead-letter headers and examples are compared with the code, so the document cannot drift from it.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from consumers.ingest import ERROR_HEADER, dead_letter_headers
from domain.alerts import AlertKind
from domain.contract import InvalidEvent, customer_key_of, parse_envelope
from services.contract_files import ASYNCAPI_FILE, CONTRACT_VERSION, ENVELOPE_SCHEMA_FILE, ENVELOPE_SCHEMA_ID
from services.settings import Settings
from services.topics import DEAD_LETTER_MAX_BYTES, ensure_alert_topic, ensure_topics

ASYNCAPI_SCHEMA_FILE = Path(__file__).resolve().parents[1] / "resources" / "asyncapi-3.0.0.schema.json"
DOC: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text(encoding="utf-8"))
ENVELOPE = json.loads(ENVELOPE_SCHEMA_FILE.read_text(encoding="utf-8"))
DEFAULTS = Settings(topic=Settings.model_fields["topic"].default, dlq_topic="", alerts_topic="",
                    alert_max_age_days=Settings.model_fields["alert_max_age_days"].default,
                    kafka_bootstrap=Settings.model_fields["kafka_bootstrap"].default)


def asyncapi_validator() -> Draft7Validator:
    schema = json.loads(ASYNCAPI_SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def resolve(pointer: str) -> Any:
    """The part of the document a local `$ref` ("#/a/b") names."""
    node: Any = DOC
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def channel(address: str) -> dict[str, Any]:
    [found] = [c for c in DOC["channels"].values() if c["address"] == address]
    return found  # type: ignore[no-any-return]


def message_of(address: str) -> dict[str, Any]:
    [message] = channel(address)["messages"].values()
    return resolve(message["$ref"]) if "$ref" in message else message  # type: ignore[no-any-return]


# --- the document is AsyncAPI 3.0.0 -----------------------------------------------------------


def test_the_document_is_valid_asyncapi_3() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in asyncapi_validator().iter_errors(DOC)]
    assert not errors, errors


def test_the_validation_does_find_a_broken_document() -> None:
    broken = copy.deepcopy(DOC)
    broken["operations"]["publishInteraction"]["action"] = "publish"  # AsyncAPI 2's word
    del broken["servers"]["local"]["protocol"]
    assert len(list(asyncapi_validator().iter_errors(broken))) >= 2


def test_every_reference_resolves() -> None:
    for ref in refs(DOC):
        if ref.startswith("#/"):
            resolve(ref)
        else:
            assert (ASYNCAPI_FILE.parent / ref).resolve() == ENVELOPE_SCHEMA_FILE.resolve(), ref


def test_the_document_has_the_contracts_version() -> None:
    assert DOC["info"]["version"] == CONTRACT_VERSION
    assert ENVELOPE_SCHEMA_ID.replace(":envelope", ":topics") == DOC["id"]


# --- it says what the code does ---------------------------------------------------------------


def test_the_server_is_the_default_bootstrap_server() -> None:
    [server] = DOC["servers"].values()
    assert (server["host"], server["protocol"]) == (DEFAULTS.kafka_bootstrap, "kafka")
    assert "production" in server["description"] and "TLS" in server["description"]


def test_the_channels_are_the_settings_topics() -> None:
    addresses = [c["address"] for c in DOC["channels"].values()]
    assert addresses == [DEFAULTS.topic, DEFAULTS.dead_letter_topic, DEFAULTS.alert_topic]


def test_topics_have_the_partitions_and_limits_rapport_creates_them_with() -> None:
    partitions = inspect.signature(ensure_topics).parameters["partitions"].default
    for address in (DEFAULTS.topic, DEFAULTS.dead_letter_topic):
        assert channel(address)["bindings"]["kafka"]["partitions"] == partitions
    alert_partitions = inspect.signature(ensure_alert_topic).parameters["partitions"].default
    assert channel(DEFAULTS.alert_topic)["bindings"]["kafka"]["partitions"] == alert_partitions
    limit = channel(DEFAULTS.dead_letter_topic)["bindings"]["kafka"]["topicConfiguration"]["max.message.bytes"]
    assert limit == DEAD_LETTER_MAX_BYTES


def test_the_interactions_payload_is_the_envelope_schema() -> None:
    message = message_of(DEFAULTS.topic)
    assert message["payload"] == {"$ref": "./envelope.schema.json"}
    assert message["contentType"] == "application/json"


def test_the_interaction_examples_are_valid_envelopes_and_the_contracts_example_is_first() -> None:
    message = message_of(DEFAULTS.topic)
    validator = Draft202012Validator(ENVELOPE)
    examples = [example["payload"] for example in message["examples"]]
    assert examples[0] == ENVELOPE["examples"][0]
    assert {example["type"] for example in examples} >= {"call", "purchase", "survey_response"}
    for payload in examples:
        parse_envelope(json.dumps(payload))
        assert validator.is_valid(payload), [e.message for e in validator.iter_errors(payload)]


def test_the_key_is_the_customer_key_as_long_as_an_identifier() -> None:
    key = message_of(DEFAULTS.topic)["bindings"]["kafka"]["key"]
    identifier = ENVELOPE["$defs"]["CustomerRef"]["properties"]["id"]["anyOf"][0]
    assert (key["type"], key["minLength"], key["maxLength"]) == ("string", identifier["minLength"], identifier["maxLength"])
    for example in message_of(DEFAULTS.topic)["examples"]:
        assert customer_key_of(example["payload"])  # every example has a key to send


def dead_letter(reason: str) -> dict[str, str]:
    """The headers ingest writes on a dead letter, as text, for a record with a header of its own."""
    record = SimpleNamespace(topic=DEFAULTS.topic, partition=3, offset=4711, key=b"crm-42", value=b"{}",
                             headers=[("traceparent", b"00-abc-def-01")])
    return {name: value.decode() for name, value in dead_letter_headers(record, reason)}


def test_the_dead_letter_headers_are_those_ingest_writes() -> None:
    headers = message_of(DEFAULTS.dead_letter_topic)["headers"]
    written = list(dead_letter("why"))
    assert written[0] == "traceparent"  # the original header, kept
    assert headers["required"] == written[1:] == list(headers["properties"])
    assert ERROR_HEADER in headers["required"] and all(name.startswith("rapport-") for name in written[1:])
    assert headers["additionalProperties"] is True


def test_the_headers_ingest_writes_are_valid_by_the_documented_schema() -> None:
    schema = message_of(DEFAULTS.dead_letter_topic)["headers"]
    validator = Draft7Validator(schema)
    assert validator.is_valid(dead_letter("data.duration_seconds: must be an integer"))
    assert not validator.is_valid({k: v for k, v in dead_letter("r").items() if k != ERROR_HEADER})
    assert not validator.is_valid(dead_letter("r") | {"rapport-source-offset": "-1"})


def test_the_dead_letter_example_carries_the_reason_ingest_gives_for_its_payload() -> None:
    message = message_of(DEFAULTS.dead_letter_topic)
    assert message["contentType"] == "application/octet-stream"
    [example] = message["examples"]
    assert Draft7Validator(message["headers"]).is_valid(example["headers"])
    with pytest.raises(InvalidEvent) as refused:
        parse_envelope(example["payload"])
    assert example["headers"][ERROR_HEADER] == refused.value.reason
    assert example["headers"]["rapport-source-topic"] == DEFAULTS.topic


def test_the_alerts_channel_says_alerts_are_published_with_the_settings_rapport_reads() -> None:
    alerts = channel(DEFAULTS.alert_topic)
    assert "not published yet" not in json.dumps(DOC).lower() and "planned" not in json.dumps(DOC).lower()
    assert all(f"RAPPORT_{name.upper()}" in alerts["description"] for name in ("alerts_topic", "alert_max_age_days"))
    assert f"`RAPPORT_ALERT_MAX_AGE_DAYS` ({DEFAULTS.alert_max_age_days})" in alerts["description"]
    assert "`<RAPPORT_TOPIC>.alerts`" in alerts["description"] and DEFAULTS.alert_topic == f"{DEFAULTS.topic}.alerts"
    assert "`isolation_level=read_committed`" in alerts["description"], "consumers must skip aborted transactions"


def alert_row() -> dict[str, Any]:
    """A row of the alerts table, as the relay and `GET /alerts` read it."""
    from datetime import UTC, datetime

    return {"alert_id": "a-1", "seq": 7, "customer_id": "crm-42", "kind": "at_risk", "reason": "no purchase for 180 days",
            "occurred_at": datetime(2026, 8, 29, 15, tzinfo=UTC),
            "raised_at": datetime(2026, 8, 29, 15, 0, 3, 400000, tzinfo=UTC),
            "event_id": None, "revenue": {"USD": "120.00", "EUR": "0.000000000001"},
            "last_contact_at": datetime(2026, 4, 2, 10, tzinfo=UTC)}


def test_the_alert_schema_is_what_the_relay_publishes() -> None:
    from services.alerts import ALERT_ID_HEADER, ALERT_SEQ_HEADER, ALERT_SOURCE_HEADER, alert_json

    message = message_of(DEFAULTS.alert_topic)
    schema = resolve(message["payload"]["$ref"])
    written = alert_json(alert_row())
    assert list(schema["properties"]) == list(written) == schema["required"]
    assert Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER).is_valid(written)
    headers = [ALERT_ID_HEADER, ALERT_SEQ_HEADER, ALERT_SOURCE_HEADER]
    assert message["headers"]["required"] == headers == list(message["headers"]["properties"])


def test_the_alert_examples_are_valid_by_the_alert_schema() -> None:
    message = message_of(DEFAULTS.alert_topic)
    schema = resolve(message["payload"]["$ref"])
    assert schema["properties"]["kind"]["enum"] == [k.value for k in AlertKind] == ["alarm_answer", "at_risk", "churned"]
    validator = Draft7Validator(schema)
    headers = Draft7Validator(message["headers"])
    for example in message["examples"]:
        assert validator.is_valid(example["payload"]), [e.message for e in validator.iter_errors(example["payload"])]
        assert headers.is_valid(example["headers"])
        assert example["headers"]["rapport-alert-id"] == example["payload"]["alert_id"]
    assert {e["payload"]["kind"] for e in message["examples"]} >= {"alarm_answer", "at_risk"}
    assert not validator.is_valid(message["examples"][0]["payload"] | {"kind": "vip"})
    assert not validator.is_valid(message["examples"][0]["payload"] | {"revenue": {"USD": 12.5}})


def test_the_operations_send_interactions_and_receive_dead_letters_and_alerts() -> None:
    actions = {resolve(op["channel"]["$ref"])["address"]: op["action"] for op in DOC["operations"].values()}
    assert actions == {DEFAULTS.topic: "send", DEFAULTS.dead_letter_topic: "receive", DEFAULTS.alert_topic: "receive"}
    for operation in DOC["operations"].values():
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
