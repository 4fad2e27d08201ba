"""Read model `lifecycle`: each customer's stage history as intervals in event time (contract §3b, §4).

Recomputed per customer, not merged: `domain.lifecycle.LifecycleFold` gives the intervals, and
this module stores them. The fold of each customer is kept (`lifecycle_folds`), so a batch (a
page, or many pages while the projector catches up) whose facts are all later than the customer's
latest fact continues it and rewrites only the current interval and those after it, once per
batch; a late fact (earlier than the latest) folds the customer's facts (`lifecycle_facts`) again.
Either way the intervals are what §4 gives from all the events.

The intervals run into the future (the moments thresholds pass are known from the facts). The
number of customers in each stage at any time T comes from `lifecycle_stage_days` (per UTC day and
stage: intervals starting minus intervals ending): the sum over the days before T, plus the
intervals starting or ending on T's day up to T, found by index. So `GET /lifecycle/stages?as_of=T`
reads a few thousand small rows, whatever the number of customers, and folds no one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from domain.customer import TYPE_BY_EVENT_CLASS, Customer
from domain.lifecycle import JUST_AFTER, LifecycleFact, LifecycleFold, StageInterval
from projections.alerts import AlertOutbox
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
    key,
    summed,
)

NAME = "lifecycle"

FACTS = Table(
    "lifecycle_facts",
    (key("customer_id"), key("occurred_at", "timestamptz"), key("event_id"), Column("type", "text", not_null=True),
     Column("survey_kind", "text"), Column("score", "int")),
    primary_key=("customer_id", "occurred_at", "event_id"),
    doc="What the lifecycle rules need of each interaction (read model lifecycle).",
)
FOLDS = Table(
    "lifecycle_folds",
    (key("customer_id"), Column("fold", "jsonb", not_null=True)),
    primary_key=("customer_id",),
    fillfactor=70,
    doc="Each customer's lifecycle fold after its latest fact, to continue it (read model lifecycle).",
)
INTERVALS = Table(
    "lifecycle_intervals",
    (key("customer_id"), key("seq", "int"), Column("stage", "text", not_null=True),
     Column("since", "timestamptz", not_null=True), Column("until", "timestamptz"),
     Column("reason", "text", not_null=True), Column("event_id", "text"), Column("previous_stage", "text"),
     Column("starts_at", "timestamptz", not_null=True), Column("ends_at", "timestamptz"),
     Column("during", "tstzrange", not_null=True)),
    primary_key=("customer_id", "seq"),
    # Covering: the stage counts of `as_of`'s own day read the stage from the index alone (an
    # index-only scan), not from thousands of heap pages at a million customers.
    indexes=("(since)", "(starts_at) INCLUDE (stage)", "(ends_at) INCLUDE (stage)"),
    doc="Stage intervals per customer in event time, past and ahead (read model lifecycle). A stage reached "
        "by the passing of time (event_id null) holds from just after `since`: `starts_at`, `ends_at` and "
        "`during` are the exact instants it holds from and until.",
)
STAGE_DAYS = Table(
    "lifecycle_stage_days",
    (key("day", "date"), key("stage"), summed("change")),
    primary_key=("day", "stage"),
    fillfactor=70,
    doc="Per UTC day and stage: intervals starting minus intervals ending that day (read model lifecycle). "
        "The customers in a stage at T are the sum of the changes of the days before T, plus those of T's day "
        "up to T.",
)


def fact_of(event: Customer.Interaction) -> LifecycleFact:
    event_type = TYPE_BY_EVENT_CLASS[type(event)]
    if event_type == "survey_response":
        return LifecycleFact(event.occurred_at, event.event_id, event_type, event.data["kind"], int(event.data["score"]))
    return LifecycleFact(event.occurred_at, event.event_id, event_type)


def interval_rows(customer_id: str, history: Sequence[StageInterval], first_seq: int) -> list[tuple[Any, ...]]:
    """Rows of `lifecycle_intervals`, with the exact instants each interval holds from and until
    (a stage reached by the passing of time holds from a microsecond after `since`)."""
    starts = [i.since + JUST_AFTER if i.by_time else i.since for i in history]
    return [
        (customer_id, first_seq + n, interval.stage.value, interval.since, interval.until, interval.reason,
         interval.event_id, interval.previous_stage.value if interval.previous_stage else None,
         starts[n], starts[n + 1] if n + 1 < len(starts) else None)
        for n, interval in enumerate(history)
    ]


def stage_changes(stage: str, starts_at: datetime, ends_at: datetime | None, sign: int) -> list[tuple[Any, ...]]:
    """What one interval adds to (sign 1) or takes from (sign -1) `lifecycle_stage_days`."""
    changes = [(starts_at.astimezone(UTC).date(), stage, sign)]
    if ends_at is not None:
        changes.append((ends_at.astimezone(UTC).date(), stage, -sign))
    return changes


_INTERVAL_COLUMNS = ("customer_id, seq, stage, since, until, reason, event_id, previous_stage, "
                     "event_id IS NULL AS by_time, starts_at, ends_at, during")
VIEWS = (
    View("lifecycle_intervals", f"SELECT {_INTERVAL_COLUMNS} FROM {{lifecycle_intervals}}",  # noqa: S608 - view template: names from constants
         "Each customer's lifecycle stages as intervals in event time, past and ahead (contract §4; read model "
         "lifecycle). The stage at time T is the row whose `during` holds T: `WHERE during @> T`.",
         (("seq", "0 for the customer's first stage, then 1, 2, ..."),
          ("since", "when the stage began: the event's occurred_at, or the moment a threshold passed"),
          ("until", "when the next stage began; null for the last"),
          ("reason", "why, e.g. '2nd purchase', 'NPS 3', 'no purchase for 180 days'"),
          ("event_id", "the event that caused the change; null when the passing of time did"),
          ("by_time", "true when the passing of time caused the change (the stage holds from just after since)"),
          ("starts_at", "the first instant the stage holds (since, or a microsecond after it when by_time)"),
          ("ends_at", "the first instant it no longer holds; null for the last"),
          ("during", "[starts_at, ends_at) as a tstzrange"))),
    View("lifecycle_now", f"SELECT {_INTERVAL_COLUMNS} FROM {{lifecycle_intervals}} WHERE during @> now()",  # noqa: S608 - view template: names from constants
         "Each customer's current stage (the interval holding now; read model lifecycle)."),
)


class Lifecycle(ReadModel):
    name = NAME
    version = 3  # 2: effective start and end instants, stage changes per day; 3: covering start/end indexes
    tables = (FACTS, FOLDS, INTERVALS, STAGE_DAYS)
    views = VIEWS

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        super().__init__(schema, settings)
        self.thresholds = self.settings.thresholds
        # Only the live copy raises alerts (projections/alerts.py): a rebuild or a replay tells no one.
        self.alerts = AlertOutbox(FACTS, self.settings.alert_max_age) if schema == LIVE_SCHEMA else None
        self._upsert_folds = FOLDS.insert_sql(schema, "DO UPDATE SET fold = excluded.fold")
        self._interval_columns = [c.name for c in INTERVALS.columns if c.name != "during"]
        columns = ", ".join(self._interval_columns)
        self._insert_intervals = (
            f"WITH d AS (DELETE FROM {INTERVALS.staging(schema)} RETURNING *)\n"  # noqa: S608 - names from constants and the checked schema
            f"INSERT INTO {self.t(INTERVALS.name)} ({columns}, during)\n"
            f"SELECT {columns}, tstzrange(starts_at, ends_at, '[)') FROM d ORDER BY customer_id, seq"
        )
        self._stage_days = MergeTable(STAGE_DAYS)
        self._upsert_stage_days = self._stage_days.upsert_sql(schema)

    def create_statements(self) -> list[str]:
        return super().create_statements() + (self.alerts.create_statements() if self.alerts else [])

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        batch = self.batch(curs)
        batch.add(events)
        batch.finish()

    def batch(self, curs: Any) -> Batch:
        """Facts are stored as each page comes; each customer's fold is continued (or folded
        again) and its intervals written once, at `finish`."""
        new: dict[str, list[LifecycleFact]] = {}
        return FunctionBatch(partial(self._add_facts, curs, new), partial(self._fold, curs, new))

    def _add_facts(self, curs: Any, new: dict[str, list[LifecycleFact]], events: Sequence[Any]) -> None:
        facts = []
        for event in events:
            if type(event) in TYPE_BY_EVENT_CLASS:
                fact, customer_id = fact_of(event), self.owners.of(event)
                new.setdefault(customer_id, []).append(fact)
                facts.append((customer_id, fact.occurred_at, fact.event_id, fact.type, fact.survey_kind,
                              fact.score))
        if facts:
            FACTS.copy(curs, self.schema, facts)

    def _fold(self, curs: Any, new: dict[str, list[LifecycleFact]]) -> None:
        if not new:
            return
        curs.execute(f"SELECT customer_id, fold FROM {self.t(FOLDS.name)} WHERE customer_id = ANY(%s)", (list(new),))  # noqa: S608 - names from constants and the checked schema
        stored = {row["customer_id"]: row["fold"] for row in curs.fetchall()}
        folds: dict[str, LifecycleFold] = {}
        refold: list[str] = []
        for customer_id, customer_facts in new.items():
            fold = LifecycleFold.from_json(stored[customer_id], self.thresholds) if customer_id in stored \
                else LifecycleFold(self.thresholds)
            if fold.can_continue_with(customer_facts):
                fold.add(customer_facts)
                folds[customer_id] = fold
            else:
                refold.append(customer_id)
        if refold:  # a late fact: fold all of these customers' facts again, from the first
            curs.execute(f"SELECT customer_id, occurred_at, event_id, type, survey_kind, score FROM {self.t(FACTS.name)} "  # noqa: S608 - names from constants and the checked schema
                         "WHERE customer_id = ANY(%s)", (refold,))
            every: dict[str, list[LifecycleFact]] = {c: [] for c in refold}
            for row in curs.fetchall():
                every[row["customer_id"]].append(LifecycleFact(row["occurred_at"], row["event_id"], row["type"],
                                                               row["survey_kind"], row["score"]))
            for customer_id in refold:
                fold = folds[customer_id] = LifecycleFold(self.thresholds)
                fold.add(every[customer_id])
        self._write(curs, folds)
        if self.alerts is not None:
            self.alerts.raise_from_folds(curs, new, folds)

    def _write(self, curs: Any, folds: dict[str, LifecycleFold]) -> None:
        """Replace each customer's intervals from the first that may change (the one current at
        its latest fact, or all after a refold), and store its fold."""
        customers = sorted(folds)
        curs.execute(
            f"DELETE FROM {self.t(INTERVALS.name)} AS t USING unnest(%b::text[], %b::int[]) AS d(customer_id, seq) "  # noqa: S608 - names from constants and the checked schema
            "WHERE t.customer_id = d.customer_id AND t.seq >= d.seq RETURNING t.stage, t.starts_at, t.ends_at",
            (customers, [folds[c].first_seq for c in customers]),
        )
        changes = [c for r in curs.fetchall() for c in stage_changes(r["stage"], r["starts_at"], r["ends_at"], -1)]
        rows = [row for c in customers for row in interval_rows(c, folds[c].history(), folds[c].first_seq)]
        changes += [c for row in rows for c in stage_changes(row[2], row[8], row[9], 1)]
        INTERVALS.stage(curs, self.schema, rows, self._interval_columns)
        curs.execute(self._insert_intervals)
        FOLDS.stage(curs, self.schema, [(c, Jsonb(folds[c].to_json(), dumps=orjson.dumps)) for c in customers])
        curs.execute(self._upsert_folds)
        self._change_stage_days(curs, changes)

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        curs.execute(f"DELETE FROM {self.t(INTERVALS.name)} WHERE customer_id = ANY(%s) "  # noqa: S608 - names from constants and the checked schema
                     "RETURNING stage, starts_at, ends_at", (list(customers),))
        self._change_stage_days(curs, [c for r in curs.fetchall()
                                       for c in stage_changes(r["stage"], r["starts_at"], r["ends_at"], -1)])
        for table in (FACTS, FOLDS):
            curs.execute(f"DELETE FROM {self.t(table.name)} WHERE customer_id = ANY(%s)", (list(customers),))  # noqa: S608 - names from constants and the checked schema

    def _change_stage_days(self, curs: Any, changes: list[tuple[Any, ...]]) -> None:
        if not changes:
            return
        merged: Merged = {}
        self._stage_days.merge_into(merged, changes)
        self._stage_days.upsert(curs, self.schema, self._upsert_stage_days, merged)
        days = MergeTable.in_key_order(merged)
        # A day whose starts and ends cancel out holds no row (the same rows whatever the order).
        curs.execute(f"DELETE FROM {self.t(STAGE_DAYS.name)} WHERE change = 0 AND (day, stage) IN "  # noqa: S608 - names from constants and the checked schema
                     "(SELECT * FROM unnest(%b::date[], %b::text[]))",
                     ([d[0] for d in days], [d[1] for d in days]))
