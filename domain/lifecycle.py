"""Lifecycle stages (contract §4) in event time, as a history of intervals.

One fold serves every caller: the lifecycle read model (which stores the intervals and resumes the
fold when a customer's next fact is later than every fact folded so far), the customer view, and
the audit views (which fold the facts known at a moment). A stage reached by the passing of time
starts at the moment the threshold passed, which is known in advance from the facts, so the
history runs into the future: its last interval is open (`until` is None).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from domain.rules import nps_category
from domain.satisfaction import is_alarm_answer


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

    # Made once per settings, not once per fact.
    @cached_property
    def at_risk_after(self) -> timedelta:
        return timedelta(days=self.at_risk_days)

    @cached_property
    def churn_after(self) -> timedelta:
        return timedelta(days=self.churn_days)

    @cached_property
    def at_risk_reason(self) -> str:
        return f"no purchase for {self.at_risk_days} days"

    @cached_property
    def churn_reason(self) -> str:
        return f"no interaction for {self.churn_days} days"


@dataclass(frozen=True)
class LifecycleFact:
    """What the lifecycle rules need of one interaction."""

    occurred_at: datetime
    event_id: str
    type: str
    survey_kind: str | None = None
    score: int | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        """Event-time order: `occurred_at`, ties broken by `event_id` (the order of every 'latest')."""
        return (self.occurred_at, self.event_id)


@dataclass(frozen=True)
class LifecycleState:
    stage: Stage
    since: datetime


@dataclass(frozen=True)
class StageInterval:
    """One stage of a customer's history. A stage caused by an event holds from `since` on; one
    reached by the passing of time (`event_id` None) holds from just after `since`, the moment
    the threshold passed (the rules say "more than N days")."""

    stage: Stage
    since: datetime
    until: datetime | None
    reason: str
    event_id: str | None
    previous_stage: Stage | None

    @property
    def by_time(self) -> bool:
        return self.event_id is None

    def starts_by(self, at: datetime) -> bool:
        return self.since < at if self.by_time else self.since <= at


@dataclass
class _Summary:
    """The facts folded up to a moment; 'latest' means the greatest (occurred_at, event_id)."""

    last_interaction_at: datetime | None = None
    purchases: int = 0
    last_purchase_at: datetime | None = None
    latest_survey_kind: str | None = None
    latest_survey_score: int | None = None
    latest_nps: int | None = None

    def add(self, fact: LifecycleFact) -> None:
        self.last_interaction_at = fact.occurred_at
        if fact.type == "purchase":
            self.purchases += 1
            self.last_purchase_at = fact.occurred_at
        elif fact.type == "survey_response":
            self.latest_survey_kind, self.latest_survey_score = fact.survey_kind, fact.score
            if fact.survey_kind == "nps":
                self.latest_nps = fact.score

    def stage_at(self, at: datetime, thresholds: LifecycleThresholds) -> Stage:
        """Contract §4: the first rule that holds gives the stage."""
        assert self.last_interaction_at is not None
        if at - self.last_interaction_at > thresholds.churn_after:
            return Stage.CHURNED
        if is_alarm_answer(self.latest_survey_kind, self.latest_survey_score):
            return Stage.AT_RISK
        if self.last_purchase_at is not None and at - self.last_purchase_at > thresholds.at_risk_after:
            return Stage.AT_RISK
        if self.purchases >= 2:
            return Stage.ADVOCATE if nps_category(self.latest_nps) == "promoter" else Stage.RETAINED
        return Stage.ACQUIRED if self.purchases == 1 else Stage.REACHED

    def threshold_moments(self, thresholds: LifecycleThresholds) -> list[tuple[datetime, str]]:
        """Moments after which the passing of time alone can change the stage, with the reason."""
        assert self.last_interaction_at is not None
        churn = (self.last_interaction_at + thresholds.churn_after, thresholds.churn_reason)
        if self.last_purchase_at is None:
            return [churn]
        at_risk = (self.last_purchase_at + thresholds.at_risk_after, thresholds.at_risk_reason)
        return [churn, at_risk] if churn <= at_risk else [at_risk, churn]


JUST_AFTER = timedelta(microseconds=1)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _label(fact: LifecycleFact) -> str:
    if fact.type == "survey_response":
        return f"{(fact.survey_kind or '').upper()} {fact.score}"
    return fact.type


def _cause(stage: Stage, group: Sequence[LifecycleFact], summary: _Summary,
           previous: Stage | None) -> tuple[str, str]:
    """The reason a person can read, and the event it names, for a change at one moment."""
    purchases = [f for f in group if f.type == "purchase"]
    surveys = [f for f in group if f.type == "survey_response"]
    if stage in (Stage.ACQUIRED, Stage.RETAINED, Stage.ADVOCATE) and purchases:
        return f"{_ordinal(summary.purchases)} purchase", purchases[-1].event_id
    if surveys:
        return _label(surveys[-1]), surveys[-1].event_id
    latest = group[-1]
    if previous is None:
        return f"first {_label(latest)}", latest.event_id
    return f"{_label(latest)} (was {previous})", latest.event_id


@dataclass
class LifecycleFold:
    """Facts folded in event time, with the stage changes found so far.

    `changes` holds the changes up to the latest fact's moment, the first of them being number
    `first_seq` of the history (a stored fold keeps only the last: the earlier ones are final);
    the changes the passing of time will bring after the latest fact are derived by `history()`.
    A fact later than every folded one continues the fold (`can_continue_with`); an earlier one
    needs a new fold of all the facts.
    """

    thresholds: LifecycleThresholds
    summary: _Summary = field(default_factory=_Summary)
    last_key: tuple[datetime, str] | None = None
    changes: list[StageInterval] = field(default_factory=list)
    first_seq: int = 0

    def can_continue_with(self, facts: Iterable[LifecycleFact]) -> bool:
        last = self.last_key
        return last is None or all(f.occurred_at > last[0] for f in facts)

    def add(self, facts: Iterable[LifecycleFact]) -> None:
        """Fold facts that all occurred after every fact folded so far (any order among them)."""
        ordered = sorted(facts, key=lambda f: f.key)
        assert self.can_continue_with(ordered), "a fact earlier than the folded ones needs a new fold"
        i = 0
        while i < len(ordered):
            moment = ordered[i].occurred_at
            self._time_passes(until=moment)
            group = []
            while i < len(ordered) and ordered[i].occurred_at == moment:
                self.summary.add(ordered[i])
                group.append(ordered[i])
                i += 1
            self.last_key = group[-1].key
            stage = self.summary.stage_at(moment, self.thresholds)
            previous = self.changes[-1].stage if self.changes else None
            if stage != previous:
                reason, event_id = _cause(stage, group, self.summary, previous)
                self._change(stage, moment, reason, event_id)

    def _time_passes(self, until: datetime | None) -> None:
        """Changes by the passing of time from the latest fact's moment to `until` (excluded)."""
        if self.last_key is None:
            return
        last_moment = self.last_key[0]
        for passed, reason in self.summary.threshold_moments(self.thresholds):
            if last_moment <= passed and (until is None or passed < until):
                stage = self.summary.stage_at(passed + JUST_AFTER, self.thresholds)
                if stage != self.changes[-1].stage:
                    self._change(stage, passed, reason, None)

    def _change(self, stage: Stage, since: datetime, reason: str, event_id: str | None) -> None:
        previous = self.changes[-1] if self.changes else None
        if previous is not None:
            self.changes[-1] = StageInterval(previous.stage, previous.since, since, previous.reason,
                                             previous.event_id, previous.previous_stage)
        self.changes.append(StageInterval(stage, since, None, reason, event_id, previous.stage if previous else None))

    def history(self) -> list[StageInterval]:
        """Every interval, oldest first, including those the passing of time will bring."""
        ahead = LifecycleFold(self.thresholds, replace(self.summary), self.last_key, list(self.changes),
                              self.first_seq)
        ahead._time_passes(until=None)
        return ahead.changes

    # -- storage: the read model keeps the fold to continue it with the next page -----------
    def to_json(self) -> dict[str, Any]:
        """The fold as JSON-ready values (times as ISO 8601 strings), with only its last change."""
        return {
            "first_seq": self.first_seq + max(len(self.changes) - 1, 0),
            "summary": {k: v.isoformat() if isinstance(v, datetime) else v for k, v in vars(self.summary).items()},
            "last_key": [self.last_key[0].isoformat(), self.last_key[1]] if self.last_key else None,
            "changes": [
                [c.stage.value, c.since.isoformat(), c.until.isoformat() if c.until else None, c.reason, c.event_id,
                 c.previous_stage.value if c.previous_stage else None]
                for c in self.changes[-1:]
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], thresholds: LifecycleThresholds) -> LifecycleFold:
        def time(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        summary = dict(data["summary"])
        for name in ("last_interaction_at", "last_purchase_at"):
            summary[name] = time(summary[name])
        last = data["last_key"]
        return cls(
            thresholds,
            _Summary(**summary),
            (datetime.fromisoformat(last[0]), last[1]) if last else None,
            [StageInterval(Stage(s), time(since), time(until), reason, event_id, Stage(prev) if prev else None)  # type: ignore[arg-type]
             for s, since, until, reason, event_id, prev in data["changes"]],
            data["first_seq"],
        )


def lifecycle_history(facts: Iterable[LifecycleFact], thresholds: LifecycleThresholds) -> list[StageInterval]:
    """The stage intervals from all these facts, in any arrival order (contract §3b)."""
    fold = LifecycleFold(thresholds)
    fold.add(facts)
    return fold.history()


def interval_at(history: Sequence[StageInterval], at: datetime) -> StageInterval | None:
    """The interval holding at `at`, or None before the first fact."""
    current = None
    for interval in history:
        if not interval.starts_by(at):
            break
        current = interval
    return current


def lifecycle_at(
    facts: Iterable[LifecycleFact], as_of: datetime, thresholds: LifecycleThresholds
) -> LifecycleState | None:
    """The stage at `as_of` from the facts that occurred by then, and since when it holds.
    None when the customer had no interaction by `as_of`."""
    interval = interval_at(lifecycle_history((f for f in facts if f.occurred_at <= as_of), thresholds), as_of)
    return LifecycleState(interval.stage, interval.since) if interval else None

