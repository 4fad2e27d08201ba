"""Lifecycle read models through the HTTP API (contract §3b, §4), against the real Kafka and PostgreSQL.

Events go through the real broker, ingest and projector; expected values come from a small
reference implementation of the contract's §4 rules written here (never from domain/ or
projections/). Stage counts and flows cover every customer in the shared database, so they are
compared as differences: read before publishing, read after projecting, and the difference is
what the reference gives for this test's customers. Event times lie in 2001–2006, where no other
test has data, so the results never depend on today's date (except where a test says so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventstore.store import InteractionLog
from services.settings import Settings
from tests.support import deliver, envelope, iso, new_customer_id, parse

pytestmark = pytest.mark.integration

AT_RISK_DAYS, CHURN_DAYS = 180, 365  # contract §4 defaults (the test settings keep them)
TICK = timedelta(microseconds=1)  # the resolution of stored times
STAGES = ("reached", "acquired", "retained", "advocate", "at_risk", "churned")

# --------------------------------------------------------------------------------------------
# Reference implementation of contract §4, from its words.


@dataclass(frozen=True)
class Fact:
    event_id: str
    type: str
    at: datetime
    kind: str | None = None
    score: int | None = None


def fact(message: dict[str, Any]) -> Fact:
    data = message["data"]
    return Fact(message["event_id"], message["type"], parse(message["occurred_at"]),
                data.get("kind") if message["type"] == "survey_response" else None,
                data.get("score") if message["type"] == "survey_response" else None)


def stage_at(facts: Iterable[Fact], t: datetime) -> str | None:
    """§4: the stage as of T from the events with occurred_at <= T; None before the first event."""
    seen = [f for f in facts if f.at <= t]
    if not seen:
        return None
    if t - max(f.at for f in seen) > timedelta(days=CHURN_DAYS):
        return "churned"
    surveys = sorted((f for f in seen if f.type == "survey_response"), key=lambda f: (f.at, f.event_id))
    purchases = [f for f in seen if f.type == "purchase"]
    if surveys:
        last = surveys[-1]
        if (last.kind == "nps" and last.score < 6) or (last.kind == "csat" and last.score < 3):
            return "at_risk"
    if purchases and t - max(p.at for p in purchases) > timedelta(days=AT_RISK_DAYS):
        return "at_risk"
    nps = [f for f in surveys if f.kind == "nps"]
    if len(purchases) >= 2 and nps and nps[-1].score >= 9:
        return "advocate"
    if len(purchases) >= 2:
        return "retained"
    if purchases:
        return "acquired"
    return "reached"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Interval:
    stage: str
    since: datetime
    event_id: str | None
    reason: str | None  # None: the contract gives no wording for this change; any sentence will do
    previous: str | None


def reference_history(facts: list[Fact], now: datetime) -> list[Interval]:
    """Every stage change up to `now`: at each event, and the first instant after a threshold has
    passed (stage_at is evaluated at every moment the answer can change)."""
    moments: dict[datetime, Fact | None] = {}
    for f in facts:
        moments.setdefault(f.at + timedelta(days=CHURN_DAYS) + TICK, None)
        if f.type == "purchase":
            moments.setdefault(f.at + timedelta(days=AT_RISK_DAYS) + TICK, None)
    for f in facts:
        assert f.at not in moments or moments[f.at] is not None, "test data: keep event times apart"
        moments[f.at] = f
    history: list[Interval] = []
    for t in sorted(moments):
        if t > now:
            break
        stage = stage_at(facts, t)
        if stage is None or (history and history[-1].stage == stage):
            continue
        cause = moments[t]
        history.append(Interval(stage, t, cause.event_id if cause else None, reason(stage, cause, facts),
                                history[-1].stage if history else None))
    return history


def reason(stage: str, cause: Fact | None, facts: list[Fact]) -> str | None:
    if cause is None:
        return {"churned": f"no interaction for {CHURN_DAYS} days",
                "at_risk": f"no purchase for {AT_RISK_DAYS} days"}[stage]
    if cause.type == "purchase":
        return f"{ordinal(sum(1 for f in facts if f.type == 'purchase' and f.at <= cause.at))} purchase"
    if cause.kind == "nps":
        return f"NPS {cause.score}"
    return None


def reference_counts(customers: dict[str, list[Fact]], t: datetime) -> Counter[str]:
    return Counter(s for facts in customers.values() if (s := stage_at(facts, t)) is not None)


def reference_flow(customers: dict[str, list[Fact]], start: datetime, end: datetime,
                   now: datetime) -> Counter[tuple[str | None, str]]:
    pairs: Counter[tuple[str | None, str]] = Counter()
    for facts in customers.values():
        pairs.update({(i.previous, i.stage) for i in reference_history(facts, now) if start <= i.since < end})
    return pairs


# --------------------------------------------------------------------------------------------
# Driving the system.




def call(c: str, at: str, tag: str) -> dict[str, Any]:
    return envelope(c, "call", at, {"direction": "inbound", "duration_seconds": 60}, event_id=f"{c}:{tag}",
                    name="Lifecycle Tester")


def purchase(c: str, at: str, tag: str, amount: str = "10.00") -> dict[str, Any]:
    return envelope(c, "purchase", at, {"order_id": f"o-{tag}", "amount": amount, "currency": "USD"},
                    event_id=f"{c}:{tag}")


def nps(c: str, at: str, score: int, tag: str) -> dict[str, Any]:
    return envelope(c, "survey_response", at, {"kind": "nps", "score": score}, event_id=f"{c}:{tag}")


def csat(c: str, at: str, score: int, tag: str) -> dict[str, Any]:
    return envelope(c, "survey_response", at, {"kind": "csat", "score": score}, event_id=f"{c}:{tag}")


def get_ok(client: TestClient, path: str, **query: str) -> dict[str, Any]:
    response = client.get(path, params=query)
    assert response.status_code == 200, (path, query, response.status_code, response.text)
    return response.json()


def stage_counts(client: TestClient, as_of: datetime) -> Counter[str]:
    body = get_ok(client, "/lifecycle/stages", as_of=iso(as_of))
    assert parse(body["as_of"]) == as_of
    assert set(body["stages"]) == set(STAGES)
    return Counter(body["stages"])


def flow(client: TestClient, start: datetime, end: datetime) -> Counter[tuple[str | None, str]]:
    body = get_ok(client, "/lifecycle/flow", **{"from": iso(start), "to": iso(end)})
    assert (parse(body["from"]), parse(body["to"])) == (start, end)
    pairs = [(t["from_stage"], t["to_stage"]) for t in body["transitions"]]
    assert len(pairs) == len(set(pairs)), f"each pair once: {body}"
    assert all(t["customers"] > 0 for t in body["transitions"]), f"pairs with no customer are left out: {body}"
    return Counter({(t["from_stage"], t["to_stage"]): t["customers"] for t in body["transitions"]})


def difference(after: Counter, before: Counter) -> dict:
    return {k: after[k] - before[k] for k in set(after) | set(before) if after[k] != before[k]}


def assert_history(body: dict[str, Any], customer_id: str, expected: list[Interval]) -> None:
    assert body["customer_id"] == customer_id
    items = body["items"]
    assert [i["stage"] for i in items] == [e.stage for e in expected], items
    for item, want in zip(items, expected, strict=True):
        assert item["since"].endswith("Z"), item
        since = parse(item["since"])
        if want.event_id is None:
            # "the moment the threshold passed": the threshold itself or the first instant past it
            assert since in (want.since - TICK, want.since), (item, want)
        else:
            assert since == want.since, (item, want)
        assert item["event_id"] == want.event_id, (item, want)
        if want.reason is not None:
            assert item["reason"] == want.reason, (item, want)
        else:
            assert isinstance(item["reason"], str) and item["reason"].strip(), item
    for earlier, later in zip(items, items[1:], strict=False):
        assert earlier["until"] == later["since"], ("intervals are contiguous", earlier, later)
    assert items[-1]["until"] is None, "the current stage has no end yet"


def assert_view_agrees(client: TestClient, customer_id: str, history: dict[str, Any]) -> None:
    view = get_ok(client, f"/customers/{customer_id}")
    current = history["items"][-1]
    assert view["lifecycle"] == {"stage": current["stage"], "since": current["since"]}


# --------------------------------------------------------------------------------------------
# GET /customers/{id}/lifecycle


def long_story(c: str) -> list[dict[str, Any]]:
    """Every stage, changes by events and by the passing of time, purchases after churn."""
    return [
        call(c, "2001-01-10T09:00:00Z", "e1"),                   # reached
        purchase(c, "2001-02-01T10:00:00+02:00", "e2"),          # acquired: 1st purchase
        call(c, "2001-03-01T09:00:00Z", "e3"),                   # no change
        # 2001-07-31T08:00Z + 1 µs: at_risk, no purchase for 180 days
        purchase(c, "2001-09-01T12:00:00Z", "e4"),               # retained: 2nd purchase
        nps(c, "2001-10-01T12:00:00Z", 9, "e5"),                 # advocate: NPS 9
        nps(c, "2001-11-01T12:00:00Z", 3, "e6"),                 # at_risk: NPS 3
        csat(c, "2001-11-15T12:00:00Z", 5, "e7"),                # no alarm, but latest NPS is 3: retained
        nps(c, "2001-12-01T12:00:00-05:00", 10, "e8"),           # advocate: NPS 10
        # 2002-02-28T12:00Z + 1 µs: at_risk, no purchase for 180 days
        # 2002-12-01T17:00Z + 1 µs: churned, no interaction for 365 days
        purchase(c, "2003-03-01T12:00:00Z", "e9"),               # advocate again: 3rd purchase, NPS 10
        # then at_risk (180 days) and churned (365 days), long before now
    ]


def test_history_follows_the_rules_with_contiguous_intervals_reasons_and_time_driven_changes(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = long_story(c)
    deliver(settings, store, messages)

    expected = reference_history([fact(m) for m in messages], datetime.now(UTC))
    assert [i.stage for i in expected] == [  # the reference agrees with the reading of §4 by hand
        "reached", "acquired", "at_risk", "retained", "advocate", "at_risk", "retained", "advocate", "at_risk",
        "churned", "advocate", "at_risk", "churned"]
    body = get_ok(client, f"/customers/{c}/lifecycle")
    assert_history(body, c, expected)
    by_stage_and_reason = [(i["stage"], i["reason"], i["event_id"]) for i in body["items"]]
    assert ("acquired", "1st purchase", f"{c}:e2") in by_stage_and_reason
    assert ("retained", "2nd purchase", f"{c}:e4") in by_stage_and_reason
    assert ("at_risk", "NPS 3", f"{c}:e6") in by_stage_and_reason
    assert ("at_risk", "no purchase for 180 days", None) in by_stage_and_reason
    assert ("churned", "no interaction for 365 days", None) in by_stage_and_reason
    assert_view_agrees(client, c, body)


def test_a_stage_kept_for_a_second_reason_is_one_interval(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    messages = [
        purchase(c, "2002-01-01T00:00:00Z", "p"),       # acquired
        nps(c, "2002-03-01T00:00:00Z", 3, "n1"),         # at_risk: NPS 3
        # 2002-06-30: no purchase for 180 days; already at_risk, so no new interval
        nps(c, "2002-08-01T00:00:00Z", 9, "n2"),         # no alarm any more, but still no purchase for 180 days
        # 2003-08-01 + 1 µs: churned
    ]
    deliver(settings, store, messages)

    expected = reference_history([fact(m) for m in messages], datetime.now(UTC))
    assert [(i.stage, i.reason) for i in expected] == [
        ("acquired", "1st purchase"), ("at_risk", "NPS 3"), ("churned", "no interaction for 365 days")]
    body = get_ok(client, f"/customers/{c}/lifecycle")
    assert_history(body, c, expected)
    assert_view_agrees(client, c, body)


def test_current_stage_of_recent_customers_is_open_ended_and_the_360_view_agrees(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    now = datetime.now(UTC).replace(microsecond=0)

    def ago(days: int) -> str:
        return iso(now - timedelta(days=days))

    lapsing, loyal = new_customer_id(), new_customer_id()
    messages = {
        lapsing: [call(lapsing, ago(250), "a"), purchase(lapsing, ago(200), "b")],  # at_risk for 20 days
        loyal: [purchase(loyal, ago(30), "a"), purchase(loyal, ago(20), "b"), nps(loyal, ago(10), 10, "c")],
    }
    deliver(settings, store, [m for ms in messages.values() for m in ms])

    for c, ms in messages.items():
        expected = reference_history([fact(m) for m in ms], datetime.now(UTC))
        body = get_ok(client, f"/customers/{c}/lifecycle")
        assert_history(body, c, expected)
        assert_view_agrees(client, c, body)
    assert get_ok(client, f"/customers/{lapsing}/lifecycle")["items"][-1]["stage"] == "at_risk"
    assert get_ok(client, f"/customers/{loyal}/lifecycle")["items"][-1]["reason"] == "NPS 10"


def test_late_events_rewrite_the_history_to_the_one_of_in_order_arrival(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    late, in_order = new_customer_id(), new_customer_id()
    late_messages = long_story(late)
    by_tag = {m["event_id"].rsplit(":", 1)[1]: m for m in late_messages}
    facts = {tag: fact(m) for tag, m in by_tag.items()}
    now = datetime.now(UTC)

    arrived: list[str] = []
    for batch in (["e9"], ["e5", "e2"], ["e8", "e1", "e7"], ["e6", "e4", "e3"]):  # later events first
        deliver(settings, store, [by_tag[tag] for tag in batch])
        arrived += batch
        body = get_ok(client, f"/customers/{late}/lifecycle")
        assert_history(body, late, reference_history([facts[t] for t in arrived], now))
        assert_view_agrees(client, late, body)

    deliver(settings, store, long_story(in_order))
    expected_late = get_ok(client, f"/customers/{late}/lifecycle")
    expected_in_order = get_ok(client, f"/customers/{in_order}/lifecycle")

    def anonymous(body: dict[str, Any], c: str) -> list[dict[str, Any]]:
        return [{**i, "event_id": i["event_id"] and i["event_id"].removeprefix(f"{c}:")} for i in body["items"]]

    assert anonymous(expected_late, late) == anonymous(expected_in_order, in_order)
    assert_history(expected_in_order, in_order, reference_history([fact(m) for m in long_story(in_order)], now))


def test_a_known_customer_whose_events_all_lie_ahead_has_an_empty_history_not_a_404(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    """§3 gives 404 to an unknown customer only; §3b's history runs "up to now", which is empty here."""
    c = new_customer_id()
    deliver(settings, store, [call(c, iso(datetime.now(UTC) + timedelta(days=10)), "ahead")])
    assert client.get(f"/customers/{c}").status_code == 200  # the customer is known
    response = client.get(f"/customers/{c}/lifecycle")
    assert response.status_code == 200, response.text
    assert response.json() == {"customer_id": c, "items": []}


