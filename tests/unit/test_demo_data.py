"""The demo data set: deterministic, realistic, and true to contract v1 section 1.

The rule checker below is written here from the contract text on purpose, independent of the
project's validation code.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import pytest

from tools.demo_data import DemoDataSet, generate_demo_data

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TYPES = ("call", "email", "purchase", "survey_response")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$")


# --- an independent reading of contract v1 section 1 ------------------------------------------

def parse_rfc3339(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    offset = timedelta(0)
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        offset = -offset if m.group(9) == "-" else offset
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        number = Decimal(str(value).strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _data_violation(kind: str, data: dict, version: int = 1) -> str | None:
    if kind in ("call", "email") and data.get("direction") not in ("inbound", "outbound"):
        return f"{kind}: bad direction"
    if kind == "call":
        # version 1: duration_seconds; version 2: duration_ms, without the other
        field, other = ("duration_ms", "duration_seconds") if version == 2 else ("duration_seconds", "duration_ms")
        duration = data.get(field)
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration < 0:
            return f"call: bad {field}"
        if other in data:
            return f"call: {other} in version {version}"
        if "outcome" in data and data["outcome"] not in (
                "resolved", "unresolved", "voicemail", "no_answer"):
            return "call: bad outcome"
    if kind == "purchase":
        if not data.get("order_id"):
            return "purchase: no order_id"
        amount = _decimal(data.get("amount"))
        if amount is None:
            return "purchase: amount not a decimal"
        if amount < 0:
            return "purchase: negative amount"
        if not isinstance(data.get("currency"), str) or not re.fullmatch(r"[A-Z]{3}",
                                                                          data["currency"]):
            return "purchase: bad currency"
        items = data.get("items", [])
        if not isinstance(items, list):
            return "purchase: items not a list"
        for item in items:
            if not isinstance(item, dict) or "sku" not in item or "unit_price" not in item:
                return "purchase: bad item"
            if not _is_int(item.get("quantity")) or item["quantity"] <= 0:
                return "purchase: item quantity not > 0"
    if kind == "survey_response":
        ranges = {"nps": (0, 10), "csat": (1, 5)}
        if data.get("kind") not in ranges:
            return "survey: bad kind"
        score = data.get("score")
        if not _is_int(score):
            return "survey: score not an integer"
        low, high = ranges[data["kind"]]
        if not low <= score <= high:
            return "survey: score out of range"
    return None


def contract_violation(value: bytes) -> str | None:
    """The first rule of contract v1 section 1 that a message value breaks, else None."""
    if len(value) > 1024 * 1024:
        return "larger than 1 MiB"
    try:
        envelope = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not JSON"
    if not isinstance(envelope, dict):
        return "not a JSON object"
    event_id = envelope.get("event_id")
    if not isinstance(event_id, str):
        return "no event_id"
    if not 1 <= len(event_id) <= 200:
        return "event_id length"
    if envelope.get("type") not in TYPES:
        return "unknown type"
    if "occurred_at" not in envelope:
        return "no occurred_at"
    if parse_rfc3339(envelope["occurred_at"]) is None:
        return "occurred_at not RFC 3339 with offset"
    customer = envelope.get("customer")
    if not isinstance(customer, dict):
        return "no customer"
    if not any(isinstance(customer.get(f), str) and customer[f] for f in ("id", "email", "phone")):
        return "customer without id/email/phone"
    version = envelope.get("version", 1)
    if not _is_int(version) or version not in ((1, 2) if envelope["type"] == "call" else (1,)):
        return "bad version"
    if not isinstance(envelope.get("data"), dict):
        return "no data"
    return _data_violation(envelope["type"], envelope["data"], version)


def customer_key(envelope: dict) -> bytes:
    ref = envelope["customer"]
    return (ref.get("id") or ref.get("email") or ref["phone"]).encode()


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small() -> DemoDataSet:
    return generate_demo_data(customers=200, events=5_000, now=NOW, seed=11)


def valid_envelopes(ds: DemoDataSet) -> list[dict]:
    return [json.loads(m.value) for m in ds.messages if m.kind == "valid"]


# --- tests -----------------------------------------------------------------------------------

def test_same_seed_gives_the_same_messages(small: DemoDataSet) -> None:
    again = generate_demo_data(customers=200, events=5_000, now=NOW, seed=11)
    assert again == small
    other = generate_demo_data(customers=200, events=5_000, now=NOW, seed=12)
    assert other.messages != small.messages


def test_counts_add_up(small: DemoDataSet) -> None:
    kinds = Counter(m.kind for m in small.messages)
    assert kinds == {"valid": 5_000, "duplicate": 50, "invalid": 25, "conflict": 5}
    ids = [e["event_id"] for e in valid_envelopes(small)]
    assert len(set(ids)) == len(ids) == small.valid_events == 5_000


def test_duplicates_repeat_and_conflicts_change_an_earlier_valid_event(small: DemoDataSet) -> None:
    seen: dict[str, dict] = {}
    reserialized = 0
    for m in small.messages:
        envelope = json.loads(m.value) if m.kind != "invalid" else None
        if m.kind == "valid":
            seen[envelope["event_id"]] = envelope
        elif m.kind == "duplicate":
            assert seen[envelope["event_id"]] == envelope
            reserialized += m.value != json.dumps(envelope, separators=(",", ":"),
                                                  ensure_ascii=False).encode()
        elif m.kind == "conflict":
            original = seen[envelope["event_id"]]
            assert original != envelope
            assert contract_violation(m.value) is None
            assert m.key == customer_key(original)
    assert 0 < reserialized < 50


def test_all_four_types_appear_in_a_business_like_mix(small: DemoDataSet) -> None:
    types = Counter(e["type"] for e in valid_envelopes(small))
    share = {t: types[t] / 5_000 for t in TYPES}
    assert 0.24 <= share["call"] <= 0.36
    assert 0.29 <= share["email"] <= 0.41
    assert 0.14 <= share["purchase"] <= 0.26
    assert 0.10 <= share["survey_response"] <= 0.20


def test_every_customer_has_events_and_one_set_of_identifiers(small: DemoDataSet) -> None:
    identifiers: dict[bytes, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for m in small.messages:
        if m.kind == "valid":
            envelope = json.loads(m.value)
            assert m.key == customer_key(envelope)
            for field, value in envelope["customer"].items():
                identifiers[m.key][field].add(value)
    assert len(identifiers) >= 200 and small.customers == len(identifiers)
    for fields in identifiers.values():
        assert all(len(values) == 1 for values in fields.values())
    email_only = [k for k, f in identifiers.items() if "id" not in f]
    assert email_only and all(b"@" in k and "phone" not in identifiers[k] for k in email_only)
    assert all(re.fullmatch(r"crm-\d{6}", next(iter(f["id"])))
               for f in identifiers.values() if "id" in f)
    assert all(re.fullmatch(r"\+[1-9]\d{7,14}", p)
               for f in identifiers.values() for p in f.get("phone", ()))


def test_time_span_covers_the_months_and_nothing_is_in_the_future(small: DemoDataSet) -> None:
    times = [parse_rfc3339(e["occurred_at"]) for e in valid_envelopes(small)]
    assert max(times) <= NOW
    assert max(times) >= NOW - timedelta(days=3)
    assert NOW - timedelta(days=550) <= min(times) <= NOW - timedelta(days=520)
    offsets = Counter(e["occurred_at"][19:].lstrip(".0123456789") for e in valid_envelopes(small))
    assert {"Z", "+00:00", "+05:30", "-05:00"} <= set(offsets)
    assert offsets["Z"] + offsets["+00:00"] > 0.7 * 5_000


def test_publish_order_is_not_sorted_and_has_late_arrivals(small: DemoDataSet) -> None:
    times = [parse_rfc3339(e["occurred_at"]) for e in valid_envelopes(small)]
    assert times != sorted(times)
    latest = times[0]
    late = 0
    for t in times:
        late += t < latest - timedelta(days=7)
        latest = max(latest, t)
    assert 0.01 * 5_000 <= late <= 0.04 * 5_000


def test_every_purchase_amount_is_the_sum_of_its_items(small: DemoDataSet) -> None:
    currencies = Counter()
    for m in small.messages:
        if m.kind in ("valid", "duplicate", "conflict"):
            envelope = json.loads(m.value)
            if envelope["type"] == "purchase":
                data = envelope["data"]
                assert re.fullmatch(r"\d+\.\d{2}", data["amount"])
                total = sum(Decimal(i["unit_price"]) * i["quantity"] for i in data["items"])
                assert Decimal(data["amount"]) == total
                currencies[data["currency"]] += 1
    assert currencies.most_common(1)[0][0] == "USD"
    assert {"EUR", "GBP", "LKR"} <= set(currencies)


def test_valid_messages_keep_the_contract(small: DemoDataSet) -> None:
    for m in small.messages:
        if m.kind != "invalid":
            assert contract_violation(m.value) is None, m.value
    extras = [e for e in valid_envelopes(small)
              if set(e) - {"event_id", "type", "occurred_at", "customer", "source", "version",
                           "data"}]
    assert extras


def test_one_phone_system_sends_its_recent_calls_in_version_2_with_milliseconds(small: DemoDataSet) -> None:
    calls = [e for e in valid_envelopes(small) if e["type"] == "call"]
    v2 = [e for e in calls if e.get("version") == 2]
    assert 0.05 * len(calls) <= len(v2) <= 0.5 * len(calls)
    assert {e["source"] for e in v2} == {"pbx-02"}
    assert all(parse_rfc3339(e["occurred_at"]) >= NOW - timedelta(days=90) for e in v2)
    assert all("duration_ms" in e["data"] and "duration_seconds" not in e["data"] for e in v2)
    assert any(e["data"]["duration_ms"] % 1000 for e in v2)  # milliseconds, not whole seconds × 1000
    older = [e for e in calls if e["source"] == "pbx-02" and parse_rfc3339(e["occurred_at"]) < NOW - timedelta(days=91)]
    assert older and all(e.get("version", 1) == 1 and "duration_seconds" in e["data"] for e in older)


def test_every_invalid_message_breaks_a_rule(small: DemoDataSet) -> None:
    reasons = Counter()
    valid_keys = {m.key for m in small.messages if m.kind == "valid"}
    for m in small.messages:
        if m.kind == "invalid":
            reason = contract_violation(m.value)
            assert reason is not None, m.value
            reasons[reason] += 1
            assert m.key is None or m.key in valid_keys
    assert len(reasons) >= 15, reasons
    assert {"not JSON", "not a JSON object", "no event_id", "event_id length", "unknown type",
            "no occurred_at", "occurred_at not RFC 3339 with offset", "no customer",
            "customer without id/email/phone", "no data"} <= set(reasons)


def test_invalid_variants_are_spread_evenly() -> None:
    ds = generate_demo_data(customers=300, events=20_000, now=NOW, seed=3)
    reasons = Counter(contract_violation(m.value) for m in ds.messages if m.kind == "invalid")
    assert None not in reasons
    assert sum(reasons.values()) == 100
    assert max(reasons.values()) <= 20


def lifecycle_stage(events: list[dict], as_of: datetime) -> str:
    """Contract section 4, with the default thresholds."""
    events = sorted(events, key=lambda e: parse_rfc3339(e["occurred_at"]))
    latest = parse_rfc3339(events[-1]["occurred_at"])
    surveys = [e["data"] for e in events if e["type"] == "survey_response"]
    purchases = [e for e in events if e["type"] == "purchase"]
    nps = [s["score"] for s in surveys if s["kind"] == "nps"]
    if latest < as_of - timedelta(days=365):
        return "churned"
    if surveys and ((surveys[-1]["kind"] == "nps" and surveys[-1]["score"] < 6)
                    or (surveys[-1]["kind"] == "csat" and surveys[-1]["score"] < 3)):
        return "at_risk"
    if purchases and parse_rfc3339(purchases[-1]["occurred_at"]) < as_of - timedelta(days=180):
        return "at_risk"
    if len(purchases) >= 2 and nps and nps[-1] >= 9:
        return "advocate"
    return {0: "reached", 1: "acquired"}.get(len(purchases), "retained")


def test_every_lifecycle_stage_is_represented(small: DemoDataSet) -> None:
    by_customer: dict[bytes, list[dict]] = defaultdict(list)
    for m in small.messages:
        if m.kind == "valid":
            by_customer[m.key].append(json.loads(m.value))
    stages = Counter(lifecycle_stage(events, NOW) for events in by_customer.values())
    assert set(stages) == {"reached", "acquired", "retained", "advocate", "at_risk", "churned"}
    assert all(n >= 0.03 * 200 for n in stages.values()), stages


def test_sample_customers_have_all_four_types(small: DemoDataSet) -> None:
    assert 1 <= len(small.sample_customer_ids) <= 5
    types: dict[bytes, set[str]] = defaultdict(set)
    for m in small.messages:
        if m.kind == "valid":
            types[m.key].add(json.loads(m.value)["type"])
    for customer_id in small.sample_customer_ids:
        assert types[customer_id.encode()] == set(TYPES)


def test_surveys_point_at_earlier_events_of_the_same_customer(small: DemoDataSet) -> None:
    events = {e["event_id"]: e for e in valid_envelopes(small)}
    abouts = [e for e in events.values()
              if e["type"] == "survey_response" and "about_event_id" in e["data"]]
    assert abouts
    for survey in abouts:
        target = events[survey["data"]["about_event_id"]]
        assert customer_key(target) == customer_key(survey)
        assert parse_rfc3339(target["occurred_at"]) <= parse_rfc3339(survey["occurred_at"])


def test_the_defaults_are_complete() -> None:
    before = datetime.now(UTC)
    ds = generate_demo_data()
    assert Counter(m.kind for m in ds.messages) == {
        "valid": 50_000, "duplicate": 500, "invalid": 250, "conflict": 50}
    assert ds.customers == 2_000 and ds.valid_events == 50_000
    latest = max(parse_rfc3339(json.loads(m.value)["occurred_at"])
                 for m in ds.messages if m.kind == "valid")
    assert latest <= datetime.now(UTC) and latest >= before - timedelta(days=3)
