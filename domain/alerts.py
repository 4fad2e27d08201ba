"""Alerts (issue 16, contract §6): which of a customer's changes Rapport tells a follow-up team of.

- `alarm_answer`: an alarm answer (§3b: NPS below 6, CSAT below 3), one alert per answer.
- `at_risk`, `churned`: the customer enters that stage (§4), by an event or by the passing of time.

**One alert per fact, whoever finds it and however often.** The id is derived from what the alert
is about, never from when or by whom it was found: an alert caused by an event is named by the
event's `event_id` (unique in the event store, and the same whoever owns the event after a merge);
one caused by the passing of time by its kind, its customer and the instant the threshold passed.
Refolds, retries, restarts and identity changes find the same ids again, and the store's unique
key keeps the first. An alarm answer that also brings the customer into `at_risk` is one alert
(the event names both): `alarm_answer`, the more specific kind.

**Alerts are what Rapport told people.** A late event that rewrites a customer's history does not
retract an alert already raised; it may raise new ones (a threshold that now passed earlier is
another instant, so another alert).

**No backfill** (`is_news`): a change that happened more than `max_age` before Rapport learns of it
(a replay of years of history, a first deployment, a late batch) raises none: a call-back team
wants news, not thousands of alerts about the past. A change by the passing of time is due when
its threshold passes (`due_at`) and is not raised before.

Alerts hold ids, kinds, reasons, times and amounts only: the reasons are made here from a survey's
kind and score or a threshold's length, never from the text of an event, so forgetting a customer
(crypto-shredding) leaves no personal data in them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID, uuid5

from domain.lifecycle import LifecycleFact, Stage, StageInterval
from domain.satisfaction import is_alarm_answer

_NAMESPACE = UUID("6f0e5c1a-9d0b-4c55-8a43-2b7f3c1e9a16")  # fixed for ever: alert ids depend on it
_JUST_AFTER = timedelta(microseconds=1)


class AlertKind(StrEnum):
    ALARM_ANSWER = "alarm_answer"
    AT_RISK = "at_risk"
    CHURNED = "churned"


STAGE_KINDS = {Stage.AT_RISK: AlertKind.AT_RISK, Stage.CHURNED: AlertKind.CHURNED}


@dataclass(frozen=True)
class Alert:
    """One alert. `occurred_at`: when what it is about happened (the event's time, or the instant the
    threshold passed); `due_at`: the first instant it may be raised (a microsecond after a threshold
    passed, since the rules say "more than N days"); `last_contact_at`: the customer's latest interaction."""

    alert_id: str
    customer_id: str
    kind: AlertKind
    reason: str
    occurred_at: datetime
    due_at: datetime
    event_id: str | None
    last_contact_at: datetime | None


def event_alert_id(event_id: str) -> str:
    return str(uuid5(_NAMESPACE, f"event:{event_id}"))


def time_alert_id(kind: AlertKind, customer_id: str, passed_at: datetime) -> str:
    return str(uuid5(_NAMESPACE, f"time:{kind.value}:{customer_id}:{passed_at.astimezone(UTC).isoformat()}"))


def alarm_alert(customer_id: str, fact: LifecycleFact, last_contact_at: datetime | None) -> Alert | None:
    """The alert of a survey answer, if it is an alarm answer."""
    if fact.type != "survey_response" or not is_alarm_answer(fact.survey_kind, fact.score):
        return None
    return Alert(event_alert_id(fact.event_id), customer_id, AlertKind.ALARM_ANSWER,
                 f"{(fact.survey_kind or '').upper()} {fact.score}", fact.occurred_at, fact.occurred_at, fact.event_id,
                 last_contact_at)


def stage_alert(customer_id: str, interval: StageInterval, last_contact_at: datetime | None) -> Alert | None:
    """The alert of entering a stage, if it is `at_risk` or `churned` (entered from another stage)."""
    kind = STAGE_KINDS.get(interval.stage)
    if kind is None or interval.previous_stage == interval.stage:
        return None
    if interval.event_id is not None:
        return Alert(event_alert_id(interval.event_id), customer_id, kind, interval.reason, interval.since,
                     interval.since, interval.event_id, last_contact_at)
    return Alert(time_alert_id(kind, customer_id, interval.since), customer_id, kind, interval.reason, interval.since,
                 interval.since + _JUST_AFTER, None, last_contact_at)


def alerts_of(customer_id: str, facts: Iterable[LifecycleFact], history: Iterable[StageInterval],
              last_contact_at: datetime | None) -> list[Alert]:
    """The alerts of these new facts and of these stage intervals, one per id (an alarm answer
    before the `at_risk` its event brings: the same id, kept as `alarm_answer`)."""
    found: dict[str, Alert] = {}
    for fact in facts:
        if (alert := alarm_alert(customer_id, fact, last_contact_at)) is not None:
            found.setdefault(alert.alert_id, alert)
    for interval in history:
        if (alert := stage_alert(customer_id, interval, last_contact_at)) is not None:
            found.setdefault(alert.alert_id, alert)
    return list(found.values())


def is_news(alert: Alert, now: datetime, max_age: timedelta) -> bool:
    """Whether an alert found at `now` is raised: it is due, and it happened at most `max_age` ago."""
    return alert.due_at <= now and now - alert.occurred_at <= max_age