def test_unknown_customer_has_no_lifecycle(client: TestClient) -> None:
    response = client.get(f"/customers/{new_customer_id()}/lifecycle")
    assert response.status_code == 404
    assert response.json()["detail"]


# --------------------------------------------------------------------------------------------
# GET /lifecycle/stages


def test_stage_counts_change_with_as_of_alone_and_with_late_events(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    s1, s2, s3, s4, s5 = (new_customer_id() for _ in range(5))
    messages = [
        purchase(s1, "2004-01-01T00:00:00Z", "p"),                      # one purchase
        call(s2, "2004-01-01T06:00:00Z", "c"),                          # no purchase: never at_risk by time
        purchase(s3, "2003-12-01T00:00:00Z", "p1"), purchase(s3, "2004-01-15T00:00:00Z", "p2"),
        nps(s3, "2004-02-01T00:00:00Z", 9, "n"),                        # advocate until its purchases age
        nps(s4, "2004-01-02T00:00:00Z", 3, "n"),                        # at_risk by its answer alone
        purchase(s5, "2004-01-10T00:00:00Z", "p1"), purchase(s5, "2004-01-20T00:00:00Z", "p2"),
        csat(s5, "2004-02-10T00:00:00Z", 2, "c"),                       # at_risk by a CSAT below 3
    ]
    late = purchase(s2, "2004-02-01T00:00:00Z", "late")                 # arrives after the others
    everyone = (s1, s2, s3, s4, s5)
    moments = [datetime(2003, 6, 1, tzinfo=UTC),      # before any of them
               datetime(2004, 3, 1, tzinfo=UTC),      # acquired, reached, advocate, at_risk, at_risk
               datetime(2004, 7, 19, tzinfo=UTC),     # s1 and s3 200 / 186 days after their last purchase
               datetime(2005, 2, 15, tzinfo=UTC)]     # more than 365 days after everyone's last interaction
    before = {t: stage_counts(client, t) for t in moments}
    deliver(settings, store, messages)
    after = {t: stage_counts(client, t) for t in moments}

    customers = {c: [fact(m) for m in messages if m["customer"]["id"] == c] for c in everyone}
    wanted = {t: dict(reference_counts(customers, t)) for t in moments}
    assert wanted == {
        moments[0]: {},
        moments[1]: {"acquired": 1, "reached": 1, "advocate": 1, "at_risk": 2},
        moments[2]: {"at_risk": 4, "reached": 1},
        moments[3]: {"churned": 5},
    }  # the reference agrees with the reading of §4 by hand
    assert {t: difference(after[t], before[t]) for t in moments} == wanted

    deliver(settings, store, [late])  # a purchase of s2 in the past changes what was true then
    rewritten = {t: stage_counts(client, t) for t in moments}
    customers[s2].append(fact(late))
    wanted = {t: dict(reference_counts(customers, t)) for t in moments}
    assert wanted[moments[1]] == {"acquired": 2, "advocate": 1, "at_risk": 2}
    assert wanted[moments[2]] == {"at_risk": 4, "acquired": 1}
    assert {t: difference(rewritten[t], before[t]) for t in moments} == wanted


def test_thresholds_count_only_more_than_n_days(settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    bought = datetime(2004, 5, 5, 12, 0, tzinfo=UTC)
    at_risk_at, churn_at = bought + timedelta(days=AT_RISK_DAYS), bought + timedelta(days=CHURN_DAYS)
    moments = [bought - TICK, bought, at_risk_at, at_risk_at + TICK, churn_at, churn_at + TICK]
    before = {t: stage_counts(client, t) for t in moments}
    deliver(settings, store, [purchase(c, iso(bought), "p")])
    after = {t: stage_counts(client, t) for t in moments}

    assert [difference(after[t], before[t]) for t in moments] == [
        {},
        {"acquired": 1},          # the event counts at its own occurred_at (<= T)
        {"acquired": 1},          # exactly 180 days: not more than 180
        {"at_risk": 1},           # a microsecond more
        {"at_risk": 1},           # exactly 365 days: not more than 365
        {"churned": 1},
    ]
    history = get_ok(client, f"/customers/{c}/lifecycle")
    assert [i["stage"] for i in history["items"]] == ["acquired", "at_risk", "churned"]
    assert_history(history, c, reference_history([fact(purchase(c, iso(bought), "p"))], datetime.now(UTC)))


def test_as_of_with_an_offset_is_the_same_instant_answered_in_utc(client: TestClient) -> None:
    in_utc = get_ok(client, "/lifecycle/stages", as_of="2004-03-01T00:00:00Z")
    with_offset = get_ok(client, "/lifecycle/stages", as_of="2004-03-01T05:30:00+05:30")
    assert with_offset == in_utc
    assert in_utc["as_of"] == "2004-03-01T00:00:00Z"


# --------------------------------------------------------------------------------------------
# GET /lifecycle/flow


def test_flow_counts_each_customer_once_per_pair_in_the_half_open_period(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    start, end = datetime(2005, 1, 1, tzinfo=UTC), datetime(2006, 1, 1, tzinfo=UTC)
    f1, f2, f3, f4 = (new_customer_id() for _ in range(4))
    messages = [
        call(f1, "2004-06-01T00:00:00Z", "c"),                  # reached before the period
        purchase(f1, iso(start), "p1"),                         # reached -> acquired at `from` (inclusive)
        purchase(f1, "2005-02-01T00:00:00Z", "p2"),             # acquired -> retained
        # 2005-07-31 + 1 µs: retained -> at_risk (no purchase for 180 days)
        purchase(f1, "2005-08-05T00:00:00Z", "p3"),             # at_risk -> retained
        nps(f1, "2005-09-01T00:00:00Z", 3, "n1"),               # retained -> at_risk again
        nps(f1, "2005-10-01T00:00:00Z", 8, "n2"),               # at_risk -> retained again
        call(f2, "2005-03-01T00:00:00Z", "c"),                  # first appears: null -> reached
        purchase(f2, iso(end), "p"),                            # at `to` (exclusive): not in the period
        purchase(f3, "2004-12-31T12:00:00Z", "p"),              # null -> acquired, before the period
        # 2005-06-29T12:00 + 1 µs acquired -> at_risk; 2005-12-31T12:00 + 1 µs at_risk -> churned
        call(f4, "2005-05-01T00:00:00Z", "c"), purchase(f4, "2005-05-02T00:00:00Z", "p"),
        # f4: null -> reached, reached -> acquired; 2005-10-29 + 1 µs acquired -> at_risk
    ]
    customers = {c: [fact(m) for m in messages if m["customer"]["id"] == c] for c in (f1, f2, f3, f4)}
    periods = [(start, end), (datetime(2004, 1, 1, tzinfo=UTC), datetime(2007, 1, 1, tzinfo=UTC)),
               (datetime(2005, 7, 1, tzinfo=UTC), datetime(2005, 9, 1, tzinfo=UTC))]
    before = {p: flow(client, *p) for p in periods}
    deliver(settings, store, messages)
    after = {p: flow(client, *p) for p in periods}

    now = datetime.now(UTC)
    wanted = {p: dict(reference_flow(customers, *p, now)) for p in periods}
    assert wanted[(start, end)] == {
        ("reached", "acquired"): 2, ("acquired", "retained"): 1, ("retained", "at_risk"): 1,
        ("at_risk", "retained"): 1, (None, "reached"): 2, ("acquired", "at_risk"): 2, ("at_risk", "churned"): 1,
    }  # the reference agrees with the reading of §3b by hand
    assert {p: difference(after[p], before[p]) for p in periods} == wanted


# --------------------------------------------------------------------------------------------
# Bad parameters


@pytest.mark.parametrize(("path", "query", "parameter"), [
    ("/lifecycle/stages", {"as_of": "2004-01-01T00:00:00"}, "as_of"),
    ("/lifecycle/stages", {"as_of": "yesterday"}, "as_of"),
    ("/lifecycle/flow", {"from": "2005-01-01T00:00:00", "to": "2006-01-01T00:00:00Z"}, "from"),
    ("/lifecycle/flow", {"from": "2005-01-01T00:00:00Z", "to": "2006-01-01T00:00:00"}, "to"),
    ("/lifecycle/flow", {"from": "2006-01-01T00:00:00Z", "to": "2005-01-01T00:00:00Z"}, "from"),
])
def test_bad_lifecycle_parameters_are_422_with_a_detail_naming_them(
        client: TestClient, path: str, query: dict[str, str], parameter: str) -> None:
    response = client.get(path, params=query)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]  # every error has a detail: here a sentence naming the parameter
    assert isinstance(detail, str) and parameter in detail, detail
