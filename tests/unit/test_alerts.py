"""The alert rules (domain/alerts.py): which changes raise an alert, under which id, and when."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from domain.alerts import Alert, AlertKind, ChangeByTime, alarm_alert, alerts_of, event_alert_id, time_alert_id
from domain.lifecycle import LifecycleFact, LifecycleThresholds, lifecycle_history
from services.alerts import read_back_start
from services.settings import Settings

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
THRESHOLDS = LifecycleThresholds(at_risk_days=180, churn_days=365)


def fact(day: int, event_type: str, event_id: str, kind: str | None = None, score: int | None = None) -> LifecycleFact:
    return LifecycleFact(T0 + timedelta(days=day), event_id, event_type, kind, score)


def alerts(facts: list[LifecycleFact], customer: str = "crm-1") -> dict[str, tuple[AlertKind, str, datetime]]:
    """The alerts of these facts, changes by time named by their anchors as the read model names them
    (the latest fact of the anchor's type by the instant the threshold passed)."""
    history = lifecycle_history(facts, THRESHOLDS)
    found = alerts_of(customer, facts, history, max(f.occurred_at for f in facts))
    named = [a if isinstance(a, Alert) else a.alert(anchor(facts, a)) for a in found]
    return {a.alert_id: (a.kind, a.reason, a.occurred_at) for a in named}


def anchor(facts: list[LifecycleFact], change: ChangeByTime) -> str:
    return max(f.key for f in facts if f.occurred_at <= change.passed_at
               and change.anchor_type in (None, f.type))[1]


def test_an_nps_below_6_or_a_csat_below_3_is_an_alarm_answer_and_no_other_score_is() -> None:
    for kind, score, alarm in [("nps", 5, True), ("nps", 0, True), ("nps", 6, False), ("nps", 10, False),
                               ("csat", 2, True), ("csat", 1, True), ("csat", 3, False)]:
        alert = alarm_alert("crm-1", fact(0, "survey_response", "e1", kind, score), None)
        assert (alert is not None) == alarm, (kind, score)
        if alert:
            assert (alert.kind, alert.reason, alert.event_id) == (AlertKind.ALARM_ANSWER, f"{kind.upper()} {score}", "e1")
    assert alarm_alert("crm-1", fact(0, "call", "e2"), None) is None


def test_an_alarm_answer_that_brings_at_risk_is_one_alert_of_kind_alarm_answer() -> None:
    found = alerts([fact(0, "purchase", "p1"), fact(1, "survey_response", "s1", "nps", 3)])
    found = {i: a for i, a in found.items() if a[0] is not AlertKind.CHURNED}  # a year later
    assert found == {event_alert_id("s1"): (AlertKind.ALARM_ANSWER, "NPS 3", T0 + timedelta(days=1))}


def test_a_second_alarm_answer_while_at_risk_is_another_alert() -> None:
    found = alerts([fact(0, "survey_response", "s1", "nps", 3), fact(2, "survey_response", "s2", "csat", 1)])
    assert {i for i, a in found.items() if a[0] is AlertKind.ALARM_ANSWER} == {event_alert_id("s1"), event_alert_id("s2")}


def test_stages_reached_by_the_passing_of_time_are_named_by_kind_and_the_event_whose_age_crossed_the_threshold() -> None:
    found = alerts([fact(0, "call", "c0"), fact(1, "purchase", "p1"), fact(2, "call", "c2")])
    at_risk, churned = T0 + timedelta(days=181), T0 + timedelta(days=367)
    assert found == {
        time_alert_id(AlertKind.AT_RISK, "p1"): (AlertKind.AT_RISK, "no purchase for 180 days", at_risk),
        time_alert_id(AlertKind.CHURNED, "c2"): (AlertKind.CHURNED, "no interaction for 365 days", churned),
    }
    [change] = alerts_of("crm-1", [], lifecycle_history([fact(0, "call", "c1")], THRESHOLDS), None)
    assert isinstance(change, ChangeByTime) and change.anchor_type is None and change.passed_at == churned - timedelta(days=2)
    assert change.due_at == change.passed_at + timedelta(microseconds=1), "due just after the threshold passes"
    assert change.alert("c1").due_at == change.due_at and change.alert("c1").event_id is None


def test_a_change_by_time_keeps_its_id_under_another_customer_id() -> None:
    """A merge or a split moves the facts to another customer id: the anchor, so the id, stays."""
    facts = [fact(0, "call", "c0"), fact(3, "purchase", "p3")]
    assert set(alerts(facts, "rc-0123")) == set(alerts(facts, "crm-9"))


def test_an_alert_caused_by_an_event_is_due_at_once_even_dated_ahead() -> None:
    alert = alarm_alert("crm-1", fact(0, "survey_response", "s1", "nps", 2), None)
    assert alert is not None and alert.due_at is None
    [at_risk] = [a for a in alerts_of("crm-1", [], lifecycle_history([fact(0, "purchase", "p0"),
                                                                      fact(400, "call", "c1")], THRESHOLDS), None)
                 if isinstance(a, Alert)]
    assert (at_risk.kind, at_risk.due_at, at_risk.event_id) == (AlertKind.AT_RISK, None, "c1")


def test_coming_back_from_churned_into_at_risk_by_an_event_is_an_at_risk_alert_named_by_the_event() -> None:
    found = alerts([fact(0, "purchase", "p1"), fact(400, "call", "c1")])
    assert found[event_alert_id("c1")] == (AlertKind.AT_RISK, "call (was churned)", T0 + timedelta(days=400))


def test_ids_do_not_depend_on_arrival_order_or_on_who_owns_an_event() -> None:
    facts = [fact(d, t, f"e{d}", *s) for d, t, s in [(0, "purchase", ()), (3, "survey_response", ("nps", 2)),
                                                        (10, "call", ()), (200, "email", ()),
                                                        (600, "survey_response", ("csat", 1))]]
    expected = alerts(facts)
    for seed in range(5):
        shuffled = list(facts)
        random.Random(seed).shuffle(shuffled)
        assert alerts(shuffled) == expected
    # An event's alert keeps its id under another owner (a merge), so a refold raises it once.
    assert {i for i in alerts(facts, "crm-2") if i in expected} >= {event_alert_id("e3"), event_alert_id("e600")}


def test_reasons_hold_only_kinds_scores_types_and_thresholds() -> None:
    rng = random.Random(4)
    facts = [fact(rng.randrange(2000), rng.choice(["call", "email", "purchase", "survey_response"]), f"e{i}",
                  "nps", rng.randrange(11)) for i in range(200)]
    facts = [f if f.type == "survey_response" else LifecycleFact(f.occurred_at, f.event_id, f.type) for f in facts]
    allowed = re.compile(r"(NPS|CSAT) \d+|no (purchase|interaction) for \d+ days|(call|email|purchase|NPS \d+) "
                         r"\(was \w+\)")
    for kind, reason, _ in alerts(facts).values():
        assert allowed.fullmatch(reason), (kind, reason)


def test_a_partition_is_read_back_from_its_recorded_offset_or_from_its_start_when_that_means_nothing() -> None:
    assert read_back_start(None, 0, 10) == 0, "nothing recorded"
    assert read_back_start(7, 0, 10) == 7
    assert read_back_start(10, 0, 10) == 10, "at the end: nothing to read"
    assert read_back_start(7, 9, 12) == 9, "retention removed messages from 7"
    assert read_back_start(50, 0, 3) == 0, "the end is below the recorded offset: the topic was recreated"


def test_the_alerts_topic_defaults_beside_the_topic_and_must_be_another() -> None:
    settings = Settings(topic="shop", alerts_topic="", dlq_topic="")
    assert settings.alert_topic == "shop.alerts" and settings.alert_max_age == timedelta(days=30)
    for clash in ("shop", "shop.dlq"):
        with pytest.raises(ValueError, match="RAPPORT_ALERTS_TOPIC must differ"):
            Settings(topic="shop", alerts_topic=clash, dlq_topic="")
    with pytest.raises(ValueError, match="alert_max_age_days"):
        Settings(alert_max_age_days=0)
