"""The alerts Rapport raised (issue 16, contract §6): table `alerts`, the outbox of `interactions.alerts`.

The live lifecycle read model raises alerts in the transaction that writes its rows
(`AlertOutbox.raise_from_folds`): a crash rolls both back, and the page applied again finds the
same alert ids (`domain.alerts`), which the primary key keeps once. An alert caused by an event is
raised with the rows that show its cause; a change by the passing of time whose threshold has not
passed yet is only in the intervals (which run into the future) until the time-driven raiser of
`rapport alerts` (`services.alerts`) raises it, with the same `raise_alerts`, when it passes. A copy
of the read model rebuilt or replayed in a side schema raises none (it has no outbox), and swapping
it in raises none either: the alerts tables are not among the read model's tables, so a swap leaves
them as they are.

What is raised is decided by the database's clock, in SQL, once (`_NEWS`): due (an event's alert at
once, a change by time just after its threshold passed) and not older than `max_age`.

Each alert carries the customer's revenue per currency as `customer_360` has it when the alert is
raised (the projector writes customer_360 before lifecycle in one transaction), and its latest
interaction. The relay records what it published in `alerts_published` (and sets `published_at`,
`kafka_partition`, `kafka_offset` of the row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from domain.alerts import Alert, AlertKind, ChangeByTime, Found, alerts_of
from domain.lifecycle import LifecycleFact, LifecycleFold
from projections import customer_360
from projections.readmodel import LIVE_SCHEMA, Column, ModelSettings, Table, qualified

DEFAULT_MAX_AGE = ModelSettings().alert_max_age

ALERTS = Table(
    "alerts",
    (Column("alert_id", "text", not_null=True), Column("seq", "bigserial", not_null=True),
     Column("customer_id", "text", not_null=True), Column("kind", "text", not_null=True),
     Column("reason", "text", not_null=True), Column("occurred_at", "timestamptz", not_null=True),
     Column("raised_at", "timestamptz", not_null=True), Column("event_id", "text"),
     Column("revenue", "jsonb", not_null=True), Column("last_contact_at", "timestamptz"),
     Column("published_at", "timestamptz"), Column("kafka_partition", "int"), Column("kafka_offset", "bigint")),
    primary_key=("alert_id",),
    indexes=("(seq) WHERE published_at IS NULL", "(raised_at, alert_id)", "(kind, raised_at, alert_id)"),
    doc="Alerts raised (issue 16, contract §6): one row per alarm answer or entry into at_risk or churned, kept for "
        "ever (never retracted); the outbox of topic interactions.alerts (published_at set once on Kafka).",
)
PUBLISHED = Table(
    "alerts_published",
    (Column("alert_id", "text", not_null=True), Column("topic", "text", not_null=True),
     Column("kafka_partition", "int", not_null=True), Column("kafka_offset", "bigint", not_null=True),
     Column("published_at", "timestamptz", not_null=True, default="clock_timestamp()")),
    primary_key=("alert_id",),
    doc="Every alert id the relay published (in a committed Kafka transaction) or found on the topic: an alert row "
        "written again with an id listed here (a restored database) is not published again.",
)
RELAY_POSITIONS = Table(
    "alerts_relay_positions",
    (Column("topic", "text", not_null=True), Column("partition", "int", not_null=True),
     Column("next_offset", "bigint", not_null=True)),
    primary_key=("topic", "partition"),
    doc="Per partition of the alerts topic, the offset up to which the relay knows what is there: on start it reads "
        "the partition from there (read_committed) to learn what it published but did not record.",
)
RELAY = Table(
    "alerts_relay",
    (Column("only_row", "boolean", not_null=True, default="true"),
     Column("deployment", "uuid", not_null=True, default="gen_random_uuid()")),
    primary_key=("only_row",),
    doc="This database's relay: `deployment` names its Kafka transactional id and the rapport-alert-source header.",
)
RAISER = Table(
    "alerts_raiser",
    (Column("only_row", "boolean", not_null=True, default="true"), Column("scanned_until", "timestamptz", not_null=True)),
    primary_key=("only_row",),
    doc="Up to when the time-driven raiser has looked for stage changes by the passing of time.",
)
TABLES = (ALERTS, PUBLISHED, RELAY_POSITIONS, RELAY, RAISER)
KINDS = tuple(k.value for k in AlertKind)

# The one statement of what is raised, on rows `a` (due_at, occurred_at) and the clock `n` (now, max_age).
_NEWS = "(a.due_at IS NULL OR a.due_at <= n.now) AND a.occurred_at >= n.now - n.max_age"
_CLOCK = "(SELECT %s::timestamptz AS now, %s::interval AS max_age) AS n"


def create_statements() -> list[str]:
    return [s for table in TABLES for s in table.create_statements(LIVE_SCHEMA)]


class AlertOutbox:
    """Writes alerts into `alerts` in the caller's transaction; `max_age`: the backfill cut-off
    (setting RAPPORT_ALERT_MAX_AGE_DAYS)."""

    def __init__(self, facts: Table, max_age: timedelta = DEFAULT_MAX_AGE) -> None:
        self.facts = facts  # the lifecycle read model's facts (its module builds this outbox: no import back)
        self.max_age = max_age
        self._revenue_table_found = False

    def create_statements(self) -> list[str]:
        return create_statements()

    def raise_from_folds(self, curs: Any, new: Mapping[str, Sequence[LifecycleFact]],
                         folds: Mapping[str, LifecycleFold]) -> int:
        """The alerts of a lifecycle batch: its new facts (alarm answers) and the intervals it wrote."""
        found = [item for customer_id, fold in folds.items()
                 for item in alerts_of(customer_id, new.get(customer_id, ()), fold.history(),
                                       fold.summary.last_interaction_at)]
        return self.raise_alerts(curs, found)

    def raise_alerts(self, curs: Any, found: Sequence[Found]) -> int:
        """Insert those that are news by the database's clock, each once; how many were new. Changes
        by time are named first, by their anchors in the lifecycle facts (the caller's transaction)."""
        if not found:
            return 0
        curs.execute("SELECT clock_timestamp() AS now")
        clock = (curs.fetchone()["now"], self.max_age)
        alerts = [a for a in found if isinstance(a, Alert)]
        alerts += self._named(curs, [c for c in found if isinstance(c, ChangeByTime)], clock)
        if not alerts:
            return 0
        alerts = sorted({a.alert_id: a for a in alerts}.values(), key=lambda a: a.alert_id)
        columns = ("alert_id", "customer_id", "kind", "reason", "occurred_at", "due_at", "event_id", "last_contact_at")
        values = [[getattr(a, c) for a in alerts] for c in columns]
        values[2] = [k.value for k in values[2]]
        curs.execute(
            f"INSERT INTO {qualified(LIVE_SCHEMA, ALERTS.name)} (alert_id, customer_id, kind, reason, occurred_at, "  # noqa: S608 - names from constants
            "event_id, last_contact_at, revenue, raised_at)\n"
            f"SELECT a.alert_id, a.customer_id, a.kind, a.reason, a.occurred_at, a.event_id, a.last_contact_at, "
            f"{self._revenue(curs)}, n.now\n"
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], "
            "%s::text[], %s::timestamptz[]) AS a(alert_id, customer_id, kind, reason, occurred_at, due_at, event_id, "
            f"last_contact_at), {_CLOCK}\n"
            f"WHERE {_NEWS}\n"
            "ORDER BY a.alert_id ON CONFLICT (alert_id) DO NOTHING",
            (*values, *clock),
        )
        return int(curs.rowcount)

    def _named(self, curs: Any, changes: Sequence[ChangeByTime], clock: tuple[Any, timedelta]) -> list[Alert]:
        """The alerts of the changes by time that are news, each named by its anchor: the latest fact
        (of its type) by the instant its threshold passed."""
        if not changes:
            return []
        curs.execute(
            "SELECT a.n, (SELECT f.event_id FROM "  # noqa: S608 - names from constants
            f"{qualified(LIVE_SCHEMA, self.facts.name)} f WHERE f.customer_id = a.customer_id AND f.occurred_at <= a.occurred_at "
            "AND (a.anchor_type IS NULL OR f.type = a.anchor_type) ORDER BY f.occurred_at DESC, f.event_id DESC LIMIT 1"
            ") AS anchor\n"
            "FROM unnest(%s::int[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[]) "
            f"AS a(n, customer_id, occurred_at, due_at, anchor_type), {_CLOCK}\nWHERE {_NEWS}",
            (list(range(len(changes))), [c.customer_id for c in changes], [c.passed_at for c in changes],
             [c.due_at for c in changes], [c.anchor_type for c in changes], *clock),
        )
        return [changes[r["n"]].alert(r["anchor"]) for r in curs.fetchall() if r["anchor"] is not None]

    def _revenue(self, curs: Any) -> str:
        """The SQL of the customer's revenue per currency now (empty while customer_360 has no table:
        looked for again each time until it has)."""
        table = qualified(LIVE_SCHEMA, customer_360.REVENUE.name)
        if not self._revenue_table_found:
            curs.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (table,))
            self._revenue_table_found = bool(curs.fetchone()["found"])
        if not self._revenue_table_found:
            return "'{}'::jsonb"
        return (f"COALESCE((SELECT jsonb_object_agg(r.currency, r.revenue::text) FROM {table} r "  # noqa: S608 - names from constants
                "WHERE r.customer_id = a.customer_id), '{}'::jsonb)")
