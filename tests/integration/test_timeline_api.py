"""A customer's timeline through the HTTP API (contract §3), against the real Kafka and PostgreSQL.

Events go through the real broker, ingest and projector; the expected order is worked out here
from the contract's words: newest `occurred_at` first, ties by `event_id` descending (keyset
paging on that order). Every test has its own random customer, so nothing is shared.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventstore.store import InteractionLog
from services.settings import Settings
from tests.support import deliver, envelope, new_customer_id, parse

pytestmark = pytest.mark.integration

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")




def story(c: str) -> list[dict[str, Any]]:
    """Ten events of every type; three share one instant (told apart by event_id); offsets vary.
    Every optional field is given, so `data` comes back as sent (a call's in call data version 2:
    its duration in milliseconds). Event ids share the customer's
    prefix and differ in a final fixed-width part, so their order is the same in any collation."""
    def e(tag: str, event_type: str, at: str, data: dict[str, Any]) -> dict[str, Any]:
        return envelope(c, event_type, at, data, event_id=f"{c}:{tag}", name="Timeline Tester")

    call = {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun",
            "topic": "billing", "note": "kept as sent"}
    return [
        e("t01", "call", "2024-01-10T10:15:00+05:30", call),
        e("t02", "email", "2024-02-01T09:00:00Z", {"direction": "outbound", "subject": "Hi", "campaign": "spring"}),
        e("t03", "purchase", "2024-03-01T12:00:00-03:00",
          {"order_id": "o-1", "amount": "19.99", "currency": "USD", "channel": "web",
           "items": [{"sku": "sku-1", "quantity": 1, "unit_price": "19.99"}]}),
        e("t04", "survey_response", "2024-04-01T12:00:00Z",
          {"kind": "nps", "score": 9, "survey_id": "s-1", "comment": "good", "about_event_id": f"{c}:t03"}),
        e("t05", "survey_response", "2024-06-01T12:00:00Z", {"kind": "csat", "score": 4, "survey_id": "s-2",
                                                              "comment": "ok", "about_event_id": f"{c}:t01"}),
        e("t06", "call", "2024-06-01T14:00:00+02:00", {**call, "direction": "outbound"}),  # same instant as t05
        e("t07", "email", "2024-06-01T12:00:00.000000Z", {"direction": "inbound", "subject": "Re", "campaign": "x"}),
        e("t08", "call", "2024-07-01T00:00:00.5Z", {**call, "duration_seconds": 0, "outcome": "no_answer"}),
        e("t09", "purchase", "2024-08-01T23:59:59.999999Z",
          {"order_id": "o-2", "amount": "5", "currency": "EUR", "channel": "shop",
           "items": [{"sku": "sku-2", "quantity": 5, "unit_price": "1"}]}),
        e("t10", "email", "2025-01-01T00:00:00Z", {"direction": "inbound", "subject": "Happy new year",
                                                   "campaign": "none"}),
    ]


def as_stored(message: dict[str, Any]) -> dict[str, Any]:
    """The data of a message as events are stored and shown: a version 1 call's seconds as milliseconds."""
    data = message["data"]
    if message["type"] != "call" or "duration_ms" in data:
        return data
    return {("duration_ms" if k == "duration_seconds" else k): (v * 1000 if k == "duration_seconds" else v)
            for k, v in data.items()}


def newest_first(messages: list[dict[str, Any]]) -> list[str]:
    return [m["event_id"] for m in sorted(messages, key=lambda m: (parse(m["occurred_at"]), m["event_id"]),
                                          reverse=True)]


def page(client: TestClient, c: str, **query: Any) -> dict[str, Any]:
    response = client.get(f"/customers/{c}/timeline", params=query)
    assert response.status_code == 200, (query, response.status_code, response.text)
    return response.json()


def every_page(client: TestClient, c: str, limit: int, cursor: str | None = None) -> list[list[dict[str, Any]]]:
    pages = []
    for _ in range(1000):
        body = page(client, c, limit=limit, **({"cursor": cursor} if cursor else {}))
        assert len(body["items"]) <= limit
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("paging does not end")


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["event_id"] for i in items]


