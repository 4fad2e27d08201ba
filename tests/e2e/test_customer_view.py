"""End to end, as a user: publish to Kafka (or POST /events), read GET /customers/{id}.

The expected views are computed here, from the events the test sent, by the contract's rules.
"""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient

from services.settings import Settings
from tests.conftest import settings_env
from tests.support import api_key, end_offsets, envelope, iso, new_customer_id, publish, serving, wait_for

pytestmark = pytest.mark.e2e

TYPES = ("call", "email", "purchase", "survey_response")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - localhost
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    """A key per role, as the systems and people using Rapport would each have."""
    return {role: api_key(settings, role, name=f"e2e {role}") for role in ("producer", "analyst", "auditor")}


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    """`rapport run` (two ingest processes, projector, API) on this test's topic; the API's base URL."""
    port = free_port()
    settings = settings.model_copy(update={"api_port": port})
    # Two ingest processes, as a busy installation runs them: every test here goes through both.
    with serving("run", settings_env(settings, RAPPORT_INGEST_PROCESSES="2"), port) as base:
        yield base


def expected_view(customer_id: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """contract §3, computed independently from the events (all fields but lifecycle)."""
    at = {id(e): datetime.fromisoformat(e["occurred_at"]) for e in events}
    latest = lambda es: max(es, key=lambda e: (at[id(e)], e["event_id"])) if es else None  # noqa: E731
    by_type = {t: [e for e in events if e["type"] == t] for t in TYPES}
    inbound = {t: [e for e in by_type[t] if e["data"].get("direction") == "inbound"] for t in ("call", "email")}
    if len(inbound["call"]) != len(inbound["email"]):
        preferred = "phone" if len(inbound["call"]) > len(inbound["email"]) else "email"
    elif not inbound["call"]:
        preferred = None
    else:
        preferred = "phone" if max(at[id(e)] for e in inbound["call"]) > max(at[id(e)] for e in inbound["email"]) else "email"
    revenue: dict[str, Decimal] = {}
    orders: dict[str, int] = {}
    for e in by_type["purchase"]:
        currency = e["data"]["currency"]
        revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(e["data"]["amount"])
        orders[currency] = orders.get(currency, 0) + 1
    nps = [e for e in by_type["survey_response"] if e["data"]["kind"] == "nps"]
    csat = [e for e in by_type["survey_response"] if e["data"]["kind"] == "csat"]
    last_nps = latest(nps)["data"]["score"] if nps else None
    category = None if last_nps is None else "promoter" if last_nps >= 9 else "passive" if last_nps >= 7 else "detractor"
    last = lambda es: iso(max(at[id(e)] for e in es)) if es else None  # noqa: E731
    return {
        "customer_id": customer_id,
        "name": (named := latest([e for e in events if e["customer"].get("name")])) and named["customer"]["name"],
        "emails": sorted({e["customer"]["email"] for e in events if e["customer"].get("email")}),
        "phones": sorted({e["customer"]["phone"] for e in events if e["customer"].get("phone")}),
        "first_seen_at": iso(min(at.values())),
        "last_seen_at": iso(max(at.values())),
        "interaction_counts": {t: len(by_type[t]) for t in TYPES},
        "last_contact_at": {t: last(by_type[t]) for t in TYPES},
        "preferred_channel": preferred,
        "purchases": {
            "count": len(by_type["purchase"]),
            "revenue": {c: str(v) for c, v in revenue.items()},
            "average_order_value": {c: str((v / orders[c]).quantize(Decimal("0.01"))) for c, v in revenue.items()},
            "last_purchase_at": last(by_type["purchase"]),
            "products": sorted({i["sku"] for e in by_type["purchase"] for i in e["data"].get("items", [])}),
        },
        "satisfaction": {
            "responses": len(by_type["survey_response"]),
            "last_nps_score": last_nps,
            "nps_category": category,
            "average_nps_score": round(sum(e["data"]["score"] for e in nps) / len(nps), 2) if nps else None,
            "last_csat_score": latest(csat)["data"]["score"] if csat else None,
        },
        # Identifiers in normal form: emails trimmed and lower-cased; these phones are E.164 already.
        "identity": {"identifiers": [f"id:{customer_id}",
                                     *sorted({f"email:{e['customer']['email'].strip().lower()}" for e in events
                                             if e["customer"].get("email")}),
                                     *sorted({f"phone:{e['customer']['phone']}" for e in events if e["customer"].get("phone")})],
                     "refused_links": []},
        # No value model fitted and no refresh in this test: revenue to date only (contract §6).
        "value": {"historical": {c: str(v) for c, v in revenue.items()}, "p_alive": None,
                  "expected_purchases_12m": None, "clv_12m": None, "model_version": None},
        "segment": None,
    }


def scenario(now: datetime) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Customers whose lifecycle stage and `since` are known by construction."""
    def ago(days: float) -> str:
        return iso(now - timedelta(days=days))

    def purchase(c: str, days: float, amount: str, currency: str = "USD", skus: tuple[str, ...] = ()) -> dict:
        items = [{"sku": s, "quantity": 1, "unit_price": amount} for s in skus[:1]]
        return envelope(c, "purchase", ago(days), {"order_id": f"o-{random.random()}", "amount": amount,
                                                   "currency": currency, "items": items}, email=f"{c}@example.com")

    out: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    a = new_customer_id()
    nps_at = now - timedelta(days=10)
    out[a] = ([
        envelope(a, "call", ago(60), {"direction": "inbound", "duration_seconds": 300}, name="Ana Old",
                 phone=f"+9477{int(a[-6:], 16) % 10**7:07d}"),  # each run's own: shared ones link customers
        envelope(a, "call", ago(50), {"direction": "inbound", "duration_seconds": 30, "outcome": "resolved"}),
        envelope(a, "email", ago(40), {"direction": "inbound", "subject": "order?"}, email=f"Ana.{a}@Example.com"),
        envelope(a, "email", ago(39), {"direction": "outbound"}, name="Ana Perera"),
        purchase(a, 30, "100.00", skus=("sku-9",)),
        purchase(a, 20, "50.50", skus=("sku-1",)),
        purchase(a, 15, "20.00", currency="EUR"),
        envelope(a, "survey_response", ago(25), {"kind": "nps", "score": 4}),
        envelope(a, "survey_response", iso(nps_at), {"kind": "nps", "score": 10, "comment": "great"}),
        envelope(a, "survey_response", ago(5), {"kind": "csat", "score": 4}),
    ], {"stage": "advocate", "since": iso(nps_at)})
    b = new_customer_id()
    out[b] = ([
        envelope(b, "email", ago(500), {"direction": "outbound", "campaign": "spring"}),
        purchase(b, 450, "10.00"),
        envelope(b, "call", ago(400), {"direction": "outbound", "duration_seconds": 0, "outcome": "no_answer"}),
    ], {"stage": "churned", "since": iso(now - timedelta(days=400) + timedelta(days=365))})
    c = new_customer_id()
    out[c] = ([
        purchase(c, 200, "99.99"),
        envelope(c, "email", ago(3), {"direction": "inbound"}),
    ], {"stage": "at_risk", "since": iso(now - timedelta(days=200) + timedelta(days=180))})
    return out


def test_customer_view_matches_the_events_whatever_their_order(settings: Settings, api: str, keys: dict[str, str]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    customers = scenario(now)
    messages = [e for events, _ in customers.values() for e in events]
    rng = random.Random(42)
    rng.shuffle(messages)
    duplicates = rng.sample(messages, 5)
    publish(settings, messages + duplicates)

    for customer_id, (events, lifecycle) in customers.items():
        expected = {**expected_view(customer_id, events), "lifecycle": lifecycle}

        def view_matches(customer_id: str = customer_id, expected: dict = expected) -> dict | None:
            status, body = http("GET", f"{api}/customers/{customer_id}", key=keys["analyst"])
            return body if status == 200 and body["interaction_counts"] == expected["interaction_counts"] else None

        body = wait_for(view_matches, timeout=60, what=f"the view of {customer_id}")
        assert body == expected


def test_events_posted_over_http_reach_the_view(settings: Settings, api: str, keys: dict[str, str]) -> None:
    customer = new_customer_id()
    events = [envelope(customer, "call", f"2026-0{m}-01T10:00:00+05:30", {"direction": "inbound", "duration_seconds": 9})
              for m in range(1, 4)]
    status, body = http("POST", f"{api}/events", events, key=keys["producer"])
    assert (status, body) == (202, {"accepted": [e["event_id"] for e in events]})
    view = wait_for(lambda: (r := http("GET", f"{api}/customers/{customer}", key=keys["analyst"]))[0] == 200 and r[1], timeout=60,
                    what="the posted events in the view")
    assert view["interaction_counts"]["call"] == 3
    assert view["first_seen_at"] == "2026-01-01T04:30:00Z"


def test_a_request_with_any_invalid_event_publishes_nothing(settings: Settings, api: str, keys: dict[str, str]) -> None:
    customer = new_customer_id()
    good = envelope(customer, "email", "2026-01-01T10:00:00Z", {"direction": "inbound"})
    bad = envelope(customer, "survey_response", "2026-01-01T10:00:00", {"kind": "nps", "score": 12})
    before = end_offsets(settings)
    status, body = http("POST", f"{api}/events", [good, bad], key=keys["producer"])
    assert status == 422
    [error] = body["errors"]
    assert error["index"] == 1 and error["event_id"] == bad["event_id"]
    assert "occurred_at" in error["reason"] and "data.score" in error["reason"]
    assert end_offsets(settings) == before
    status, body = http("POST", f"{api}/events", b"{not json", key=keys["producer"])
    assert status == 422 and "not valid JSON" in body["errors"][0]["reason"]


def test_unknown_customer_is_404_and_progress_is_visible(settings: Settings, api: str, keys: dict[str, str]) -> None:
    status, body = http("GET", f"{api}/customers/{new_customer_id()}", key=keys["analyst"])
    assert status == 404 and "no customer" in body["detail"]
    status, body = http("GET", f"{api}/customers/{new_customer_id()}?as_of=2026-01-01T00:00:00Z", key=keys["auditor"])
    assert status == 404 and "as_of" in body["detail"]  # unknown at that point in time (contract §5)
    customer = new_customer_id()
    publish(settings, [envelope(customer, "email", "2026-05-01T10:00:00Z", {"direction": "inbound"})])
    wait_for(lambda: http("GET", f"{api}/customers/{customer}", key=keys["analyst"])[0] == 200, timeout=60, what="the customer")
    status, body = http("GET", f"{api}/projections", key=keys["analyst"])
    assert status == 200
    assert {item["name"] for item in body["items"]} == {"customer_360", "lifecycle", "satisfaction", "timeline", "value"}
    for item in body["items"]:
        # the customer's Registered and EmailLogged events are at least two notifications
        assert item["head"] >= 2 and item["position"] >= 2
        assert item["lag"] == item["head"] - item["position"]
        assert item["lag_seconds"] >= 0 and item["parked"] == 0


def test_customer_ids_with_slashes_and_unicode_are_found(settings: Settings, api: str, keys: dict[str, str]) -> None:
    customer = f"crm/{new_customer_id()}/ü"
    publish(settings, [envelope(customer, "call", "2026-05-01T10:00:00Z", {"direction": "outbound",
                                                                           "duration_seconds": 5})])
    url = f"{api}/customers/{urllib.parse.quote(customer)}"
    status, body = wait_for(lambda: (r := http("GET", url, key=keys["analyst"]))[0] == 200 and r, timeout=60, what="the customer")
    assert body["customer_id"] == customer


def test_the_ingest_processes_of_rapport_run_share_the_partitions(settings: Settings, api: str, keys: dict[str, str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    try:
        def assignments() -> list[Any] | None:
            group = admin.describe_groups([settings.consumer_group])[settings.consumer_group]
            members = group["members"]
            return members if group["group_state"] == "Stable" and len(members) == 2 else None

        members = wait_for(assignments, timeout=60, what="two ingest processes in the consumer group")
    finally:
        admin.close()
    owned = [sorted(p for assigned in member["member_assignment"]["assigned_partitions"] for p in assigned["partitions"])
             for member in members]
    assert all(owned) and sorted(p for partitions in owned for p in partitions) == list(range(6)), owned
