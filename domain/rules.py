"""Pure business rules shared by read models, the API and (later) audits. Each rule lives here once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from enum import StrEnum


class Stage(StrEnum):
    REACHED = "reached"
    ACQUIRED = "acquired"
    RETAINED = "retained"
    ADVOCATE = "advocate"
    AT_RISK = "at_risk"
    CHURNED = "churned"


@dataclass(frozen=True)
class LifecycleThresholds:
    """Contract §4: settings RAPPORT_AT_RISK_DAYS and RAPPORT_CHURN_DAYS."""

    at_risk_days: int = 180
    churn_days: int = 365


@dataclass(frozen=True)
class LifecycleFact:
    """What the lifecycle rules need of one interaction."""

    occurred_at: datetime
    event_id: str
    type: str
    survey_kind: str | None = None
    score: int | None = None


@dataclass(frozen=True)
class LifecycleState:
    stage: Stage
    since: datetime


@dataclass
class _Summary:
    """The facts folded up to a moment; 'latest' means the greatest (occurred_at, event_id)."""

    last_interaction_at: datetime | None = None
    purchases: int = 0
    last_purchase_at: datetime | None = None
    latest_survey: LifecycleFact | None = None
    latest_nps: int | None = None

    def add(self, fact: LifecycleFact) -> None:
        self.last_interaction_at = fact.occurred_at
        if fact.type == "purchase":
            self.purchases += 1
            self.last_purchase_at = fact.occurred_at
        elif fact.type == "survey_response":
            self.latest_survey = fact
            if fact.survey_kind == "nps":
                self.latest_nps = fact.score

    def stage_at(self, at: datetime, thresholds: LifecycleThresholds) -> Stage:
        """Contract §4: the first rule that holds gives the stage."""
        assert self.last_interaction_at is not None
        if at - self.last_interaction_at > timedelta(days=thresholds.churn_days):
            return Stage.CHURNED
        survey = self.latest_survey
        if survey is not None and survey.score is not None and (
            (survey.survey_kind == "nps" and survey.score < 6)
            or (survey.survey_kind == "csat" and survey.score < 3)
        ):
            return Stage.AT_RISK
        if self.last_purchase_at is not None and at - self.last_purchase_at > timedelta(
            days=thresholds.at_risk_days
        ):
            return Stage.AT_RISK
        if self.purchases >= 2:
            return Stage.ADVOCATE if self.latest_nps in (9, 10) else Stage.RETAINED
        return Stage.ACQUIRED if self.purchases == 1 else Stage.REACHED

    def threshold_moments(self, thresholds: LifecycleThresholds) -> list[datetime]:
        """Moments after which the passing of time alone can change the stage."""
        assert self.last_interaction_at is not None
        moments = [self.last_interaction_at + timedelta(days=thresholds.churn_days)]
        if self.last_purchase_at is not None:
            moments.append(self.last_purchase_at + timedelta(days=thresholds.at_risk_days))
        return sorted(moments)


_JUST_AFTER = timedelta(microseconds=1)


def lifecycle_at(
    facts: Iterable[LifecycleFact], as_of: datetime, thresholds: LifecycleThresholds
) -> LifecycleState | None:
    """The stage at `as_of` from the facts that occurred by then, and since when it holds.

    Walks the facts in event time, so the answer is the same whatever order they arrived in.
    A stage reached by the passing of time starts at the moment the threshold passed.
    None when the customer had no interaction by `as_of`.
    """
    ordered = sorted(
        (f for f in facts if f.occurred_at <= as_of), key=lambda f: (f.occurred_at, f.event_id)
    )
    summary = _Summary()
    current: LifecycleState | None = None

    def observe(stage: Stage, since: datetime) -> None:
        nonlocal current
        if current is None or current.stage != stage:
            current = LifecycleState(stage, since)

    i = 0
    while i < len(ordered):
        moment = ordered[i].occurred_at
        while i < len(ordered) and ordered[i].occurred_at == moment:
            summary.add(ordered[i])
            i += 1
        observe(summary.stage_at(moment, thresholds), moment)
        segment_end = ordered[i].occurred_at if i < len(ordered) else as_of
        for passed in summary.threshold_moments(thresholds):
            if moment <= passed < segment_end:
                observe(summary.stage_at(passed + _JUST_AFTER, thresholds), passed)
    return current


def nps_category(score: int | None) -> str | None:
    """9–10 promoter, 7–8 passive, 0–6 detractor (contract §3)."""
    if score is None:
        return None
    if score >= 9:
        return "promoter"
    return "passive" if score >= 7 else "detractor"


def preferred_channel(
    inbound_calls: int,
    last_inbound_call_at: datetime | None,
    inbound_emails: int,
    last_inbound_email_at: datetime | None,
) -> str | None:
    """Of inbound calls ('phone') and inbound emails ('email'), the one with more events;
    a tie goes to the one with the later event; None with neither (contract §3)."""
    if inbound_calls == 0 and inbound_emails == 0:
        return None
    if inbound_calls != inbound_emails:
        return "phone" if inbound_calls > inbound_emails else "email"
    assert last_inbound_call_at is not None and last_inbound_email_at is not None
    return "phone" if last_inbound_call_at > last_inbound_email_at else "email"


# Amounts have at most 30 digits (the contract's bound): with 60 digits of precision, sums of
# up to 10^29 of them and their averages are exact (Python's default context keeps only 28).
MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)


def average_order_value(revenue: Decimal, orders: int) -> Decimal:
    """Revenue / orders, to the same number of decimal places as the revenue."""
    exponent = min(revenue.as_tuple().exponent, 0)  # type: ignore[type-var]
    with localcontext(MONEY_CONTEXT):
        return (revenue / orders).quantize(Decimal(1).scaleb(exponent))
