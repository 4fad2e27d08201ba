"""Alerts (issue 16, contract §6): which of a customer's changes Rapport tells a follow-up team of.

- `alarm_answer`: an alarm answer (§3b: NPS below 6, CSAT below 3), one alert per answer.
- `at_risk`, `churned`: the customer enters that stage (§4), by an event or by the passing of time.

**One alert per fact, whoever finds it and however often.** The id is derived from what the alert
is about, never from when or by whom it was found, nor from whose customer id it is under:
- an alert caused by an event is named by the event's `event_id` (unique in the event store, and
  the same whoever owns the event after a merge or a split);
- a change by the passing of time (`ChangeByTime`) is named by its kind and its *anchor*, the
  event whose age crossed the threshold: the customer's latest purchase when it enters `at_risk`
  (no purchase for 180 days), the latest interaction when it enters `churned`. The anchor is read
  from the stored facts (`ChangeByTime.anchor_type`), so the alert is named once the anchor is known.
Refolds, retries, restarts and identity changes find the same ids again, and the store's unique
key keeps the first. An alarm answer that also brings the customer into `at_risk` is one alert
(the event names both): `alarm_answer`, the more specific kind.

**Alerts are what Rapport told people.** A late event that rewrites a customer's history does not
retract an alert already raised; it may raise new ones (a threshold that now passes from another
anchor is another fact, so another alert).

**When an alert is raised** (decided by the database's clock, `projections.alerts`): an alert
caused by an event is due at once, whatever its `occurred_at` (a producer's clock may run a little
ahead); a change by the passing of time is due just after its threshold passes (`due_at`, the rules
say "more than N days"). **No backfill:** a change that happened more than `max_age` before Rapport
raises it (a replay of years of history, a first deployment, a late batch) raises none: a call-back
team wants news, not thousands of alerts about the past.

Alerts hold ids, kinds, reasons, times and amounts only: the reasons are made here from a survey's
kind and score or a threshold's length, never from the text of an event, so forgetting a customer
(crypto-shredding) leaves no personal data in them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid5

from domain.lifecycle import JUST_AFTER, LifecycleFact, Stage, StageInterval
from domain.satisfaction import is_alarm_answer

_NAMESPACE = UUID("6f0e5c1a-9d0b-4c55-8a43-2b7f3c1e9a16")  # fixed for ever: alert ids depend on it


class AlertKind(StrEnum):
    ALARM_ANSWER = "alarm_answer"
    AT_RISK = "at_risk"
    CHURNED = "churned"


STAGE_KINDS = {Stage.AT_RISK: AlertKind.AT_RISK, Stage.CHURNED: AlertKind.CHURNED}


@dataclass(frozen=True)
class Alert:
    """One alert. `occurred_at`: when what it is about happened (the event's time, or the instant the
    threshold passed); `due_at`: the first instant it may be raised (None: at once, for an alert
    caused by an event); `last_contact_at`: the customer's latest interaction."""

    alert_id: str
    customer_id: str
    kind: AlertKind
    reason: str
    occurred_at: datetime
    due_at: datetime | None
    event_id: str | None
    last_contact_at: datetime | None


@dataclass(frozen=True)
class ChangeByTime:
    """A stage entered by the passing of time, before its alert is named: `passed_at` is the instant
    the threshold passed; the alert is named by the anchor, the latest fact of `anchor_type` (any
    interaction when None) that occurred by then."""

    customer_id: str
    kind: AlertKind
    reason: str
    passed_at: datetime
    last_contact_at: datetime | None

    @property
    def due_at(self) -> datetime:
        """Just after the threshold passed: the rules say "more than N days"."""
        return self.passed_at + JUST_AFTER

    @property
    def anchor_type(self) -> str | None:
        return "purchase" if self.kind is AlertKind.AT_RISK else None

    def alert(self, anchor_event_id: str) -> Alert:
        return Alert(time_alert_id(self.kind, anchor_event_id), self.customer_id, self.kind, self.reason,
                     self.passed_at, self.due_at, None, self.last_contact_at)


Found = Alert | ChangeByTime


def event_alert_id(event_id: str) -> str:
    return str(uuid5(_NAMESPACE, f"event:{event_id}"))


def time_alert_id(kind: AlertKind, anchor_event_id: str) -> str:
    """The id of the change of `kind` by the passing of time whose threshold is counted from this event."""
    return str(uuid5(_NAMESPACE, f"time:{kind.value}:{anchor_event_id}"))


def alarm_alert(customer_id: str, fact: LifecycleFact, last_contact_at: datetime | None) -> Alert | None:
    """The alert of a survey answer, if it is an alarm answer."""
    if fact.type != "survey_response" or not is_alarm_answer(fact.survey_kind, fact.score):
        return None
    return Alert(event_alert_id(fact.event_id), customer_id, AlertKind.ALARM_ANSWER,
                 f"{(fact.survey_kind or '').upper()} {fact.score}", fact.occurred_at, None, fact.event_id,
                 last_contact_at)


def stage_alert(customer_id: str, interval: StageInterval, last_contact_at: datetime | None) -> Found | None:
    """The alert of entering a stage, if it is `at_risk` or `churned` (entered from another stage):
    an `Alert` when an event caused it, a `ChangeByTime` to name when the passing of time did."""
    kind = STAGE_KINDS.get(interval.stage)
    if kind is None or interval.previous_stage == interval.stage:
        return None
    if interval.event_id is not None:
        return Alert(event_alert_id(interval.event_id), customer_id, kind, interval.reason, interval.since, None,
                     interval.event_id, last_contact_at)
    return ChangeByTime(customer_id, kind, interval.reason, interval.since, last_contact_at)


def alerts_of(customer_id: str, facts: Iterable[LifecycleFact], history: Iterable[StageInterval],
              last_contact_at: datetime | None) -> list[Found]:
    """The alerts of these new facts and of these stage intervals, each once (an alarm answer before
    the `at_risk` its event brings: the same id, kept as `alarm_answer`)."""
    found: dict[object, Found] = {}
    for fact in facts:
        if (alert := alarm_alert(customer_id, fact, last_contact_at)) is not None:
            found.setdefault(alert.alert_id, alert)
    for interval in history:
        if (item := stage_alert(customer_id, interval, last_contact_at)) is not None:
            found.setdefault(item.alert_id if isinstance(item, Alert) else (item.kind, item.passed_at), item)
    return list(found.values())
