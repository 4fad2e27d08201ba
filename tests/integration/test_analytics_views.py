"""The `analytics` views: every query the README shows analysts runs, and the views' column names
stay the same across a rebuild."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from domain.contract import validate_envelope
from domain.customer import Customer
from eventstore.store import InteractionLog
from projections.readmodel import ANALYTICS_SCHEMA
from services.bootstrap import projector
from services.settings import Settings
from tests.conftest import ROOT
from tests.support import envelope, new_customer_id

pytestmark = pytest.mark.integration


def readme_queries() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## SQL for analysts"):]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block, "the README's SQL section has no sql block"
    return [query.strip() for query in block.group(1).split(";") if "SELECT" in query]


def view_columns(store: InteractionLog) -> dict[str, list[str]]:
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s "
                            "ORDER BY table_name, ordinal_position", (ANALYTICS_SCHEMA,)).fetchall()
    columns: dict[str, list[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], []).append(row["column_name"])
    return columns


def test_the_readme_queries_run_and_answer_from_the_read_models(settings: Settings, store: InteractionLog) -> None:
    buyer = new_customer_id()
    customer = Customer(buyer)
    for message in (
        envelope(buyer, "purchase", "2026-02-01T10:00:00Z", {"order_id": "a", "amount": "10.00", "currency": "USD"}),
        envelope(buyer, "purchase", "2026-03-01T10:00:00Z", {"order_id": "b", "amount": "5.50", "currency": "USD"}),
        envelope(buyer, "survey_response", "2026-03-02T10:00:00Z", {"kind": "nps", "score": 10}),
    ):
        customer.record(validate_envelope(message))
    store.save(customer)
    projector(settings, store).catch_up()
    queries = readme_queries()
    assert len(queries) == 5
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        answers = [conn.execute(query).fetchall() for query in queries]
    assert all(answers[:2]) and answers[3], "queries 1, 2 and 4 always have rows once any customer exists"
    [repeat] = answers[3]
    assert repeat["repeat_buyers"] >= 1 and repeat["buyers"] >= repeat["repeat_buyers"]
    promoters_usd = [r for r in answers[4] if r["category"] == "promoter" and r["currency"] == "USD"]
    assert promoters_usd and promoters_usd[0]["revenue"] >= Decimal("15.50")


def test_view_columns_survive_a_rebuild(settings: Settings, store: InteractionLog) -> None:
    from services.projections_cli import rebuild

    projector(settings, store).catch_up()
    before = view_columns(store)
    assert {"customers", "lifecycle_intervals", "satisfaction_daily", "events"} <= set(before)
    for name in ("customer_360", "lifecycle", "satisfaction", "timeline", "value"):
        assert rebuild(settings, store, name).swapped
    assert view_columns(store) == before
