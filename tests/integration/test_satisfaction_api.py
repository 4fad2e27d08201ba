"""Satisfaction read models through the HTTP API (contract §3, §3b), against the real Kafka and PostgreSQL.

Events go through the real broker, ingest and projector. Expected values are worked out by hand
or by small reference functions written here from the contract's words (never from domain/ or
projections/). Each test keeps to its own years (1991–1999), where no other test has data:
the trend windows are checked to be empty before publishing, revenue by category is compared as
differences, and the alarm list (which reaches up to today) is filtered to this test's customers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventstore.store import InteractionLog
from services.settings import Settings
from tests.support import deliver, envelope, iso, new_customer_id, parse

pytestmark = pytest.mark.integration

CATEGORIES = ["promoter", "passive", "detractor", "none"]
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")




def get_ok(client: TestClient, path: str, **query: Any) -> dict[str, Any]:
    response = client.get(path, params=query)
    assert response.status_code == 200, (path, query, response.status_code, response.text)
    return response.json()


def survey(c: str, at: str, kind: str, score: int, tag: str | None = None, about: str | None = None,
           **customer: str) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": kind, "score": score}
    if about is not None:
        data["about_event_id"] = about
    return envelope(c, "survey_response", at, data, event_id=f"{c}:{tag}" if tag else None, **customer)


def call(c: str, at: str, tag: str, **customer: str) -> dict[str, Any]:
    return envelope(c, "call", at, {"direction": "inbound", "duration_seconds": 30}, event_id=f"{c}:{tag}",
                    **customer)


def email(c: str, at: str, tag: str, **customer: str) -> dict[str, Any]:
    return envelope(c, "email", at, {"direction": "inbound", "subject": "hello"}, event_id=f"{c}:{tag}", **customer)


def purchase(c: str, at: str, tag: str, amount: str, currency: str = "USD", **customer: str) -> dict[str, Any]:
    return envelope(c, "purchase", at, {"order_id": f"o-{tag}", "amount": amount, "currency": currency},
                    event_id=f"{c}:{tag}", **customer)


# --------------------------------------------------------------------------------------------
# GET /satisfaction/trend — reference from §3's words


@dataclass(frozen=True)
class Answer:
    at: datetime
    kind: str
    score: int
    channel: str


def answer(message: dict[str, Any], channel: str = "unknown") -> Answer:
    return Answer(parse(message["occurred_at"]), message["data"]["kind"], message["data"]["score"], channel)


def period_start(day: date, granularity: str) -> date:
    return {"day": day, "week": day - timedelta(days=day.weekday()), "month": day.replace(day=1)}[granularity]


def reference_trend(answers: list[Answer], kind: str, granularity: str, start: date, end: date,
                    channel: str | None = None) -> list[dict[str, Any]]:
    lower, upper = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (start, end))
    buckets: dict[date, list[int]] = defaultdict(list)
    for a in answers:
        if a.kind == kind and lower <= a.at < upper and channel in (None, a.channel):
            buckets[period_start(a.at.date(), granularity)].append(a.score)
    points = []
    for first, scores in sorted(buckets.items()):
        point: dict[str, Any] = {"period_start": first.isoformat(), "responses": len(scores),
                                 "average": sum(scores) / len(scores)}
        if kind == "nps":
            promoters = sum(1 for s in scores if s >= 9)
            detractors = sum(1 for s in scores if s <= 6)
            point |= {"promoters": promoters, "passives": len(scores) - promoters - detractors,
                      "detractors": detractors, "nps": 100 * (promoters - detractors) / len(scores)}
        else:
            point["csat"] = 100 * sum(1 for s in scores if s >= 4) / len(scores)
        points.append(point)
    return points


NPS_FIELDS = {"promoters", "passives", "detractors", "nps"}


def trend(client: TestClient, kind: str, granularity: str, start: date, end: date,
          channel: str | None = None) -> list[dict[str, Any]]:
    query = {"kind": kind, "granularity": granularity, "from": f"{start}T00:00:00Z", "to": f"{end}T00:00:00Z"}
    if channel:
        query["channel"] = channel
    return get_ok(client, "/satisfaction/trend", **query)["points"]


def assert_points(actual: list[dict[str, Any]], expected: list[dict[str, Any]], kind: str) -> None:
    """Counts exactly; the ratios to within 0.01 (the contract fixes no rounding)."""
    assert [p["period_start"] for p in actual] == [p["period_start"] for p in expected], actual
    for got, want in zip(actual, expected, strict=True):
        assert set(want) <= set(got), got
        if kind == "csat":
            assert not NPS_FIELDS & set(got), f"csat points carry csat instead of the NPS fields: {got}"
        for field, value in want.items():
            if isinstance(value, float):
                assert got[field] == pytest.approx(value, abs=0.01), (field, got, want)
            else:
                assert got[field] == value, (field, got, want)


def test_nps_trend_buckets_by_utc_day_iso_week_and_month_in_a_half_open_window(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    start, end = date(1991, 1, 7), date(1991, 3, 4)  # both Mondays
    people = [new_customer_id() for _ in range(3)]
    scored = [
        ("1991-01-06T23:59:59Z", 10),          # before `from`
        ("1991-01-07T00:30:00+01:00", 0),      # 1991-01-06T23:30Z: before `from` in UTC
        ("1991-01-07T00:00:00Z", 10),          # `from` is inclusive
        ("1991-01-07T23:30:00-01:00", 6),      # 1991-01-08T00:30Z: the next UTC day
        ("1991-01-13T12:00:00Z", 8),           # Sunday: still the week of Monday 01-07
        ("1991-01-14T00:00:00Z", 9),           # Monday: a new ISO week
        ("1991-01-31T23:59:59Z", 3),           # January; week of Monday 01-28
        ("1991-02-01T00:00:00Z", 7),           # February; same week as the one above
        ("1991-02-20T10:00:00Z", 9), ("1991-02-20T11:00:00Z", 10), ("1991-02-20T12:00:00Z", 5),
        ("1991-03-04T00:00:00Z", 0),           # `to` is exclusive
    ]
    messages = [survey(people[i % 3], at, "nps", score) for i, (at, score) in enumerate(scored)]
    messages.append(survey(people[0], "1991-01-20T10:00:00Z", "csat", 1))  # another kind: not in NPS
    assert trend(client, "nps", "day", date(1990, 12, 1), date(1991, 4, 1)) == [], "1991 is this test's own"
    deliver(settings, store, messages)

    answers = [answer(m) for m in messages]
    expected = {g: reference_trend(answers, "nps", g, start, end) for g in ("day", "week", "month")}
    # The reference agrees with a reading by hand:
    assert [(p["period_start"], p["responses"], p["nps"]) for p in expected["week"]] == [
        ("1991-01-07", 3, 0.0), ("1991-01-14", 1, 100.0), ("1991-01-28", 2, -50.0), ("1991-02-18", 3, 100 / 3)]
    assert [(p["period_start"], p["promoters"], p["passives"], p["detractors"], p["average"])
            for p in expected["month"]] == [("1991-01-01", 2, 1, 2, 7.2), ("1991-02-01", 2, 1, 1, 7.75)]
    assert len(expected["day"]) == 7  # empty days are left out
    for granularity, points in expected.items():
        assert_points(trend(client, "nps", granularity, start, end), points, "nps")


def test_csat_trend_gives_the_share_of_four_and_five_and_the_average(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    start, end = date(1992, 3, 2), date(1992, 4, 1)
    c = new_customer_id()
    messages = [survey(c, at, "csat", score) for at, score in [
        ("1992-03-02T08:00:00Z", 5), ("1992-03-02T09:00:00Z", 4), ("1992-03-02T10:00:00Z", 3),
        ("1992-03-10T08:00:00Z", 1), ("1992-03-10T09:00:00Z", 2),
        ("1992-03-31T23:00:00Z", 4),
        ("1992-04-01T00:00:00Z", 5),           # `to` is exclusive
    ]]
    messages.append(survey(c, "1992-03-05T10:00:00Z", "nps", 10))  # another kind: not in CSAT
    assert trend(client, "csat", "day", date(1992, 1, 1), date(1992, 6, 1)) == [], "1992 is this test's own"
    deliver(settings, store, messages)

    answers = [answer(m) for m in messages]
    expected = {g: reference_trend(answers, "csat", g, start, end) for g in ("day", "week", "month")}
    assert [(p["period_start"], p["responses"], p["average"], p["csat"]) for p in expected["day"]] == [
        ("1992-03-02", 3, 4.0, 200 / 3), ("1992-03-10", 2, 1.5, 0.0), ("1992-03-31", 1, 4.0, 100.0)]
    assert [(p["responses"], p["csat"]) for p in expected["month"]] == [(6, 50.0)]
    for granularity, points in expected.items():
        assert_points(trend(client, "csat", granularity, start, end), points, "csat")


def test_trend_by_channel_follows_the_about_event_even_when_it_arrives_later(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    start, end = date(1993, 3, 1), date(1993, 4, 1)
    x, y, z = new_customer_id(), new_customer_id(), new_customer_id()
    x_call = call(x, "1993-03-09T10:00:00Z", "call")
    about_x_call = survey(x, "1993-03-10T10:00:00Z", "nps", 9, about=x_call["event_id"])
    y_mail = email(y, "1993-03-02T10:00:00Z", "mail")
    y_buy = purchase(y, "1993-03-03T10:00:00Z", "buy", "10.00")
    about_y_mail = survey(y, "1993-03-11T10:00:00Z", "nps", 4, about=y_mail["event_id"])
    about_y_buy = survey(y, "1993-03-12T10:00:00Z", "csat", 5, about=y_buy["event_id"])
    about_someone_else = survey(y, "1993-03-13T10:00:00Z", "nps", 7, about=x_call["event_id"])
    about_nothing = survey(z, "1993-03-14T10:00:00Z", "nps", 10)
    about_missing = survey(z, "1993-03-15T10:00:00Z", "nps", 2, about=f"{z}:never-sent")
    about_a_survey = survey(z, "1993-03-16T10:00:00Z", "nps", 8, about=about_nothing["event_id"])  # not a channel
    assert trend(client, "nps", "month", start, end) == [], "1993 is this test's own"

    deliver(settings, store, [about_x_call, y_mail, y_buy, about_y_mail, about_y_buy, about_someone_else,
                              about_nothing, about_missing, about_a_survey])
    first = [answer(about_x_call, "unknown"), answer(about_y_mail, "email"), answer(about_y_buy, "purchase"),
             answer(about_someone_else, "unknown"), answer(about_nothing, "unknown"), answer(about_missing, "unknown"),
             answer(about_a_survey, "unknown")]
    for kind in ("nps", "csat"):
        for channel in (None, "phone", "email", "purchase", "unknown"):
            assert_points(trend(client, kind, "month", start, end, channel),
                          reference_trend(first, kind, "month", start, end, channel), kind)
    assert trend(client, "nps", "month", start, end, "phone") == []
    assert [p["responses"] for p in trend(client, "nps", "month", start, end, "unknown")] == [5]

    deliver(settings, store, [x_call])  # the call the first answer is about arrives late
    second = [answer(about_x_call, "phone"), *first[1:]]
    for kind in ("nps", "csat"):
        for channel in (None, "phone", "email", "purchase", "unknown"):
            assert_points(trend(client, kind, "month", start, end, channel),
                          reference_trend(second, kind, "month", start, end, channel), kind)
    assert [(p["responses"], p["promoters"]) for p in trend(client, "nps", "month", start, end, "phone")] == [(1, 1)]
    assert [p["responses"] for p in trend(client, "nps", "month", start, end, "unknown")] == [4]
    assert [p["responses"] for p in trend(client, "nps", "month", start, end)] == [6]  # totals unchanged


# --------------------------------------------------------------------------------------------
# GET /satisfaction/alarms


def alarm_pages(client: TestClient, since: str, limit: int) -> list[dict[str, Any]]:
    """Every item, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        query: dict[str, Any] = {"since": since, "limit": limit}
        if cursor:
            query["cursor"] = cursor
        body = get_ok(client, "/satisfaction/alarms", **query)
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging does not end")


