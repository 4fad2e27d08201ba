"""Read model `satisfaction`: survey answers by day, kind and channel; each customer's latest
answer; what revenue-by-category needs (contract §3, §3b).

- `satisfaction_days`: one row per (day in UTC, kind, channel): responses, score sum, promoters,
  passives, detractors, satisfied CSAT answers, alarms. Weeks and months are sums of days.
- `satisfaction_responses`: every answer with its channel. A response may arrive before the
  event its `about_event_id` names: it counts as `unknown` until that event is stored, then its
  day bucket moves to that event's channel (in the same transaction as the event).
- `satisfaction_contacts`: calls, emails and purchases (channel, time, amount), to find the
  channel of an answer and the revenue of a customer at a time.
- `satisfaction_latest`: each customer's latest answer of either kind, by (occurred_at, event_id).
- `satisfaction_customers`: when each customer was first seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from domain.customer import TYPE_BY_EVENT_CLASS
from domain.rules import nps_category
from domain.satisfaction import CHANNEL_BY_EVENT_TYPE, UNKNOWN_CHANNEL, is_alarm_answer, is_satisfied_csat
from projections.readmodel import (
    LIVE_SCHEMA,
    Batch,
    Column,
    FunctionBatch,
    Merged,
    MergeTable,
    ModelSettings,
    ReadModel,
    Table,
    View,
    earliest,
    key,
    latest,
    summed,
)

NAME = "satisfaction"

DAYS = Table(
    "satisfaction_days",
    (key("day", "date"), key("kind"), key("channel"), summed("responses"), summed("score_sum", "bigint"),
     summed("promoters"), summed("passives"), summed("detractors"), summed("satisfied"), summed("alarms")),
    primary_key=("day", "kind", "channel"),
    fillfactor=70,
    doc="Survey answers per day (UTC), kind and channel (read model satisfaction).",
)
RESPONSES = Table(
    "satisfaction_responses",
    (key("customer_id"), key("event_id"), Column("occurred_at", "timestamptz", not_null=True),
     Column("kind", "text", not_null=True), Column("score", "int", not_null=True), Column("about_event_id", "text"),
     Column("channel", "text", not_null=True)),
    primary_key=("customer_id", "event_id"),
    indexes=("(customer_id, about_event_id) WHERE channel = 'unknown'", "(kind, occurred_at)"),
    doc="Every survey answer with the channel it is about (read model satisfaction).",
)
CONTACTS = Table(
    "satisfaction_contacts",
    (key("customer_id"), key("event_id"), Column("channel", "text", not_null=True),
     Column("occurred_at", "timestamptz", not_null=True), Column("currency", "text"), Column("amount", "numeric")),
    primary_key=("customer_id", "event_id"),
    indexes=("(occurred_at) WHERE amount IS NOT NULL",),
    doc="Calls, emails and purchases: the channels answers are about, and revenue (read model satisfaction).",
)
LATEST = Table(
    "satisfaction_latest",
    (key("customer_id"), *latest("answer", answer_kind="text", answer_score="int", answer_alarm="boolean")),
    primary_key=("customer_id",),
    fillfactor=70,
    indexes=('(answer_at DESC, answer_event_id DESC) WHERE answer_alarm',),
    doc="Each customer's latest survey answer by (occurred_at, event_id) (read model satisfaction).",
)
CUSTOMERS = Table(
    "satisfaction_customers",
    (key("customer_id"), earliest("first_seen_at")),
    primary_key=("customer_id",),
    indexes=("(first_seen_at)",),
    doc="When each customer was first seen (read model satisfaction).",
)


def day_row(day: Any, kind: str, channel: str, score: int, sign: int) -> tuple[Any, ...]:
    """What one answer adds to (sign 1) or takes from (sign -1) its day bucket."""
    category = nps_category(score) if kind == "nps" else None
    return (day, kind, channel, sign, sign * score, sign * (category == "promoter"), sign * (category == "passive"),
            sign * (category == "detractor"), sign * (kind == "csat" and is_satisfied_csat(score)),
            sign * is_alarm_answer(kind, score))


VIEWS = (
    View("satisfaction_daily", "SELECT day, kind, channel, responses, score_sum, promoters, passives, detractors, "
         "satisfied, alarms FROM {satisfaction_days}",
         "Survey answers per UTC day, kind (nps, csat) and channel (phone, email, purchase, unknown); weeks and "
         "months are sums of days (read model satisfaction).",
         (("channel", "the type of the event the answer is about: phone, email, purchase, or unknown"),
          ("promoters", "NPS answers 9-10"), ("passives", "NPS answers 7-8"), ("detractors", "NPS answers 0-6"),
          ("satisfied", "CSAT answers 4-5"), ("alarms", "alarm answers: NPS below 6 or CSAT below 3"))),
    View("survey_answers", "SELECT customer_id, event_id, occurred_at, kind, score, about_event_id, channel "
         "FROM {satisfaction_responses}", "Every survey answer with its channel (read model satisfaction)."),
    View("latest_answers", "SELECT customer_id, answer_kind AS kind, answer_score AS score, answer_alarm AS alarm, "
         "answer_at AS answered_at, answer_event_id AS event_id FROM {satisfaction_latest}",
         "Each customer's latest survey answer of either kind, by occurred_at then event_id (read model "
         "satisfaction).", (("alarm", "true for an alarm answer: NPS below 6 or CSAT below 3"),)),
    View("purchases", "SELECT customer_id, event_id, occurred_at, currency, amount FROM {satisfaction_contacts} "
         "WHERE amount IS NOT NULL", "Every purchase with its time, currency and amount (read model satisfaction)."),
)


@dataclass
class _Pending:
    """What a batch writes at its end: answers waiting for its contacts move to their channel; merged
    day buckets, latest answers, first contacts."""

    contacts: list[tuple[Any, ...]] = field(default_factory=list)  # (customer_id, event_id, channel)
    days: Merged = field(default_factory=dict)
    latest: Merged = field(default_factory=dict)
    customers: Merged = field(default_factory=dict)


class Satisfaction(ReadModel):
    name = NAME
    tables = (DAYS, RESPONSES, CONTACTS, LATEST, CUSTOMERS)
    views = VIEWS

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        super().__init__(schema, settings)
        self._days, self._latest, self._customers = MergeTable(DAYS), MergeTable(LATEST), MergeTable(CUSTOMERS)
        self._sql = {
            "days": self._days.upsert_sql(schema), "latest": self._latest.upsert_sql(schema),
            "customers": self._customers.upsert_sql(schema),
        }

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        batch = self.batch(curs)
        batch.add(events)
        batch.finish()

    def batch(self, curs: Any) -> Batch:
        """Contacts and answers are stored as each page comes (an answer finds the channel of a
        contact of an earlier page of the batch); day buckets, latest answers and first contacts
        are merged and written once at `finish`."""
        pending = _Pending()
        return FunctionBatch(partial(self._add, curs, pending), partial(self._finish, curs, pending))

    def _add(self, curs: Any, pending: _Pending, events: Sequence[Any]) -> None:
        contacts: list[tuple[Any, ...]] = []
        responses: list[list[Any]] = []
        seen: list[tuple[str, datetime]] = []
        for event in events:
            event_type = TYPE_BY_EVENT_CLASS.get(type(event))
            if event_type is None:
                continue
            customer_id, data = self.owners.of(event), event.data
            seen.append((customer_id, event.occurred_at))
            if event_type == "survey_response":
                responses.append([customer_id, event.event_id, event.occurred_at, data["kind"], int(data["score"]),
                                  data.get("about_event_id"), UNKNOWN_CHANNEL])
            else:
                purchase = event_type == "purchase"
                contacts.append((customer_id, event.event_id, CHANNEL_BY_EVENT_TYPE[event_type], event.occurred_at,
                                 data["currency"] if purchase else None, Decimal(data["amount"]) if purchase else None))
        if contacts:
            CONTACTS.copy(curs, self.schema, contacts)
            pending.contacts += [c[:3] for c in contacts]
        if responses:
            self._find_channels(curs, responses)
            RESPONSES.copy(curs, self.schema, responses)
            self._days.merge_into(pending.days, [day_row(r[2].date(), r[3], r[6], r[4], 1) for r in responses])
            self._latest.merge_into(pending.latest, [(r[0], r[3], r[4], is_alarm_answer(r[3], r[4]), r[2], r[1])
                                                     for r in responses])
        self._customers.merge_into(pending.customers, seen)

    def _finish(self, curs: Any, pending: _Pending) -> None:
        if pending.contacts:  # answers stored before (an earlier page or batch) the contact they are about
            self._days.merge_into(pending.days, self._move_waiting_answers(curs, pending.contacts))
        if pending.latest:
            self._latest.upsert(curs, self.schema, self._sql["latest"], pending.latest)
        if pending.days:
            self._days.upsert(curs, self.schema, self._sql["days"], pending.days)
            merged = MergeTable.in_key_order(pending.days)
            # A bucket whose every answer moved to another channel is no bucket (an answer that
            # moves within the batch changes its old bucket by 0).
            emptied = [row[:3] for row in merged if row[3] <= 0]
            if emptied:
                curs.execute(f"DELETE FROM {self.t(DAYS.name)} WHERE responses = 0 AND (day, kind, channel) IN "  # noqa: S608 - names from constants and the checked schema
                             "(SELECT * FROM unnest(%b::date[], %b::text[], %b::text[]))",
                             [list(column) for column in zip(*emptied, strict=True)])
        if pending.customers:
            self._customers.upsert(curs, self.schema, self._sql["customers"], pending.customers)

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        curs.execute(f"DELETE FROM {self.t(RESPONSES.name)} WHERE customer_id = ANY(%s) "  # noqa: S608 - names from constants and the checked schema
                     "RETURNING occurred_at, kind, score, channel", (list(customers),))
        pending = _Pending()
        self._days.merge_into(pending.days, [day_row(r["occurred_at"].astimezone(UTC).date(), r["kind"], r["channel"],
                                                     r["score"], -1) for r in curs.fetchall()])
        for table in (CONTACTS, LATEST, CUSTOMERS):
            curs.execute(f"DELETE FROM {self.t(table.name)} WHERE customer_id = ANY(%s)", (list(customers),))  # noqa: S608 - names from constants and the checked schema
        self._finish(curs, pending)  # takes the answers out of their day buckets

    def _find_channels(self, curs: Any, responses: list[list[Any]]) -> None:
        """Set each answer's channel from the stored event it is about (this page's included)."""
        about = [(r[0], r[5]) for r in responses if r[5]]
        if not about:
            return
        curs.execute(
            f"SELECT c.customer_id, c.event_id, c.channel FROM {self.t(CONTACTS.name)} c "  # noqa: S608 - names from constants and the checked schema
            "JOIN unnest(%b::text[], %b::text[]) AS a(customer_id, event_id) USING (customer_id, event_id)",
            ([c for c, _ in about], [e for _, e in about]),
        )
        channels = {(row["customer_id"], row["event_id"]): row["channel"] for row in curs.fetchall()}
        for response in responses:
            response[6] = channels.get((response[0], response[5]), UNKNOWN_CHANNEL)

    def _move_waiting_answers(self, curs: Any, contacts: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Answers stored before the event they are about move from `unknown` to its channel."""
        curs.execute(
            f"UPDATE {self.t(RESPONSES.name)} AS r SET channel = c.channel "  # noqa: S608 - names from constants and the checked schema
            "FROM unnest(%b::text[], %b::text[], %b::text[]) AS c(customer_id, event_id, channel) "
            "WHERE r.customer_id = c.customer_id AND r.about_event_id = c.event_id AND r.channel = 'unknown' "
            "RETURNING r.occurred_at, r.kind, r.score, c.channel",
            ([c[0] for c in contacts], [c[1] for c in contacts], [c[2] for c in contacts]),
        )
        moved = []
        for row in curs.fetchall():
            day = row["occurred_at"].astimezone(UTC).date()
            moved.append(day_row(day, row["kind"], UNKNOWN_CHANNEL, row["score"], -1))
            moved.append(day_row(day, row["kind"], row["channel"], row["score"], 1))
        return moved


