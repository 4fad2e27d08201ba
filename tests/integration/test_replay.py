"""`rapport replay NAME --known-at T --schema S` (issue 13, point 4): a read model as it stood at T,
built from the events recorded by T with the live runner and handlers, beside the live tables."""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from eventstore.store import InteractionLog
from projections.catalog import READ_MODELS
from services.projections_cli import cmd_replay
from services.settings import Settings
from tests.support import deliver, envelope, iso

pytestmark = pytest.mark.integration


def replay(settings: Settings, name: str, known_at: str, schema: str) -> int:
    return cmd_replay(argparse.Namespace(name=name, known_at=known_at, schema=schema), settings)


def rows(settings: Settings, table: str, customers: list[str], order: str = "1, 2, 3") -> list[dict[str, Any]]:
    with psycopg.connect(psycopg.conninfo.make_conninfo(**settings.database), row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table} WHERE customer_id = ANY(%s) ORDER BY {order}",
                            (customers,)).fetchall()


def test_replay_builds_each_read_model_as_rapport_knew_it(settings: Settings, store: InteractionLog) -> None:
    tag = uuid.uuid4().hex[:8]
    ana, ben, cleo = (f"replay-{tag}-{n}" for n in ("ana", "ben", "cleo"))
    purchase = {"order_id": "o-1", "amount": "30.00", "currency": "USD",
                "items": [{"sku": "sku-1", "quantity": 1, "unit_price": "30.00"}]}
    deliver(settings, store, [
        envelope(ana, "purchase", "2025-05-01T10:00:00Z", purchase, event_id=f"{ana}:p1"),
        envelope(ben, "call", "2025-05-02T10:00:00Z", {"direction": "inbound", "duration_seconds": 60},
                 event_id=f"{ben}:c1"),
    ])
    known_at = datetime.now(UTC)
    time.sleep(0.01)
    deliver(settings, store, [
        envelope(ana, "purchase", "2025-05-03T10:00:00Z", {**purchase, "order_id": "o-2", "amount": "12.50"},
                 event_id=f"{ana}:p2"),
        envelope(cleo, "email", "2025-05-04T10:00:00Z", {"direction": "inbound"}, event_id=f"{cleo}:e1"),
        # Late: it happened before everything above, but was recorded after `known_at`.
        envelope(ben, "survey_response", "2025-04-01T10:00:00Z", {"kind": "nps", "score": 3}, event_id=f"{ben}:s1"),
    ])
    schema = f"replay_{tag}"
    customers = [ana, ben, cleo]

    assert replay(settings, "all", iso(known_at), schema) == 0
    then = {r["customer_id"]: r for r in rows(settings, f"{schema}.customer_360", customers)}
    assert set(then) == {ana, ben}  # cleo was not known yet
    assert then[ana]["purchase_count"] == 1 and then[ben]["call_count"] == 1
    assert then[ben]["survey_response_count"] == 0 and then[ben]["last_nps_score"] is None
    assert [(r["customer_id"], r["event_id"]) for r in rows(settings, f"{schema}.timeline_events", customers)] == [
        (ana, f"{ana}:p1"), (ben, f"{ben}:c1")]
    # Lifecycle as known then (contract §4; 180 days without a purchase: at risk, 365 without an
    # interaction: churned): ana one purchase, ben one call and not yet his NPS 3.
    def stages(schema: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for r in rows(settings, f"{schema}.lifecycle_intervals", customers):  # in seq order
            found.setdefault(r["customer_id"], []).append(r["stage"])
        return found

    assert stages(schema) == {ana: ["acquired", "at_risk", "churned"], ben: ["reached", "churned"]}
    assert stages("public") == {ana: ["acquired", "retained", "at_risk", "churned"], ben: ["at_risk", "churned"],
                                cleo: ["reached", "churned"]}

    # Replayed at now, every read model holds what the live one holds, row for row.
    now = f"now_{tag}"
    assert replay(settings, "all", iso(datetime.now(UTC)), now) == 0
    for model in READ_MODELS.values():
        for table in model().tables:
            if "customer_id" not in table.column_names:
                continue  # tables of all customers together (per day): other tests' events are in them
            order = ", ".join(f'"{c}"' for c in table.primary_key)
            live = rows(settings, f"public.{table.name}", customers, order)
            assert live, table.name
            assert rows(settings, f"{now}.{table.name}", customers, order) == live, table.name


def test_replay_refuses_the_live_schema_and_bad_times(settings: Settings, store: InteractionLog,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert replay(settings, "timeline", "2026-01-01", "public") == 2
    assert "taken" in capsys.readouterr().err
    assert replay(settings, "timeline", "2026-01-01", "Bad-Name") == 2
    assert "plain schema name" in capsys.readouterr().err
    assert replay(settings, "timeline", "yesterday", "replay_ok") == 2
    assert "known_at" in capsys.readouterr().err