def assert_alarm_list(items: list[dict[str, Any]], since: datetime) -> None:
    """One item per customer, newest answer first, every answer at or after since and an alarm."""
    assert len({i["customer_id"] for i in items}) == len(items), "each customer once"
    keys = [(parse(i["answered_at"]), i["event_id"]) for i in items]
    assert [k[0] for k in keys] == sorted((k[0] for k in keys), reverse=True), "newest answer first"
    for item in items:
        assert parse(item["answered_at"]) >= since
        assert RFC3339_UTC.match(item["answered_at"]), item
        assert item["kind"] in ("nps", "csat"), item
        assert item["score"] < (6 if item["kind"] == "nps" else 3), f"not an alarm answer: {item}"


def test_alarms_list_customers_whose_latest_answer_is_an_alarm_newest_first_paged_once_each(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    since = datetime(1994, 1, 1, tzinfo=UTC)
    a, b, c, d, e, f, g, h, j, k, m, x = (new_customer_id() for _ in range(12))

    def named(who: str) -> dict[str, str]:
        return {"name": f"Alarm {who}"}

    a_call = call(a, "1994-02-01T10:00:00Z", "call", **named("A"))
    answers = {
        a: survey(a, "1994-03-01T10:00:00Z", "nps", 3, "n", about=a_call["event_id"], **named("A")),
        b: survey(b, "1994-03-02T10:00:00Z", "csat", 2, "c", **named("B")),
        d: survey(d, "1994-03-03T10:00:00Z", "nps", 5, "n", **named("D")),
        h: survey(h, iso(since), "nps", 5, "n", **named("H")),                     # exactly at `since`
        j: survey(j, "1994-04-01T10:00:00Z", "nps", 4, "n", **named("J")),
        k: survey(k, "1994-01-15T10:00:00Z", "csat", 1, "c", **named("K")),
        e: survey(e, iso(since - timedelta(seconds=1)), "nps", 2, "n", **named("E")),  # before `since`
        x: survey(x, "1994-02-25T10:00:00Z", "nps", 1, "n", about=f"{x}:call", **named("X")),  # call comes later
    }
    first = [
        purchase(a, "1994-01-05T10:00:00Z", "p1", "10.00", **named("A")),
        purchase(a, "1994-01-06T10:00:00Z", "p2", "5.50", "EUR", **named("A")),
        purchase(a, "1994-01-07T10:00:00Z", "p3", "2.25", **named("A")),
        a_call, email(a, "1994-03-05T08:00:00Z", "last", **named("A")),            # contact after the answer
        survey(b, "1994-02-01T10:00:00Z", "nps", 10, "n", **named("B")),          # earlier, no alarm
        survey(c, "1994-02-10T10:00:00Z", "nps", 3, "n1", **named("C")),
        survey(c, "1994-02-20T10:00:00Z", "nps", 9, "n2", **named("C")),          # later answer is no alarm
        survey(f, "1994-03-04T10:00:00Z", "nps", 6, "n", **named("F")),           # 6 is no alarm
        survey(g, "1994-03-04T12:00:00Z", "csat", 3, "c", **named("G")),          # 3 is no alarm
        survey(m, "1994-02-01T10:00:00Z", "nps", 9, "n", **named("M")),
        *answers.values(),
    ]
    deliver(settings, store, first)

    mine = {a, b, c, d, e, f, g, h, j, k, m, x}
    everything = alarm_pages(client, iso(since), limit=500)
    assert_alarm_list(everything, since)
    assert [i["customer_id"] for i in everything if i["customer_id"] in mine] == [j, d, b, a, x, k, h]
    assert alarm_pages(client, iso(since), limit=2) == everything  # paging gives each item once, in order
    assert alarm_pages(client, iso(since), limit=1) == everything

    item_a = next(i for i in everything if i["customer_id"] == a)
    assert item_a == {
        "customer_id": a, "name": "Alarm A", "kind": "nps", "score": 3, "answered_at": "1994-03-01T10:00:00Z",
        "event_id": answers[a]["event_id"], "channel": "phone", "revenue": {"EUR": "5.50", "USD": "12.25"},
        "last_contact_at": "1994-03-05T08:00:00Z",
    }
    assert next(i for i in everything if i["customer_id"] == x)["channel"] == "unknown"  # its call is not stored yet
    item_b = next(i for i in everything if i["customer_id"] == b)
    assert item_b == {
        "customer_id": b, "name": "Alarm B", "kind": "csat", "score": 2, "answered_at": "1994-03-02T10:00:00Z",
        "event_id": answers[b]["event_id"], "channel": "unknown", "revenue": {},
        "last_contact_at": "1994-03-02T10:00:00Z",
    }
    earlier = alarm_pages(client, iso(since - timedelta(seconds=1)), limit=500)
    assert [i["customer_id"] for i in earlier if i["customer_id"] in mine] == [j, d, b, a, x, k, h, e]

    deliver(settings, store, [
        survey(d, "1994-02-15T10:00:00Z", "csat", 5, "late", **named("D")),   # arrives later, is older: D stays
        survey(j, "1994-04-02T10:00:00Z", "csat", 4, "c", **named("J")),      # a later good answer: J leaves
        survey(k, "1994-01-20T10:00:00Z", "nps", 10, "n", **named("K")),      # a later good answer: K leaves
        survey(m, "1994-02-05T10:00:00Z", "csat", 1, "c", **named("M")),      # a later alarm: M comes
        call(x, "1994-02-24T10:00:00Z", "call", **named("X")),                # X's answer is about this call
    ])
    everything = alarm_pages(client, iso(since), limit=500)
    assert_alarm_list(everything, since)
    assert [i["customer_id"] for i in everything if i["customer_id"] in mine] == [d, b, a, x, m, h]
    assert alarm_pages(client, iso(since), limit=2) == everything
    assert next(i for i in everything if i["customer_id"] == d)["event_id"] == answers[d]["event_id"]
    channels = {i["customer_id"]: i["channel"] for i in everything}
    assert (channels[a], channels[b], channels[x]) == ("phone", "unknown", "phone")  # X's answer moved to phone


def test_alarm_pages_stay_consistent_when_answers_arrive_between_pages(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    since = datetime(1995, 1, 1, tzinfo=UTC)
    people = [new_customer_id() for _ in range(6)]
    answered = {p: datetime(1995, i + 1, 1, 10, tzinfo=UTC) for i, p in enumerate(people)}
    deliver(settings, store, [survey(p, iso(at), "nps", 2, "n") for p, at in answered.items()])

    given: list[dict[str, Any]] = []  # pages read before the new answers arrive, up to people[4]
    cursor = None
    while people[4] not in {i["customer_id"] for i in given}:
        body = get_ok(client, "/satisfaction/alarms", since=iso(since), limit=2,
                      **({"cursor": cursor} if cursor else {}))
        given += body["items"]
        cursor = body["next_cursor"]
        assert cursor is not None, "people[0..3] are still to come"
    cut = parse(given[-1]["answered_at"])

    newer, older = new_customer_id(), new_customer_id()
    answered |= {newer: datetime(1995, 12, 1, 10, tzinfo=UTC), older: datetime(1995, 1, 15, 10, tzinfo=UTC)}
    deliver(settings, store, [survey(newer, iso(answered[newer]), "nps", 1, "n"),
                              survey(older, iso(answered[older]), "csat", 1, "c")])
    rest: list[dict[str, Any]] = []
    while cursor is not None:
        body = get_ok(client, "/satisfaction/alarms", since=iso(since), limit=2, cursor=cursor)
        rest += body["items"]
        cursor = body["next_cursor"]

    seen = [i["customer_id"] for i in given + rest]
    assert len(seen) == len(set(seen)), "no item twice"
    assert newer not in seen, "an answer newer than the cursor does not shift later pages"
    assert_alarm_list(given + rest, since)
    later_mine = sorted((p for p in answered if answered[p] < cut), key=answered.__getitem__, reverse=True)
    assert older in later_mine  # an answer older than the cursor belongs on a later page
    assert [i["customer_id"] for i in rest if i["customer_id"] in answered] == later_mine
    everything = [i["customer_id"] for i in alarm_pages(client, iso(since), limit=500) if i["customer_id"] in answered]
    assert everything == sorted(answered, key=answered.__getitem__, reverse=True)


# --------------------------------------------------------------------------------------------
# GET /satisfaction/revenue-by-category


def revenue_by_category(client: TestClient, as_of: datetime) -> dict[str, dict[str, Any]]:
    body = get_ok(client, "/satisfaction/revenue-by-category", as_of=iso(as_of))
    assert parse(body["as_of"]) == as_of
    assert [c["category"] for c in body["categories"]] == CATEGORIES
    return {c["category"]: c for c in body["categories"]}


def money(values: dict[str, str]) -> dict[str, Decimal]:
    return {currency: Decimal(amount) for currency, amount in values.items()}


def test_revenue_by_category_uses_the_latest_nps_answer_and_purchases_as_of_t(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    t0, t1, t2 = (datetime(1997, 1, 1, tzinfo=UTC), datetime(1998, 7, 1, tzinfo=UTC), datetime(1999, 1, 1, tzinfo=UTC))
    p1, p3, q1, q2, r1, n1, n2, n3, z1, z2 = (new_customer_id() for _ in range(10))
    messages = [
        survey(p1, "1998-02-01T10:00:00Z", "nps", 9), purchase(p1, "1998-03-01T10:00:00Z", "a", "10.00"),
        purchase(p1, "1998-04-01T10:00:00Z", "b", "5.01"), purchase(p1, "1998-09-01T10:00:00Z", "c", "20.00"),
        survey(p3, "1998-01-01T10:00:00Z", "nps", 10), survey(p3, "1998-08-01T10:00:00Z", "nps", 2),
        survey(q1, "1998-02-01T10:00:00Z", "nps", 7), purchase(q1, "1998-02-02T10:00:00Z", "a", "1.00", "EUR"),
        survey(q2, "1998-02-03T10:00:00Z", "nps", 8), survey(q2, "1998-02-04T10:00:00Z", "csat", 1),
        purchase(q2, "1998-02-05T10:00:00Z", "a", "0.25", "EUR"),
        survey(r1, "1998-03-03T10:00:00Z", "nps", 0), purchase(r1, "1998-03-04T10:00:00Z", "a", "9.99"),
        purchase(r1, "1998-03-05T10:00:00Z", "b", "1.00", "GBP"),
        call(n1, "1998-01-10T10:00:00Z", "a"),
        survey(n2, "1998-01-11T10:00:00Z", "csat", 5), purchase(n2, "1998-01-12T10:00:00Z", "a", "4.00"),
        purchase(n3, "1998-05-01T10:00:00Z", "a", "2.00"),
        call(z2, iso(t1), "a"),                                   # seen exactly at T: counts
        call(z1, iso(t1 + timedelta(microseconds=1)), "a"),       # seen after T: not yet
    ]
    # By hand, from §3b: category of the latest NPS answer as of T, purchases with occurred_at <= T.
    wanted = {
        t0: {cat: (0, {}) for cat in CATEGORIES},
        t1: {"promoter": (2, {"USD": "15.01"}), "passive": (2, {"EUR": "1.25"}),
             "detractor": (1, {"USD": "9.99", "GBP": "1.00"}), "none": (4, {"USD": "6.00"})},
        t2: {"promoter": (1, {"USD": "35.01"}), "passive": (2, {"EUR": "1.25"}),
             "detractor": (2, {"USD": "9.99", "GBP": "1.00"}), "none": (5, {"USD": "6.00"})},
    }
    before = {t: revenue_by_category(client, t) for t in wanted}
    deliver(settings, store, messages)
    after = {t: revenue_by_category(client, t) for t in wanted}

    for t, categories in wanted.items():
        for category, (customers, revenue) in categories.items():
            was, now = before[t][category], after[t][category]
            assert now["customers"] - was["customers"] == customers, (t, category, was, now)
            grown = {cur: money(now["revenue"]).get(cur, Decimal(0)) - money(was["revenue"]).get(cur, Decimal(0))
                     for cur in set(now["revenue"]) | set(was["revenue"])}
            assert {cur: v for cur, v in grown.items() if v} == money(revenue), (t, category, was, now)
            # revenue_per_customer = revenue / customers, rounded half-even to 2 places
            assert now["revenue_per_customer"] == {
                cur: str((Decimal(v) / now["customers"]).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
                for cur, v in now["revenue"].items()
            }, (t, category, now)
    if all(before[t1][cat]["customers"] == 0 for cat in CATEGORIES):  # the usual case: 1998 is this test's own
        assert after[t1]["promoter"]["revenue_per_customer"] == {"USD": "7.50"}   # 7.505, half to even
        assert after[t1]["passive"]["revenue_per_customer"] == {"EUR": "0.62"}    # 0.625, half to even
        assert after[t1]["none"]["revenue_per_customer"] == {"USD": "1.50"}
        assert after[t2]["detractor"]["revenue_per_customer"] == {"USD": "5.00", "GBP": "0.50"}


# --------------------------------------------------------------------------------------------
# Bad parameters


BAD_PARAMETERS = [
    ("/satisfaction/trend", {"kind": "nps", "from": "1991-01-07T00:00:00", "to": "1991-03-04T00:00:00Z"}, "from"),
    ("/satisfaction/trend", {"kind": "nps", "from": "1991-01-07T00:00:00Z", "to": "1991-03-04T00:00:00"}, "to"),
    ("/satisfaction/trend", {"kind": "nps", "from": "1991-03-04T00:00:00Z", "to": "1991-01-07T00:00:00Z"}, "from"),
    ("/satisfaction/trend", {"kind": "ces", "from": "1991-01-07T00:00:00Z", "to": "1991-03-04T00:00:00Z"}, "kind"),
    ("/satisfaction/trend", {"granularity": "year", "from": "1991-01-07T00:00:00Z", "to": "1991-03-04T00:00:00Z"},
     "granularity"),
    ("/satisfaction/trend", {"channel": "sms", "from": "1991-01-07T00:00:00Z", "to": "1991-03-04T00:00:00Z"},
     "channel"),
    ("/satisfaction/alarms", {"since": "1994-01-01T00:00:00"}, "since"),
    ("/satisfaction/alarms", {"since": "1994-01-01T00:00:00Z", "limit": "0"}, "limit"),
    ("/satisfaction/alarms", {"since": "1994-01-01T00:00:00Z", "limit": "501"}, "limit"),
    ("/satisfaction/alarms", {"since": "1994-01-01T00:00:00Z", "cursor": "not-a-cursor"}, "cursor"),
    ("/satisfaction/revenue-by-category", {"as_of": "1998-07-01T00:00:00"}, "as_of"),
    ("/satisfaction/revenue-by-category", {"as_of": "soon"}, "as_of"),
]


def names_parameter(detail: Any, parameter: str) -> bool:
    """A sentence naming the parameter, or (FastAPI's own shape) a list of errors locating it."""
    if isinstance(detail, str):
        return parameter in detail
    return isinstance(detail, list) and bool(detail) and all(
        isinstance(e, dict) and parameter in e.get("loc", []) and e.get("msg") for e in detail)


@pytest.mark.parametrize(("path", "query", "parameter"), BAD_PARAMETERS)
def test_bad_satisfaction_parameters_are_422_with_a_detail_naming_them(
        client: TestClient, path: str, query: dict[str, str], parameter: str) -> None:
    response = client.get(path, params=query)
    assert response.status_code == 422, response.text
    body = response.json()
    assert "detail" in body, response.text
    assert names_parameter(body["detail"], parameter), body


@pytest.mark.parametrize(("path", "query", "parameter"), BAD_PARAMETERS)
def test_bad_satisfaction_parameters_are_explained_in_a_detail_sentence(
        client: TestClient, path: str, query: dict[str, str], parameter: str) -> None:
    """README, decisions: "errors carry `detail`, a sentence" (services/http/errors.py: "always JSON
    with a `detail` sentence"), the same for values FastAPI checks itself (enums, limit bounds)."""
    detail = client.get(path, params=query).json()["detail"]
    assert isinstance(detail, str) and parameter in detail, f"detail is not a sentence naming {parameter}: {detail!r}"
