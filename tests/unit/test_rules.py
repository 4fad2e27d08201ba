"""Contract §3/§4 business rules, each with hand-computed expected values."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.lifecycle import LifecycleFact, LifecycleState, LifecycleThresholds, Stage, lifecycle_at
from domain.rules import average_order_value, format_money, nps_category, preferred_channel

T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
DEFAULT = LifecycleThresholds()
US = timedelta(microseconds=1)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def call(n: float, event_id: str | None = None) -> LifecycleFact:
    return LifecycleFact(day(n), event_id or f"call-{n}", "call")


def email(n: float, event_id: str | None = None) -> LifecycleFact:
    return LifecycleFact(day(n), event_id or f"email-{n}", "email")


def purchase(n: float, event_id: str | None = None) -> LifecycleFact:
    return LifecycleFact(day(n), event_id or f"purchase-{n}", "purchase")


def nps(n: float, score: int, event_id: str | None = None) -> LifecycleFact:
    return LifecycleFact(day(n), event_id or f"nps-{n}", "survey_response", "nps", score)


def csat(n: float, score: int, event_id: str | None = None) -> LifecycleFact:
    return LifecycleFact(day(n), event_id or f"csat-{n}", "survey_response", "csat", score)


def state(facts: list[LifecycleFact], as_of: datetime, thresholds: LifecycleThresholds = DEFAULT):
    return lifecycle_at(facts, as_of, thresholds)


def expect(stage: Stage, since: datetime) -> LifecycleState:
    return LifecycleState(stage, since)


# --- no facts / as_of -------------------------------------------------------------------------


def test_no_facts_gives_none() -> None:
    assert state([], day(10)) is None


def test_only_facts_after_as_of_gives_none() -> None:
    assert state([call(5), purchase(6)], day(4)) is None


def test_facts_after_as_of_are_ignored() -> None:
    facts = [call(0), purchase(1), purchase(2), nps(3, 10)]
    assert state(facts, day(0.5)) == expect(Stage.REACHED, day(0))
    assert state(facts, day(1.5)) == expect(Stage.ACQUIRED, day(1))
    assert state(facts, day(2.5)) == expect(Stage.RETAINED, day(2))
    assert state(facts, day(3.5)) == expect(Stage.ADVOCATE, day(3))


def test_a_fact_exactly_at_as_of_counts_and_one_just_after_does_not() -> None:
    assert state([call(0), purchase(1)], day(1)) == expect(Stage.ACQUIRED, day(1))
    assert state([call(0), purchase(1)], day(1) - US) == expect(Stage.REACHED, day(0))


def test_a_low_score_after_as_of_does_not_put_the_customer_at_risk() -> None:
    assert state([purchase(0), nps(5, 2)], day(4)) == expect(Stage.ACQUIRED, day(0))


# --- the stages entered by an event, and their `since` ----------------------------------------


@pytest.mark.parametrize("first", [call, email])
def test_any_interaction_without_a_purchase_is_reached_since_the_first(first) -> None:
    assert state([first(0), email(3), call(4)], day(5)) == expect(Stage.REACHED, day(0))


def test_a_survey_alone_is_reached() -> None:
    assert state([nps(2, 8)], day(3)) == expect(Stage.REACHED, day(2))


def test_one_purchase_is_acquired_since_that_purchase() -> None:
    assert state([call(0), purchase(2), call(3)], day(4)) == expect(Stage.ACQUIRED, day(2))


def test_the_second_purchase_makes_retained_since_its_occurred_at() -> None:
    assert state([call(0), purchase(2), email(3), purchase(7)], day(8)) == expect(Stage.RETAINED, day(7))


@pytest.mark.parametrize("score", [9, 10])
def test_a_promoter_nps_after_two_purchases_is_advocate_since_that_response(score: int) -> None:
    facts = [purchase(0), purchase(10), nps(20, score)]
    assert state(facts, day(30)) == expect(Stage.ADVOCATE, day(20))


def test_a_promoter_nps_before_the_second_purchase_is_advocate_since_the_purchase() -> None:
    facts = [purchase(0), nps(5, 10), purchase(12)]
    assert state(facts, day(13)) == expect(Stage.ADVOCATE, day(12))


@pytest.mark.parametrize("score", [6, 7, 8])
def test_a_non_promoter_nps_with_two_purchases_stays_retained(score: int) -> None:
    facts = [purchase(0), purchase(10), nps(20, score)]
    assert state(facts, day(30)) == expect(Stage.RETAINED, day(10))


def test_advocate_needs_two_purchases() -> None:
    assert state([purchase(0), nps(1, 10)], day(2)) == expect(Stage.ACQUIRED, day(0))
    assert state([call(0), nps(1, 10)], day(2)) == expect(Stage.REACHED, day(0))


def test_advocate_needs_the_latest_nps_to_be_a_promoter() -> None:
    facts = [purchase(0), purchase(1), nps(2, 10), nps(5, 8)]
    assert state(facts, day(6)) == expect(Stage.RETAINED, day(5))


def test_a_good_csat_after_a_promoter_nps_keeps_the_advocate() -> None:
    facts = [purchase(0), purchase(1), nps(2, 9), csat(5, 4)]
    assert state(facts, day(6)) == expect(Stage.ADVOCATE, day(2))


# --- at_risk by survey ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "score", "stage"),
    [
        ("nps", 0, Stage.AT_RISK),
        ("nps", 5, Stage.AT_RISK),
        ("nps", 6, Stage.RETAINED),  # below 6 is at risk; 6 is not
        ("csat", 1, Stage.AT_RISK),
        ("csat", 2, Stage.AT_RISK),
        ("csat", 3, Stage.RETAINED),  # below 3 is at risk; 3 is not
    ],
)
def test_the_low_score_boundaries(kind: str, score: int, stage: Stage) -> None:
    survey = nps(5, score) if kind == "nps" else csat(5, score)
    result = state([purchase(0), purchase(1), survey], day(6))
    assert result == expect(stage, day(5) if stage is Stage.AT_RISK else day(1))


def test_at_risk_by_survey_beats_advocate_and_needs_no_purchase() -> None:
    assert state([call(0), nps(1, 3)], day(2)) == expect(Stage.AT_RISK, day(1))
    assert state([purchase(0), purchase(1), nps(2, 10), nps(3, 5)], day(4)) == expect(Stage.AT_RISK, day(3))


def test_latest_nps_9_but_latest_survey_a_csat_2_is_at_risk() -> None:
    facts = [purchase(0), purchase(1), nps(2, 9), csat(3, 2)]
    assert state(facts, day(4)) == expect(Stage.AT_RISK, day(3))


def test_only_the_latest_survey_counts_for_at_risk() -> None:
    facts = [purchase(0), purchase(1), nps(2, 2), csat(3, 5)]
    assert state(facts, day(4)) == expect(Stage.RETAINED, day(3))
    facts = [purchase(0), purchase(1), csat(2, 1), nps(3, 10)]
    assert state(facts, day(4)) == expect(Stage.ADVOCATE, day(3))


# --- churned first ----------------------------------------------------------------------------------


def test_a_churned_customer_with_an_nps_3_is_churned() -> None:
    facts = [purchase(0), purchase(1), nps(2, 3)]
    assert state(facts, day(500)) == expect(Stage.CHURNED, day(2 + 365))


def test_churn_is_strictly_more_than_churn_days() -> None:
    facts = [call(0), call(10)]
    last = day(10)
    assert state(facts, last + timedelta(days=365)) == expect(Stage.REACHED, day(0))
    assert state(facts, last + timedelta(days=365) + US) == expect(Stage.CHURNED, last + timedelta(days=365))


def test_churned_is_since_last_interaction_plus_churn_days_of_any_type() -> None:
    facts = [purchase(0), email(100)]
    assert state(facts, day(1000)) == expect(Stage.CHURNED, day(465))


def test_a_churned_customer_who_comes_back_is_judged_afresh_since_the_return() -> None:
    facts = [call(0), call(400)]
    assert state(facts, day(401)) == expect(Stage.REACHED, day(400))
    facts = [purchase(0), purchase(400)]
    assert state(facts, day(401)) == expect(Stage.RETAINED, day(400))


# --- at_risk by time --------------------------------------------------------------------------


def test_at_risk_by_time_is_strictly_more_than_at_risk_days_after_the_last_purchase() -> None:
    facts = [purchase(0), purchase(20)]
    passed = day(20 + 180)
    assert state(facts, passed) == expect(Stage.RETAINED, day(20))
    assert state(facts, passed + US) == expect(Stage.AT_RISK, passed)
    assert state(facts, day(300)) == expect(Stage.AT_RISK, passed)


def test_at_risk_by_time_needs_a_purchase() -> None:
    assert state([call(0), call(300)], day(480)) == expect(Stage.REACHED, day(0))


def test_other_interactions_do_not_rescue_a_customer_at_risk_by_time() -> None:
    facts = [purchase(0), call(100), email(190), nps(200, 8)]
    assert state(facts, day(250)) == expect(Stage.AT_RISK, day(180))


def test_at_risk_by_time_then_churned_is_churned_since_the_churn_moment() -> None:
    facts = [purchase(0), call(100)]
    assert state(facts, day(200)) == expect(Stage.AT_RISK, day(180))
    assert state(facts, day(466)) == expect(Stage.CHURNED, day(465))


def test_at_risk_by_time_then_buying_again_is_retained_since_that_purchase() -> None:
    facts = [purchase(0), purchase(200)]
    assert state(facts, day(199)) == expect(Stage.AT_RISK, day(180))
    assert state(facts, day(201)) == expect(Stage.RETAINED, day(200))


def test_at_risk_by_time_then_buying_again_with_a_promoter_nps_is_advocate_since_that_purchase() -> None:
    facts = [purchase(0), purchase(10), nps(20, 10), purchase(250)]
    assert state(facts, day(240)) == expect(Stage.AT_RISK, day(190))
    assert state(facts, day(260)) == expect(Stage.ADVOCATE, day(250))


def test_an_interaction_exactly_at_the_at_risk_threshold_does_not_hide_it() -> None:
    facts = [purchase(0), call(180)]
    assert state(facts, day(180)) == expect(Stage.ACQUIRED, day(0))
    assert state(facts, day(181)) == expect(Stage.AT_RISK, day(180))


# --- thresholds are parameters ------------------------------------------------------------


def test_thresholds_are_parameters() -> None:
    short = LifecycleThresholds(at_risk_days=30, churn_days=60)
    facts = [purchase(0), purchase(5), call(20)]
    assert state(facts, day(35), short) == expect(Stage.RETAINED, day(5))
    assert state(facts, day(35) + US, short) == expect(Stage.AT_RISK, day(35))
    assert state(facts, day(80), short) == expect(Stage.AT_RISK, day(35))
    assert state(facts, day(80) + US, short) == expect(Stage.CHURNED, day(80))
    # the same facts under the defaults are still retained
    assert state(facts, day(80) + US) == expect(Stage.RETAINED, day(5))


# --- since stays while the stage stays ----------------------------------------------------------


def test_since_stays_at_the_first_moment_while_the_stage_does_not_change() -> None:
    facts = [purchase(0), purchase(10), call(20), email(30), purchase(40), nps(50, 7), csat(60, 5)]
    assert state(facts, day(70)) == expect(Stage.RETAINED, day(10))


def test_since_stays_when_a_survey_risk_is_followed_by_a_time_risk() -> None:
    facts = [purchase(0), nps(10, 2)]
    assert state(facts, day(250)) == expect(Stage.AT_RISK, day(10))


def test_since_stays_when_a_time_risk_is_followed_by_a_low_score() -> None:
    facts = [purchase(0), csat(200, 1)]
    assert state(facts, day(210)) == expect(Stage.AT_RISK, day(180))


def test_since_stays_across_repeated_advocate_responses() -> None:
    facts = [purchase(0), purchase(1), nps(2, 9), nps(3, 10), purchase(4)]
    assert state(facts, day(5)) == expect(Stage.ADVOCATE, day(2))


# --- order independence and ties --------------------------------------------------------------


def test_the_same_facts_in_any_order_give_the_same_result() -> None:
    facts = [
        call(0),
        purchase(3),
        nps(4, 2),
        purchase(10),
        email(11),
        nps(12, 10),
        purchase(200),
        csat(210, 2),
        csat(211, 5),
        call(300),
        nps(301, 9),
    ]
    rng = random.Random(20260301)
    for as_of, expected in [
        (day(5), expect(Stage.AT_RISK, day(4))),
        (day(11), expect(Stage.AT_RISK, day(4))),  # the 2nd purchase does not clear the low score
        (day(100), expect(Stage.ADVOCATE, day(12))),
        (day(195), expect(Stage.AT_RISK, day(190))),
        (day(205), expect(Stage.ADVOCATE, day(200))),
        (day(210.5), expect(Stage.AT_RISK, day(210))),
        (day(302), expect(Stage.ADVOCATE, day(211))),
        (day(400), expect(Stage.AT_RISK, day(380))),
        (day(700), expect(Stage.CHURNED, day(666))),
    ]:
        for _ in range(200):
            shuffled = facts[:]
            rng.shuffle(shuffled)
            assert state(shuffled, as_of) == expected, (as_of, shuffled)


def test_a_generator_of_facts_is_accepted() -> None:
    facts = [purchase(0), purchase(1)]
    assert state((f for f in facts), day(2)) == expect(Stage.RETAINED, day(1))


@pytest.mark.parametrize("reverse", [False, True])
def test_ties_in_occurred_at_are_broken_by_event_id(reverse: bool) -> None:
    low, high = nps(5, 3, event_id="svy-a"), nps(5, 10, event_id="svy-b")
    facts = [purchase(0), purchase(1), low, high]
    if reverse:
        facts.reverse()
    assert state(facts, day(6)) == expect(Stage.ADVOCATE, day(5))

    low, high = nps(5, 3, event_id="svy-b"), nps(5, 10, event_id="svy-a")
    facts = [purchase(0), purchase(1), low, high]
    if reverse:
        facts.reverse()
    assert state(facts, day(6)) == expect(Stage.AT_RISK, day(5))


def test_facts_at_the_same_moment_are_judged_together() -> None:
    # the second purchase and a promoter NPS at the same instant: advocate since then, never retained
    facts = [purchase(0), purchase(3, "p2"), nps(3, 10, "n1")]
    assert state(facts, day(4)) == expect(Stage.ADVOCATE, day(3))


# --- nps_category ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "category"),
    [
        (0, "detractor"),
        (5, "detractor"),
        (6, "detractor"),
        (7, "passive"),
        (8, "passive"),
        (9, "promoter"),
        (10, "promoter"),
        (None, None),
    ],
)
def test_nps_category_boundaries(score: int | None, category: str | None) -> None:
    assert nps_category(score) == category


# --- preferred_channel -----------------------------------------------------------------------


def test_preferred_channel_more_inbound_calls_wins() -> None:
    assert preferred_channel(3, day(1), 2, day(9)) == "phone"


def test_preferred_channel_more_inbound_emails_wins() -> None:
    assert preferred_channel(1, day(9), 4, day(1)) == "email"


def test_preferred_channel_with_only_one_kind() -> None:
    assert preferred_channel(1, day(1), 0, None) == "phone"
    assert preferred_channel(0, None, 2, day(1)) == "email"


def test_preferred_channel_tie_goes_to_the_later_event() -> None:
    assert preferred_channel(2, day(5), 2, day(4)) == "phone"
    assert preferred_channel(2, day(4), 2, day(5)) == "email"
    assert preferred_channel(1, day(4), 1, day(4) + US) == "email"
    assert preferred_channel(1, day(4) + US, 1, day(4)) == "phone"


def test_preferred_channel_with_neither_is_none() -> None:
    assert preferred_channel(0, None, 0, None) is None


# --- average_order_value ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revenue", "orders", "average"),
    [
        ("120.00", 2, "60.00"),
        ("100.00", 3, "33.33"),
        ("200.00", 3, "66.67"),
        ("100", 3, "33"),
        ("120", 2, "60"),
        ("0.00", 1, "0.00"),
        ("10.000", 3, "3.333"),  # three-decimal currencies (e.g. KWD) keep three places
        ("99.5", 1, "99.5"),
    ],
)
def test_average_order_value_keeps_the_revenue_decimal_places(revenue: str, orders: int, average: str) -> None:
    result = average_order_value(Decimal(revenue), orders)
    assert str(result) == average


@pytest.mark.parametrize(
    ("revenue", "orders", "shown"),
    [
        ("1E-12", 1, "0.000000000001"),
        ("0.000000000003", 2, "0.000000000002"),  # 1.5E-12, half-even to 2E-12
        ("5E-12", 2, "0.000000000002"),  # 2.5E-12, half-even to 2E-12
        ("1E+3", 3, "333"),  # a revenue with a positive exponent has no decimal places
        ("1.2E+2", 7, "17"),
        ("0E-12", 4, "0.000000000000"),
        ("-0.00", 1, "0.00"),
        ("120.00", 2, "60.00"),
        ("999999999999999999.999999999999", 3, "333333333333333333.333333333333"),
    ],
)
def test_average_order_value_shown_with_format_money_is_plain(revenue: str, orders: int, shown: str) -> None:
    assert format_money(average_order_value(Decimal(revenue), orders)) == shown


# --- format_money -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("1E-12", "0.000000000001"),
        ("0.000000000001", "0.000000000001"),
        ("1.20", "1.20"),
        ("120.00", "120.00"),
        ("1E+3", "1000"),
        ("1.5E+2", "150"),
        ("0E-12", "0.000000000000"),
        ("0", "0"),
        ("-0", "0"),
        ("-0.00", "0.00"),
        ("-0E-12", "0.000000000000"),
        ("0E+3", "0"),
        ("-0E+3", "0"),
        ("1E-7", "0.0000001"),
        ("123456789012345678.123456789012", "123456789012345678.123456789012"),
        ("1E+17", "100000000000000000"),
        ("-1.5", "-1.5"),
        ("12.3450", "12.3450"),
    ],
)
def test_format_money_is_plain_decimal_notation_keeping_the_scale(amount: str, shown: str) -> None:
    assert format_money(Decimal(amount)) == shown


def test_format_money_never_rounds() -> None:
    digits = "9" * 40 + "." + "9" * 40  # beyond any context precision
    assert format_money(Decimal(digits)) == digits


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_format_money_rejects_what_is_not_an_amount(amount: str) -> None:
    with pytest.raises(ValueError):
        format_money(Decimal(amount))


# --- preferred_channel at the very same instant --------------------------------------------------


def test_preferred_channel_tie_at_the_same_instant_goes_to_email() -> None:
    assert preferred_channel(2, day(4), 2, day(4)) == "email"
