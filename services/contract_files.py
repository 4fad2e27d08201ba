"""The producer's contract as files tools read (issue 15): the envelope's JSON Schema, generated from
the pydantic models of `domain.contract`, which stay the one source of the rules.

The models state most rules themselves (required fields, enums, lengths, types, extra fields
kept). The rules their validators enforce in code are added here from the same constants (integer
ranges, ISO 4217 codes, the digits of money, the score range of each survey kind, the customer key,
which `data` goes with which `type` and `version`), so that the schema says what contract §1 says.
What JSON Schema cannot say is listed in the schema's own description. The AsyncAPI document
beside it (`contract/asyncapi.yaml`) is written by hand and refers to this schema.

    python -m services.contract_files write    # regenerate contract/envelope.schema.json
    python -m services.contract_files check    # exit 1 when the file differs from what the models give
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from domain.contract import (
    DATA_MODELS,
    EVENT_TYPES,
    MAX_CALL_MS,
    MAX_CALL_SECONDS,
    MAX_ITEM_QUANTITY,
    MAX_MESSAGE_BYTES,
    MAX_VERSION,
    MONEY_DECIMAL_PLACES,
    MONEY_WHOLE_DIGITS,
    SCORE_RANGES,
    CallDataV1,
    CallDataV2,
    CustomerRef,
    Envelope,
    Money,
    PurchaseData,
    PurchaseItem,
    SurveyResponseData,
)

CONTRACT_VERSION = "1.1"
ROOT = Path(__file__).resolve().parents[1]
CONTRACT_DIR = ROOT / "contract"
ENVELOPE_SCHEMA_FILE = CONTRACT_DIR / "envelope.schema.json"
ASYNCAPI_FILE = CONTRACT_DIR / "asyncapi.yaml"
ENVELOPE_SCHEMA_ID = f"urn:rapport:contract:{CONTRACT_VERSION}:envelope"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE_COMMAND = "python -m services.contract_files write"

CUSTOMER_KEY_FIELDS = ("id", "email", "phone")  # domain.contract.customer_key: the first one given is the key

# Integer fields bounded by `_between` validators, which pydantic's schema shows as a bare "integer".
INTEGER_RANGES: dict[tuple[type[BaseModel], str], tuple[int, int]] = {
    (Envelope, "version"): (1, MAX_VERSION),
    (CallDataV1, "duration_seconds"): (0, MAX_CALL_SECONDS),
    (CallDataV2, "duration_ms"): (0, MAX_CALL_MS),
    (PurchaseItem, "quantity"): (1, MAX_ITEM_QUANTITY),
}
CURRENCY_PATTERN = "^[A-Z]{3}$"  # PurchaseData._iso_4217

# RFC 3339 with an offset, as domain.contract.parse_occurred_at reads it: [Tt ] between date and
# time, 1–9 digits of a second, Z or ±hh:mm; months of 30 days and February's 29 are told apart.
_YEAR = "(?!0000)[0-9]{4}"
_MONTH_DAY = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              "|02-(?:0[1-9]|1[0-9]|2[0-9]))")
_TIME = r"[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
_OFFSET = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
OCCURRED_AT_PATTERN = f"^{_YEAR}-{_MONTH_DAY}{_TIME}{_OFFSET}$"

# Plain decimal notation: leading zeros do not count, decimal places count as written (as
# domain.contract._money_digits counts them).
MONEY_STRING_PATTERN = (rf"^\+?(?=\.?[0-9])0*(?:[1-9][0-9]{{0,{MONEY_WHOLE_DIGITS - 1}}})?"
                        rf"(?:\.[0-9]{{0,{MONEY_DECIMAL_PLACES}}})?$")
_MONEY_RULE = get_args(Money)[-1]  # the validator that marks a field as money

EXAMPLE = {  # contract §1's example
    "event_id": "pbx-01:call:998877",
    "type": "call",
    "occurred_at": "2026-03-01T10:15:00+05:30",
    "customer": {"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567", "name": "Ana Perera"},
    "source": "pbx-01",
    "version": 1,
    "data": {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun"},
}

FIELD_NOTES = {
    "event_id": "Unique per event. The same event_id again with the same content is a duplicate: ignored, counted "
                "nowhere. The same event_id with different content is a conflict: dead-lettered.",
    "type": "Which interaction this is; it decides the shape of `data`.",
    "occurred_at": "When it happened: RFC 3339 with a UTC offset (Z or ±hh:mm); naive times are rejected. "
                   "Stored and returned in UTC.",
    "customer": "Who it was with: at least one of id, email, phone; name optional. The customer key (the id, "
                "else the email, else the phone) is the Kafka message key.",
    "source": "The producing system (optional).",
}

CANNOT_EXPRESS = (
    "content-based duplicates and conflicts: the same event_id again with the same content is ignored, with "
    "different content dead-lettered (it needs the events already received)",
    f"the size of a message: at most {MAX_MESSAGE_BYTES:,} bytes (1 MiB) of UTF-8 JSON",
    "29 February of a year that is not a leap year, and a time that falls before year 1 or after year 9999 "
    "once converted to UTC",
    f"money sent as a JSON number with more than {MONEY_DECIMAL_PLACES} decimal places (as a string, "
    "the pattern checks it)",
    "text holding the character U+0000 (NUL) or an unpaired UTF-16 surrogate escape (\\ud800), anywhere, "
    "unknown extra fields included",
    "integers of more than 4,300 digits and objects or arrays nested too deeply to be stored, anywhere",
)
LENIENT_FORMS = (
    'integers written as JSON strings ("310")',
    "money written with an exponent (\"1E+2\"), with spaces or underscores around or between its digits, "
    'with non-ASCII digits, or as "-0"',
    'a UTC offset whose minutes are 60–99 ("+05:60"), which RFC 3339 does not have',
)


def _notes() -> str:
    cannot = "".join(f"\n- {rule}" for rule in CANNOT_EXPRESS)
    lenient = "".join(f"\n- {form}" for form in LENIENT_FORMS)
    return (
        f"One message of the Kafka topic `interactions` (and one item of `POST /events`), Rapport contract "
        f"v{CONTRACT_VERSION} §1. Generated from the pydantic models of Rapport's parser (domain/contract.py), "
        f"which decides; regenerate with `{REGENERATE_COMMAND}`. A message that breaks a rule is written to "
        "`interactions.dlq` with the reason in its `rapport-error` header. Unknown extra fields are kept, not "
        "rejected, at every level.\n\n"
        f"Rules this schema cannot express, which Rapport still enforces (a message valid here may be dead-lettered "
        f"for them):{cannot}\n\n"
        f"Forms Rapport's parser tolerates that this schema does not admit (send the forms it admits):{lenient}\n\n"
        "The schema uses only keywords that draft-07 reads the same way, for tools of either dialect."
    )


def _versioned_notes(default_version: int) -> dict[str, str]:
    """The notes on `version` and `data`, from DATA_MODELS."""
    shapes = "; ".join(
        f"{event_type}: " + ", ".join(f"version {version} {model.__name__}" for version, model in versions.items())
        for event_type, versions in DATA_MODELS.items())
    return {
        "version": f"The version of the shape of `data` for this type (default {default_version}); "
                   + "; ".join(f"{t} has {', '.join(map(str, versions))}" for t, versions in DATA_MODELS.items()) + ".",
        "data": f"What happened, by `type` and `version` (`allOf`), with these `$defs`: {shapes}.",
    }


def _integer_range(prop: dict[str, Any], low: int, high: int) -> None:
    prop.update(minimum=low, maximum=high)


def _money(prop: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": prop.get("title"),
        "description": f"A decimal ≥ 0, as a JSON string (exact, e.g. \"120.00\") or number; at most "
                       f"{MONEY_WHOLE_DIGITS} digits before the point and {MONEY_DECIMAL_PLACES} after it.",
        "anyOf": [
            {"type": "number", "minimum": 0, "exclusiveMaximum": 10**MONEY_WHOLE_DIGITS},
            {"type": "string", "pattern": MONEY_STRING_PATTERN},
        ],
    }


def _money_fields(model: type[BaseModel], schema: dict[str, Any]) -> None:
    for name, field in model.model_fields.items():
        if any(rule is _MONEY_RULE for rule in field.metadata):
            schema["properties"][name] = _money(schema["properties"][name])


def _customer_needs_a_key(schema: dict[str, Any]) -> None:
    schema["description"] = ("Who the interaction was with: at least one of " + ", ".join(CUSTOMER_KEY_FIELDS)
                             + "; the first of them given is the customer key.")
    schema["anyOf"] = [{"required": [name], "properties": {name: {"type": "string"}}} for name in CUSTOMER_KEY_FIELDS]


def _score_by_kind(schema: dict[str, Any]) -> None:
    score = schema["properties"]["score"]
    score["minimum"] = min(low for low, _ in SCORE_RANGES.values())
    score["maximum"] = max(high for _, high in SCORE_RANGES.values())
    score["description"] = "; ".join(f"{kind}: {low}–{high}" for kind, (low, high) in SCORE_RANGES.items())
    schema["allOf"] = [
        {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
         "then": {"properties": {"score": {"type": "integer", "minimum": low, "maximum": high}}}}
        for kind, (low, high) in SCORE_RANGES.items()
    ]


def _other_versions_fields(event_type: str, version: int, schema: dict[str, Any]) -> None:
    """Fields another version of the type declares and this one does not are refused (sent with the
    wrong `version`, they would mean nothing), as domain.contract._fields_of_other_versions does."""
    models = DATA_MODELS[event_type]
    own = models[version].model_fields
    for other in sorted(models, reverse=True):
        for name in models[other].model_fields:
            if name not in own and name not in schema["properties"]:
                schema["properties"][name] = {
                    "not": {}, "description": f'A field of version {other} of {event_type}: send "version": {other}.'}


def _version_is(version: int, default: int) -> dict[str, Any]:
    condition: dict[str, Any] = {"properties": {"version": {"const": version}}}
    if version != default:
        condition["required"] = ["version"]
    return condition


def _data_by_type(refs: dict[type[BaseModel], str], default_version: int) -> list[dict[str, Any]]:
    """One `if type = T then …` per type: its versions, and the `data` schema of each."""
    rules = []
    for event_type in EVENT_TYPES:
        versions = DATA_MODELS[event_type]
        then: dict[str, Any] = {"properties": {"version": {"enum": list(versions)}}}
        if len(versions) == 1:
            [model] = versions.values()
            then["properties"]["data"] = {"$ref": refs[model]}
        else:
            then["allOf"] = [{"if": _version_is(version, default_version),
                              "then": {"properties": {"data": {"$ref": refs[model]}}}}
                             for version, model in versions.items()]
        rules.append({"if": {"properties": {"type": {"const": event_type}}, "required": ["type"]}, "then": then})
    return rules


def _describe_data(event_type: str, version: int, default_version: int, schema: dict[str, Any]) -> None:
    default = " (the default)" if version == default_version else ""
    own = schema.get("description")
    schema["description"] = f"`data` of a `{event_type}` event, version {version}{default}." + (f" {own}" if own else "")


def envelope_schema() -> dict[str, Any]:
    """The envelope's JSON Schema (draft 2020-12), from the models and the rules their validators add."""
    data_models = [model for versions in DATA_MODELS.values() for model in versions.values()]
    refs_of, top = models_json_schema([(model, "validation") for model in (Envelope, *data_models)],
                                      ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]
    refs = {model: ref["$ref"] for (model, _), ref in refs_of.items()}

    def schema_of(model: type[BaseModel]) -> dict[str, Any]:
        name = refs[model].rsplit("/", 1)[1] if model in refs else model.__name__  # nested: under its own name
        return defs[name]  # type: ignore[no-any-return]

    envelope = defs.pop(refs.pop(Envelope).rsplit("/", 1)[1])
    default_version = Envelope.model_fields["version"].default
    for (model, field), (low, high) in INTEGER_RANGES.items():
        _integer_range((envelope if model is Envelope else schema_of(model))["properties"][field], low, high)
    for model in (PurchaseData, PurchaseItem):
        _money_fields(model, schema_of(model))
    schema_of(PurchaseData)["properties"]["currency"].update(
        pattern=CURRENCY_PATTERN, minLength=3, maxLength=3, description="ISO 4217: 3 upper-case letters, e.g. USD.")
    _score_by_kind(schema_of(SurveyResponseData))
    _customer_needs_a_key(schema_of(CustomerRef))
    for event_type, versions in DATA_MODELS.items():
        for version, model in versions.items():
            _describe_data(event_type, version, default_version, schema_of(model))
            _other_versions_fields(event_type, version, schema_of(model))

    properties = envelope["properties"]
    occurred_at = properties["occurred_at"]
    occurred_at.pop("format", None)  # RFC 3339's own date-time format has no space separator; the pattern says it
    occurred_at["pattern"] = OCCURRED_AT_PATTERN
    for name, note in {**FIELD_NOTES, **_versioned_notes(default_version)}.items():
        properties[name]["description"] = note
    return {
        "$schema": DIALECT,
        "$id": ENVELOPE_SCHEMA_ID,
        "title": f"Rapport interaction envelope (contract v{CONTRACT_VERSION})",
        "description": _notes(),
        "type": "object",
        "required": envelope["required"],
        "properties": properties,
        "additionalProperties": envelope["additionalProperties"],
        "allOf": _data_by_type(refs, default_version),
        "examples": [EXAMPLE],
        "$defs": dict(sorted(defs.items())),
    }


