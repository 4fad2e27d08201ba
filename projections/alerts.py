"""The alerts Rapport raised (issue 16, contract §6): table `alerts`, the outbox of `interactions.alerts`.

The live lifecycle read model raises alerts in the transaction that writes its rows
(`AlertOutbox.raise_from_folds`), so an alert exists exactly when the rows that show its cause do:
a crash rolls both back, and the page applied again finds the same alert ids (`domain.alerts`),
which the primary key keeps once. A copy of the read model rebuilt or replayed in a side schema
raises none (it has no outbox), and swapping it in raises none either: the alerts table is not one of
the read model's tables, so a swap leaves it as it is. Changes by the passing of time are raised when
their threshold passes by the time-driven raiser of `rapport alerts` (`services.alerts`), with the
same `raise_alerts`.

Each alert carries the customer's revenue per currency as `customer_360` has it when the alert is
raised (the projector writes customer_360 before lifecycle in one transaction), and its latest
interaction. `published_at`, `kafka_partition` and `kafka_offset` are written by the relay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from domain.alerts import Alert, AlertKind, alerts_of, is_news
from domain.contract import utc_now
from domain.lifecycle import LifecycleFact, LifecycleFold
from projections import customer_360
from projections.readmodel import LIVE_SCHEMA, Column, ModelSettings, Table, qualified

DEFAULT_MAX_AGE = ModelSettings().alert_max_age
# The projector's clock and the database's may differ a little: alerts are picked in Python with
# this much room, and the database's clock decides.
_CLOCK_ROOM = timedelta(minutes=5)

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
RELAY_POSITIONS = Table(
    "alerts_relay_positions",
    (Column("topic", "text", not_null=True), Column("partition", "int", not_null=True),
     Column("next_offset", "bigint", not_null=True)),
    primary_key=("topic", "partition"),
    doc="Per partition of the alerts topic, the offset after the last message whose alert is marked published: "
        "on start the relay reads the partition from there to learn what it published but did not mark.",
)
RAISER = Table(
    "alerts_raiser",
    (Column("only_row", "boolean", not_null=True, default="true"), Column("scanned_until", "timestamptz", not_null=True)),
    primary_key=("only_row",),
    doc="Up to when the time-driven raiser has looked for stage changes by the passing of time.",
)
TABLES = (ALERTS, RELAY_POSITIONS, RAISER)
KINDS = tuple(k.value for k in AlertKind)


def create_statements() -> list[str]:
    return [s for table in TABLES for s in table.create_statements(LIVE_SCHEMA)]


class AlertOutbox:
    """Writes alerts into `alerts` in the caller's transaction; `max_age`: the backfill cut-off
    (`domain.alerts.is_news`, setting RAPPORT_ALERT_MAX_AGE_DAYS)."""

    def __init__(self, max_age: timedelta = DEFAULT_MAX_AGE) -> None:
        self.max_age = max_age
        self._revenue_table: bool = False

    def create_statements(self) -> list[str]:
        return create_statements()

    def raise_from_folds(self, curs: Any, new: Mapping[str, Sequence[LifecycleFact]],
                         folds: Mapping[str, LifecycleFold]) -> int:
        """The alerts of a lifecycle batch: its new facts (alarm answers) and the intervals it wrote."""
        now = utc_now()
        found = []
        for customer_id, fold in folds.items():
            alerts = alerts_of(customer_id, new.get(customer_id, ()), fold.history(), fold.summary.last_interaction_at)
            found += [a for a in alerts if is_news(a, now + _CLOCK_ROOM, self.max_age + 2 * _CLOCK_ROOM)]
        return self.raise_alerts(curs, found)

    def raise_alerts(self, curs: Any, alerts: Sequence[Alert]) -> int:
        """Insert the alerts that are news by the database's clock, each once; how many were new."""
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
            "last_contact_at), (SELECT clock_timestamp() AS now) AS n\n"
            "WHERE a.due_at <= n.now AND a.occurred_at >= n.now - %s\n"
            "ORDER BY a.alert_id ON CONFLICT (alert_id) DO NOTHING",
            (*values, self.max_age),
        )
        return int(curs.rowcount)

    def _revenue(self, curs: Any) -> str:
        """The SQL of the customer's revenue per currency now (empty while customer_360 has no table)."""
        table = qualified(LIVE_SCHEMA, customer_360.REVENUE.name)
        if not self._revenue_table:
            curs.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (table,))
            self._revenue_table = bool(curs.fetchone()["found"])
        if not self._revenue_table:
            return "'{}'::jsonb"
        return (f"COALESCE((SELECT jsonb_object_agg(r.currency, r.revenue::text) FROM {table} r "  # noqa: S608 - names from constants
                "WHERE r.customer_id = a.customer_id), '{}'::jsonb)")
