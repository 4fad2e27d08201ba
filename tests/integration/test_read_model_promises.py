"""Promises every read model keeps, written once and checked for each (style.md: one abstract test
case, many implementations): the same rows whatever the order events arrive in, whatever the page
size, and after a crash in the middle of a page followed by a restart.

Each variant writes into a PostgreSQL schema of its own (read models take the schema at
construction), and every table of the read model is compared whole.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from domain.contract import validate_envelope
from domain.customer import Customer
from eventstore.store import InteractionLog
from projections.readmodel import Batch, FunctionBatch, ReadModel
from projections.runner import TRACKING_TABLE, Projector
from services.bootstrap import projector, read_models
from services.settings import Settings
from tests.support import envelope

pytestmark = pytest.mark.integration


def history(prefix: str) -> list[dict[str, Any]]:
    """Three customers, with ties in time, renames, late events, both survey kinds, an answer about
    an event stored after it, two currencies, a customer who comes back after churning."""
    a, b, c = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    tie = "2025-06-01T12:00:00Z"
    call = {"direction": "inbound", "duration_seconds": 60}
    return [
        envelope(a, "call", "2025-01-05T09:00:00Z", call, event_id=f"{a}:1", name="First", email="b@example.com"),
        envelope(a, "email", tie, {"direction": "inbound"}, event_id=f"{a}:2", name="Tie Loser", email="a@x.com"),
        envelope(a, "email", tie, {"direction": "inbound"}, event_id=f"{a}:3", name="Tie Winner", phone="+15550001"),
        envelope(a, "call", tie, call, event_id=f"{a}:4"),
        envelope(a, "purchase", "2025-03-01T10:00:00+02:00", {"order_id": "o1", "amount": "19.99", "currency": "EUR",
                 "items": [{"sku": "sku-b", "quantity": 1, "unit_price": "19.99"}]}, event_id=f"{a}:5"),
        envelope(a, "purchase", "2025-07-01T10:00:00Z", {"order_id": "o2", "amount": "5", "currency": "USD",
                 "items": [{"sku": "sku-a", "quantity": 5, "unit_price": "1"}]}, event_id=f"{a}:6"),
        envelope(a, "survey_response", "2025-07-02T10:00:00Z", {"kind": "nps", "score": 3, "about_event_id": f"{a}:6"},
                 event_id=f"{a}:7"),
        envelope(a, "survey_response", "2025-07-02T10:00:00Z", {"kind": "nps", "score": 10,
                 "about_event_id": f"{a}:4"}, event_id=f"{a}:8"),
        envelope(a, "survey_response", "2025-10-01T10:00:00Z", {"kind": "csat", "score": 2}, event_id=f"{a}:9"),
        envelope(b, "survey_response", "2025-02-02T00:00:00Z", {"kind": "csat", "score": 5,
                 "about_event_id": f"{b}:2"}, event_id=f"{b}:1"),
        envelope(b, "email", "2025-02-01T00:00:00Z", {"direction": "outbound"}, event_id=f"{b}:2"),
        envelope(b, "purchase", "2025-02-03T00:00:00Z", {"order_id": "o3", "amount": "0.000000000001",
                 "currency": "USD"}, event_id=f"{b}:3"),
        envelope(c, "call", "2022-01-01T00:00:00Z", call, event_id=f"{c}:1"),
        envelope(c, "purchase", "2022-02-01T00:00:00Z", {"order_id": "o4", "amount": "10", "currency": "GBP"},
                 event_id=f"{c}:2"),
        envelope(c, "email", "2024-05-01T00:00:00Z", {"direction": "inbound"}, event_id=f"{c}:3"),
        envelope(c, "survey_response", "2024-05-02T00:00:00Z", {"kind": "nps", "score": 9,
                 "about_event_id": f"{a}:1"}, event_id=f"{c}:4"),
    ]


def aggregates(messages: list[dict[str, Any]]) -> list[Customer]:
    """The customers ingest would record these messages on, in this order."""
    customers: dict[str, Customer] = {}
    for message in messages:
        parsed = validate_envelope(message)
        if parsed.customer_key not in customers:
            customers[parsed.customer_key] = Customer(parsed.customer_key)
        customers[parsed.customer_key].record(parsed)
    return list(customers.values())


def domain_events(messages: list[dict[str, Any]]) -> list[Any]:
    """The events ingest would record for these messages, in the order the messages came."""
    by_event_id = {e.event_id: e for c in aggregates(messages) for e in c.collect_events() if hasattr(e, "event_id")}
    return [by_event_id[m["event_id"]] for m in messages]


class ReadModelPromises:
    """Subclasses name a read model; the tests below hold for it."""

    name: ClassVar[str]

    @pytest.fixture
    def schemas(self, store: InteractionLog) -> Iterator[list[str]]:
        made: list[str] = []
        yield made
        with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            for schema in made:
                curs.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def model(self, settings: Settings, store: InteractionLog, schemas: list[str]) -> ReadModel:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        [model] = read_models(settings, [self.name], schema)
        with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            curs.execute(f'CREATE SCHEMA "{schema}"')
            for statement in model.create_statements():
                curs.execute(statement)
        return model

    def rows(self, store: InteractionLog, model: ReadModel, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the model, ids made independent of the variant's prefix."""
        result = {}
        with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            for table in model.tables:
                key = ", ".join(f'"{c}"' for c in table.primary_key)
                rows = conn.execute(f"SELECT * FROM {model.t(table.name)} ORDER BY {key}").fetchall()
                result[table.name] = sorted(tuple(str(v).replace(prefix, "P") for v in r.values()) for r in rows)
        return result

    def apply_in_pages(self, store: InteractionLog, model: ReadModel, events: list[Any], page_size: int) -> None:
        for start in range(0, len(events), page_size):
            with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
                model.apply(curs, events[start:start + page_size])

    def test_same_rows_whatever_the_arrival_order_and_page_size(
        self, settings: Settings, store: InteractionLog, schemas: list[str]
    ) -> None:
        reference = self.model(settings, store, schemas)
        prefix = f"ref{uuid.uuid4().hex[:8]}"
        self.apply_in_pages(store, reference, domain_events(history(prefix)), page_size=1000)
        expected = self.rows(store, reference, prefix)
        assert any(expected.values()), "the reference wrote no rows"
        rng = random.Random(self.name)
        for trial in range(8):
            messages = history(prefix := f"v{uuid.uuid4().hex[:8]}")
            rng.shuffle(messages)
            model = self.model(settings, store, schemas)
            page_size = [1, 2, 3, 5, 7, 1000, 4, 16][trial]
            self.apply_in_pages(store, model, domain_events(messages), page_size)
            assert self.rows(store, model, prefix) == expected, f"arrival order {[m['event_id'] for m in messages]}, " \
                                                              f"pages of {page_size}"

    def test_same_rows_when_many_pages_are_applied_as_one_batch(
        self, settings: Settings, store: InteractionLog, schemas: list[str]
    ) -> None:
        """A catch-up applies many pages in one transaction, as one batch (`ReadModel.batch`): an
        answer may land pages before the contact it is about, a customer's facts across pages."""
        reference = self.model(settings, store, schemas)
        prefix = f"ref{uuid.uuid4().hex[:8]}"
        self.apply_in_pages(store, reference, domain_events(history(prefix)), page_size=1)
        expected = self.rows(store, reference, prefix)
        rng = random.Random(f"{self.name} in batches")
        for trial in range(8):
            messages = history(prefix := f"b{uuid.uuid4().hex[:8]}")
            rng.shuffle(messages)
            events = domain_events(messages)
            model = self.model(settings, store, schemas)
            page_size = [1, 2, 3, 5, 1, 2, 4, 16][trial]
            with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
                batch = model.batch(curs)
                for start in range(0, len(events), page_size):
                    batch.add(events[start:start + page_size])
                batch.finish()
            assert self.rows(store, model, prefix) == expected, f"arrival order {[m['event_id'] for m in messages]}, " \
                                                              f"one batch of pages of {page_size}"

    def crashed_and_whole(self, settings: Settings, store: InteractionLog, schemas: list[str],
                          prefix: str) -> tuple[list[Projector], ReadModel, ReadModel]:
        """Two copies of the model following only what is stored from now on: the history."""
        head = store.recorder.max_notification_id() or 0
        whole, crashed = (self.model(settings, store, schemas) for _ in range(2))
        runners = [projector(settings, store, only=[self.name], schema=m.schema) for m in (whole, crashed)]
        with store.factory.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            for runner in runners:
                curs.execute(f"INSERT INTO {TRACKING_TABLE} VALUES (%s, %s)", (runner.names[0], head))
        store.save(*aggregates(history(prefix)))
        return runners, whole, crashed

    def restart_and_compare(self, settings: Settings, store: InteractionLog, whole: ReadModel, crashed: ReadModel,
                            prefix: str, page_size: int) -> None:
        restarted = projector(settings, store, only=[self.name], schema=crashed.schema)
        restarted.page_size = page_size
        restarted.catch_up()
        assert restarted.positions() == {restarted.names[0]: store.recorder.max_notification_id()}
        assert self.rows(store, crashed, prefix) == self.rows(store, whole, prefix)
        assert any(self.rows(store, whole, prefix).values())

    def test_a_crash_in_the_middle_of_a_page_then_a_restart_gives_the_same_rows(
        self, settings: Settings, store: InteractionLog, schemas: list[str]
    ) -> None:
        prefix = f"crash{uuid.uuid4().hex[:8]}"
        runners, whole, crashed = self.crashed_and_whole(settings, store, schemas, prefix)
        for runner in runners:
            runner.page_size = 4
            runner.catch_up_events = 0  # one page per transaction
        runners[0].catch_up()

        calls = 0
        [model] = runners[1].models
        original = model.batch

        def crash_on_third_page(curs: Any) -> Any:  # the projector applies each page through a batch
            batch = original(curs)

            def add(page: Any) -> None:
                nonlocal calls
                calls += 1
                batch.add(page)
                if calls == 3:
                    batch.finish()  # the rows are written, then the process dies before the commit
                    raise KeyboardInterrupt("simulated crash")

            return FunctionBatch(add, batch.finish)

        model.batch = crash_on_third_page  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            runners[1].catch_up()
        assert calls == 3
        self.restart_and_compare(settings, store, whole, crashed, prefix, page_size=4)

    def test_a_crash_at_the_end_of_a_catch_up_batch_then_a_restart_gives_the_same_rows(
        self, settings: Settings, store: InteractionLog, schemas: list[str]
    ) -> None:
        """Far behind the head, many pages go in one transaction (a batch): a crash as its rows are
        written loses the batch and its position together, and pages and batches give the same rows."""
        prefix = f"batch{uuid.uuid4().hex[:8]}"
        runners, whole, crashed = self.crashed_and_whole(settings, store, schemas, prefix)
        runners[0].page_size = 1  # the reference: one event per transaction
        runners[0].catch_up_events = 0
        runners[0].catch_up()
        crashing = runners[1]
        crashing.page_size, crashing.catch_up_events = 2, 6  # batches of 3 pages while 4 pages behind

        batches = 0
        [model] = crashing.models
        original = model.batch

        def crash_at_the_end_of_the_second_batch(curs: Any) -> Batch:
            nonlocal batches
            batches += 1
            batch = original(curs)
            if batches < 2:
                return batch

            def finish_then_crash() -> None:
                batch.finish()  # the rows are written, then the process dies before the commit
                raise KeyboardInterrupt("simulated crash")

            return FunctionBatch(batch.add, finish_then_crash)

        model.batch = crash_at_the_end_of_the_second_batch  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            crashing.catch_up()
        assert batches == 2
        assert crashing.applied == 6, "the first batch (3 pages) was committed"
        self.restart_and_compare(settings, store, whole, crashed, prefix, page_size=2)


class TestCustomer360(ReadModelPromises):
    name = "customer_360"


class TestLifecycle(ReadModelPromises):
    name = "lifecycle"


class TestSatisfaction(ReadModelPromises):
    name = "satisfaction"


class TestTimeline(ReadModelPromises):
    name = "timeline"