@cache
def envelope_schema_text() -> str:
    """The schema as `contract/envelope.schema.json` holds it and `GET /schema/envelope.json` serves it."""
    return json.dumps(envelope_schema(), indent=2, ensure_ascii=False) + "\n"


def write(path: Path = ENVELOPE_SCHEMA_FILE) -> bool:
    """Write the schema to `path`; True when its content changed."""
    text = envelope_schema_text()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def is_current(path: Path = ENVELOPE_SCHEMA_FILE) -> bool:
    return path.exists() and path.read_text(encoding="utf-8") == envelope_schema_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.contract_files",
        description="The envelope's JSON Schema, generated from the pydantic models of domain/contract.py "
                    f"(contract v{CONTRACT_VERSION} §1), kept in the repository at contract/envelope.schema.json "
                    "and served at GET /schema/envelope.json. Run `write` after changing the models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("write", help="regenerate the schema file from the models")
    p.add_argument("--path", type=Path, default=ENVELOPE_SCHEMA_FILE, help="where to write [default: %(default)s]")
    p = sub.add_parser("check", help="exit 1 when the schema file differs from what the models give")
    p.add_argument("--path", type=Path, default=ENVELOPE_SCHEMA_FILE, help="the file to check [default: %(default)s]")
    args = parser.parse_args(argv)
    if args.command == "write":
        changed = write(args.path)
        print(f"{args.path}: {'written' if changed else 'already up to date'}")
        return 0
    if is_current(args.path):
        print(f"{args.path}: up to date")
        return 0
    print(f"{args.path}: differs from what the models in domain/contract.py give; run `{REGENERATE_COMMAND}`",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