def test_timeline_lists_the_events_newest_first_with_ties_by_event_id_descending(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = story(c)
    deliver(settings, store, messages)

    body = page(client, c, limit=500)
    assert body["next_cursor"] is None
    assert ids(body["items"]) == newest_first(messages)
    assert ids(body["items"])[3:6] == [f"{c}:t07", f"{c}:t06", f"{c}:t05"]  # one instant, event_id descending
    default = page(client, c)  # limit 50 by default: all ten
    assert default == body


def test_timeline_items_carry_the_event_as_stored_with_times_in_utc(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = story(c)
    deliver(settings, store, messages)

    items = {i["event_id"]: i for i in page(client, c, limit=500)["items"]}
    assert set(items) == {m["event_id"] for m in messages}
    for message in messages:
        item = items[message["event_id"]]
        assert set(item) >= {"event_id", "type", "occurred_at", "source", "data"}, item
        assert item["type"] == message["type"]
        assert item["source"] == "tests"
        assert item["data"] == as_stored(message), item
        assert RFC3339_UTC.match(item["occurred_at"]), item
        assert parse(item["occurred_at"]) == parse(message["occurred_at"])
    assert items[f"{c}:t01"]["occurred_at"] == "2024-01-10T04:45:00Z"
    assert items[f"{c}:t03"]["occurred_at"] == "2024-03-01T15:00:00Z"
    assert parse(items[f"{c}:t08"]["occurred_at"]) == datetime(2024, 7, 1, 0, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("limit", [1, 3, 4, 9, 10])
def test_paging_visits_every_event_once_in_order(
        settings: Settings, store: InteractionLog, client: TestClient, limit: int) -> None:
    c = new_customer_id()
    messages = story(c)
    deliver(settings, store, messages)

    pages = every_page(client, c, limit)
    assert all(len(p) == limit for p in pages[:-1]), [len(p) for p in pages]
    assert [e for p in pages for e in ids(p)] == newest_first(messages)
    assert len(pages) in (-(-len(messages) // limit), -(-len(messages) // limit) + 1)  # at most one empty last page


def test_pages_are_stable_while_events_are_stored_between_them(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = story(c)
    deliver(settings, store, messages)

    first = page(client, c, limit=5)
    # newest first: t10, t09, t08, t07, t06 | t05, t04, ... — the cursor sits inside the three-way tie
    assert ids(first["items"]) == newest_first(messages)[:5] == [f"{c}:t{n}" for n in ("10", "09", "08", "07", "06")]
    tie = "2024-06-01T12:00:00Z"

    def late(tag: str, at: str) -> dict[str, Any]:
        return envelope(c, "call", at, {"direction": "inbound", "duration_seconds": 5}, event_id=f"{c}:{tag}")

    arrivals = [
        late("t11", "2025-06-01T00:00:00Z"),     # newer than everything: before the cursor
        late("t06z", tie),                       # the cursor's instant, greater event_id: before the cursor
        late("t05a", tie),                       # the cursor's instant, smaller event_id: after it
        late("t03a", "2024-03-15T00:00:00Z"),    # older than the cursor: after it
        late("t00", "2023-01-01T00:00:00Z"),     # oldest of all: after it
    ]
    deliver(settings, store, arrivals)

    rest = [item for p in every_page(client, c, 2, cursor=first["next_cursor"]) for item in p]
    cursor_key = (parse(first["items"][-1]["occurred_at"]), first["items"][-1]["event_id"])
    everything = messages + arrivals
    expected_rest = [e for e in newest_first(everything)
                     if (parse(next(m["occurred_at"] for m in everything if m["event_id"] == e)), e) < cursor_key]
    assert ids(rest) == expected_rest
    assert ids(rest) == [f"{c}:t{n}" for n in ("05a", "05", "04", "03a", "03", "02", "01", "00")]
    seen = ids(first["items"]) + ids(rest)
    assert len(seen) == len(set(seen)), "no event twice"
    assert set(seen) == {m["event_id"] for m in everything} - {f"{c}:t11", f"{c}:t06z"}
    # A new reading from the start has them all, in order.
    assert [e for p in every_page(client, c, 4) for e in ids(p)] == newest_first(everything)


def test_the_default_page_holds_fifty_events(settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = [envelope(c, "email", f"2024-03-{day:02d}T{hour:02d}:00:00Z", {"direction": "inbound"},
                         event_id=f"{c}:m{day:02d}{hour:02d}") for day in range(1, 31) for hour in (8, 16)]
    deliver(settings, store, messages)

    first = page(client, c)
    assert ids(first["items"]) == newest_first(messages)[:50]
    assert first["next_cursor"] is not None
    second = page(client, c, cursor=first["next_cursor"])
    assert ids(second["items"]) == newest_first(messages)[50:]
    assert second["next_cursor"] is None


def test_unknown_customer_timeline_is_404(client: TestClient) -> None:
    response = client.get(f"/customers/{new_customer_id()}/timeline")
    assert response.status_code == 404
    assert response.json()["detail"]


@pytest.mark.parametrize("cursor", [
    "garbage",
    "!!!",
    base64.urlsafe_b64encode(b'{"not": "a cursor"}').decode(),
    base64.urlsafe_b64encode(b'["2024-01-01T00:00:00", "x"]').decode(),  # a naive time
    base64.urlsafe_b64encode(b'["yesterday", "x"]').decode(),
])
def test_a_garbage_cursor_is_422_naming_the_cursor(
        settings: Settings, store: InteractionLog, client: TestClient, cursor: str) -> None:
    c = new_customer_id()
    deliver(settings, store, story(c)[:2])
    response = client.get(f"/customers/{c}/timeline", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "cursor" in detail, detail


@pytest.mark.parametrize(("limit", "status"), [(0, 422), (-1, 422), (501, 422), ("ten", 422), (1, 200), (500, 200)])
def test_limit_must_be_1_to_500(settings: Settings, store: InteractionLog, client: TestClient,
                                limit: Any, status: int) -> None:
    c = new_customer_id()
    deliver(settings, store, story(c)[:2])
    response = client.get(f"/customers/{c}/timeline", params={"limit": limit})
    assert response.status_code == status, response.text
    if status == 422:
        detail = response.json()["detail"]
        assert detail, response.text
        located = isinstance(detail, list) and all("limit" in e.get("loc", []) for e in detail)
        assert located or (isinstance(detail, str) and "limit" in detail), detail
    else:
        assert len(response.json()["items"]) == min(limit, 2)


@pytest.mark.parametrize("limit", [0, 501])
def test_a_bad_limit_is_explained_in_a_detail_sentence(client: TestClient, limit: int) -> None:
    """README, decisions: "errors carry `detail`, a sentence" — also for the bounds FastAPI checks."""
    response = client.get(f"/customers/{new_customer_id()}/timeline", params={"limit": limit})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "limit" in detail, f"detail is not a sentence: {detail!r}"
