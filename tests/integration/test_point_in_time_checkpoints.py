"""Checkpoints of the point-in-time fold (`projections/checkpoints.py`): a view built from
checkpoints is the view built by folding every admitted event, for any point in time.

Streams are stored through the event store with chosen recorded times: events arriving out of
occurred order (late ones), moments shared by several events, an event recorded out of order,
events dated after they were recorded. Checkpoints are taken every few events. The reference
folds the events the library's own mapper decodes (`store.events.get`), filtered by
`PointInTime.admits`, as `rapport audit export` does.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import pytest
from fastapi.testclient import TestClient

from domain.contract import validate_envelope
from domain.customer import Customer, customer_id_for, interaction_after
from domain.lifecycle import LifecycleThresholds
from eventstore import tables
from eventstore.store import InteractionLog
from projections import point_in_time
from projections.point_in_time import PointInTime, PointInTimeViews, timeline_rows
from projections.readmodel import ModelSettings
from services.http.customers import history_json, timeline_page, view_from_events, view_of_fold
from tests.support import envelope, iso, new_customer_id

pytestmark = pytest.mark.integration

TICK = timedelta(microseconds=1)
EVERY = 7  # events between checkpoints: a stream of 60 holds many
START = datetime(2020, 1, 1, tzinfo=UTC)


def messages(c: str, rng: random.Random, n: int, first: int = 0,
             late: float = 0.2) -> list[tuple[dict[str, Any], datetime]]:
    """`n` interactions of every kind with their occurred time, mostly rising, some (`late`) late
    (occurred long before), some sharing a moment with the one before."""
    out: list[tuple[dict[str, Any], datetime]] = []
    moment = START + timedelta(days=3 * first)
    for i in range(first, first + n):
        moment += timedelta(days=rng.randint(1, 5), seconds=rng.randint(0, 3600))
        roll = rng.random()
        at = (START + timedelta(days=rng.uniform(0, 3 * i), microseconds=rng.randint(0, 999_999)) if roll < late
              else out[-1][1] if roll < late + 0.1 and out else moment)
        kind = rng.choice(["call", "email", "purchase", "purchase", "survey_response"])
        customer = {"name": rng.choice(["Ana", "Ana B.", "Ana Bell"])} if rng.random() < 0.3 else {}
        if rng.random() < 0.2:
            customer["email"] = rng.choice(["a@x.org", "ana@y.org"])
        out.append((envelope(c, kind, iso(at), data_of(kind, i, rng), event_id=f"{c}:{i:03d}", **customer), at))
    return out


def data_of(kind: str, i: int, rng: random.Random) -> dict[str, Any]:
    if kind in ("call", "email"):
        direction = rng.choice(["inbound", "outbound"])
        return {"direction": direction, "duration_seconds": rng.randint(1, 900)} if kind == "call" else {
            "direction": direction, "subject": f"s{i}"}
    if kind == "purchase":
        return {"order_id": f"o{i}", "amount": rng.choice(["10.00", "3", "0.10", "99.5"]),
                "currency": rng.choice(["USD", "EUR"]),
                "items": [{"sku": f"sku-{rng.randint(1, 9)}", "quantity": 1, "unit_price": "3"}]}
    return {"kind": "nps", "score": rng.randint(0, 10)} if rng.random() < 0.7 else {"kind": "csat",
                                                                                     "score": rng.randint(1, 5)}


def record(store: InteractionLog, c: str, batch: list[tuple[dict[str, Any], datetime]]) -> None:
    """Store the messages in this order, each with its recorded time."""
    stream = customer_id_for(c)
    version = store.interactions.chain_heads([stream]).get(stream, (0, b""))[0]
    events: list[Any] = []
    if version == 0:
        events += Customer(c).collect_events()
        version = 1
    for message, recorded in batch:
        version += 1
        event = interaction_after(validate_envelope(message), stream, version)
        events.append(dataclasses.replace(event, timestamp=recorded))  # type: ignore[type-var]
    store.events.put(events)


def recorded_times(rng: random.Random, n: int, since: datetime) -> list[datetime]:
    """Rising with version, a few minutes apart, except one recorded out of order (a skewed clock)."""
    times, at = [], since
    for _ in range(n):
        at += timedelta(minutes=rng.randint(1, 300), microseconds=rng.randint(0, 999_999))
        times.append(at)
    skewed = rng.randrange(1, n)
    times[skewed] = times[skewed - 1] - timedelta(hours=1)
    return times


def stream(store: InteractionLog, c: str, rng: random.Random, n: int, first: int, since: datetime) -> None:
    batch = messages(c, rng, n, first)
    record(store, c, list(zip((m for m, _ in batch), recorded_times(rng, n, since), strict=True)))


def every_event(store: InteractionLog, c: str) -> list[Customer.Interaction]:
    """The stream decoded by the library's own mapper."""
    return [e for e in store.events.get(customer_id_for(c)) if isinstance(e, Customer.Interaction)]


def expected(views: PointInTimeViews, events: list[Customer.Interaction], point: PointInTime) -> dict[str, Any] | None:
    """View, lifecycle history and timeline (newest first) from folding every admitted event."""
    admitted = [e for e in events if point.admits(e)]
    if not admitted:
        return None
    return {"view": view_from_events(views, admitted, point),
            "lifecycle": history_json(views.fold_of(admitted).history(), point.at),
            "timeline": [timeline_page([row], 1)["items"][0] for row in timeline_rows(admitted)]}


def answered(views: PointInTimeViews, c: str, point: PointInTime, page: int = 9) -> dict[str, Any] | None:
    """The same three from the checkpointed views; the timeline read page by page."""
    fold = views.fold(c, point)
    if fold is None:
        assert views.timeline(c, point, None, page) is None
        return None
    items: list[dict[str, Any]] = []
    before = None
    while True:
        rows = views.timeline(c, point, before, page)
        assert rows is not None
        body = timeline_page(rows, page)
        items += body["items"]
        if body["next_cursor"] is None:
            break
        before = (rows[page - 1]["occurred_at"], rows[page - 1]["event_id"])
    return {"view": view_of_fold(fold, point), "lifecycle": history_json(fold.history(), point.at), "timeline": items}


def random_points(rng: random.Random, events: list[Customer.Interaction], n: int) -> Iterator[PointInTime]:
    occurred = [e.occurred_at for e in events]
    recorded = [e.timestamp for e in events]
    for _ in range(n):
        a = min(occurred) - timedelta(days=2) + (max(occurred) - min(occurred) + timedelta(days=4)) * rng.random()
        k = min(recorded) - timedelta(hours=2) + (max(recorded) - min(recorded) + timedelta(hours=4)) * rng.random()
        roll = rng.random()
        yield PointInTime(as_of=a) if roll < 0.4 else PointInTime(known_at=k) if roll < 0.7 else PointInTime(a, k)


def checkpoint_points(views: PointInTimeViews, c: str) -> Iterator[PointInTime]:
    """Points exactly at, and a tick on either side of, each stored checkpoint's latest times."""
    with views.checkpoints.tables.connection() as conn:
        checkpoints = views.checkpoints.tables.checkpoints(conn, customer_id_for(c), views.checkpoints.fold_key)
    assert checkpoints, "checkpoints were taken"
    for cp in checkpoints:
        for shift in (-TICK, timedelta(0), TICK):
            yield PointInTime(as_of=cp.occurred_through + shift)
            yield PointInTime(known_at=cp.recorded_through + shift)
            yield PointInTime(cp.occurred_through + shift, cp.recorded_through)
            yield PointInTime(cp.occurred_through, cp.recorded_through + shift)


def assert_same(views: PointInTimeViews, c: str, events: list[Customer.Interaction], points: Iterator[PointInTime]) -> int:
    compared = 0
    for point in points:
        want, got = expected(views, events, point), answered(views, c, point)
        assert got == want, point
        if want is not None:
            assert orjson.dumps(got["view"]) == orjson.dumps(want["view"]), point  # the very same JSON
            compared += 1
    return compared


def stored_checkpoints(store: InteractionLog, stream: UUID) -> list[tuple[int, datetime, int]]:
    with store.interactions.datastore.get_connection() as conn:
        rows = conn.execute(f"SELECT version, occurred_through, events FROM {tables.FOLD_CHECKPOINTS} "
                            "WHERE originator_id = %s ORDER BY version, occurred_through", (stream,)).fetchall()
    return [(r["version"], r["occurred_through"], r["events"]) for r in rows]


@pytest.fixture
def views(store: InteractionLog) -> PointInTimeViews:
    return PointInTimeViews(store, ModelSettings(), checkpoint_every=EVERY)


# --------------------------------------------------------------------------------------------


def test_checkpointed_views_equal_the_full_fold_at_random_points_and_at_checkpoint_boundaries(
        store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(13)
    c = new_customer_id()
    stream(store, c, rng, 60, 0, datetime(2020, 3, 1, tzinfo=UTC))
    events = every_event(store, c)
    # The first read of the whole stream folds more than EVERY events: it takes checkpoints.
    assert assert_same(views, c, events, iter([PointInTime(known_at=datetime.now(UTC))])) == 1
    assert len(stored_checkpoints(store, customer_id_for(c))) >= 60 // EVERY
    assert assert_same(views, c, events, random_points(rng, events, 150)) > 100
    assert assert_same(views, c, events, checkpoint_points(views, c)) > 0


def test_late_events_after_checkpoints_are_folded_in_their_place(store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(21)
    c = new_customer_id()
    stream(store, c, rng, 50, 0, datetime(2020, 3, 1, tzinfo=UTC))
    now = datetime.now(UTC)
    views.fold(c, PointInTime(known_at=now))  # checkpoints of the 50 events
    before = stored_checkpoints(store, customer_id_for(c))
    latest = max(through for _, through, _ in before)
    # More events, recorded later: some occurred long before the checkpoints' ends (one exactly at
    # a checkpoint's end, one a tick before it), others after everything.
    middle = sorted(through for _, through, _ in before)[len(before) // 2]
    late = [(envelope(c, "purchase", iso(at), {"order_id": f"late{i}", "amount": "7.25", "currency": "GBP"},
                      event_id=f"{c}:late{i}"), datetime(2022, 6, 1, tzinfo=UTC) + timedelta(minutes=i))
            for i, at in enumerate([middle, middle - TICK, START + timedelta(days=3), latest + timedelta(days=1)])]
    record(store, c, late)
    record(store, c, [(m, datetime(2022, 7, 1, tzinfo=UTC) + timedelta(minutes=i))
                      for i, (m, _) in enumerate(messages(c, rng, 12, 60))])
    events = every_event(store, c)
    assert assert_same(views, c, events, random_points(rng, events, 150)) > 100
    assert assert_same(views, c, events, checkpoint_points(views, c)) > 0
    assert assert_same(views, c, events, iter([PointInTime(as_of=middle), PointInTime(as_of=middle - TICK),
                                               PointInTime(known_at=now), PointInTime(as_of=latest)])) == 4


def test_a_stream_growing_in_occurred_order_continues_its_top_checkpoint(
        store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(610)
    c = new_customer_id()
    batch = messages(c, rng, 60, late=0)
    record(store, c, [(m, datetime(2021, 1, 1, tzinfo=UTC) + timedelta(hours=i)) for i, (m, _) in enumerate(batch[:40])])
    views.fold(c, PointInTime(known_at=datetime.now(UTC)))
    first = stored_checkpoints(store, customer_id_for(c))
    record(store, c, [(m, datetime(2021, 2, 1, tzinfo=UTC) + timedelta(hours=i)) for i, (m, _) in enumerate(batch[40:])])
    # An as_of before the new events: nothing new to fold, nothing taken.
    views.fold(c, PointInTime(as_of=first[-1][1]))
    assert stored_checkpoints(store, customer_id_for(c)) == first
    views.fold(c, PointInTime(known_at=datetime.now(UTC)))
    added = [cp for cp in stored_checkpoints(store, customer_id_for(c)) if cp not in first]
    # Only the 20 new events were folded, going on from the 40 of the top checkpoint.
    assert added and all(count > 40 for _, _, count in added) and added[-1][2] == 60
    with store.interactions.datastore.get_connection() as conn:
        parent = conn.execute(f"SELECT parent_version, parent_occurred_through FROM {tables.FOLD_CHECKPOINTS} "
                              "WHERE originator_id = %s AND events = %s", (customer_id_for(c), added[0][2])).fetchone()
    assert (parent["parent_version"], parent["parent_occurred_through"]) == first[-1][:2]
    events = every_event(store, c)
    assert assert_same(views, c, events, random_points(rng, events, 40)) > 20


def test_known_at_between_recordings_takes_checkpoints_of_what_was_known(
        store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(34)
    c = new_customer_id()
    stream(store, c, rng, 40, 0, datetime(2020, 3, 1, tzinfo=UTC))
    events = every_event(store, c)
    middle = sorted(e.timestamp for e in events)[25]
    assert assert_same(views, c, events, iter([PointInTime(known_at=middle)])) == 1
    versions = {version for version, _, _ in stored_checkpoints(store, customer_id_for(c))}
    # Taken up to the last version before the first event recorded after `middle` (one event is
    # recorded out of order, so that may be before the 26th).
    first_unknown = next(e.originator_version for e in events if e.timestamp > middle)
    assert versions == {first_unknown - 1}
    assert assert_same(views, c, events, random_points(rng, events, 60)) > 30


def test_the_time_index_admits_exactly_what_point_in_time_admits(store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(55)
    c = new_customer_id()
    stream(store, c, rng, 45, 0, datetime(2020, 3, 1, tzinfo=UTC))
    events = every_event(store, c)
    with views.checkpoints.tables.connection() as conn:
        views.checkpoints.read(conn, customer_id_for(c))  # stores the complete blocks
        times, _ = views.checkpoints.read(conn, customer_id_for(c))
    assert len(times.decoded) < len(events), "read from the stored blocks, not decoded"
    assert times.versions == [e.originator_version for e in events]
    moments = [m for e in events for m in (e.occurred_at, e.timestamp)]
    points = [*random_points(rng, events, 100),
              *(PointInTime(as_of=m + s) for m in moments for s in (-TICK, timedelta(0), TICK)),
              *(PointInTime(known_at=m + s) for m in moments for s in (-TICK, timedelta(0), TICK))]
    for point in points:
        by_index = times.admitted(point.in_microseconds().admits_moments)
        assert by_index == [point.admits(e) for e in events], point


def test_checkpoints_are_taken_by_rule_once_and_a_second_writer_is_harmless(
        store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(89)
    c = new_customer_id()
    stream(store, c, rng, 30, 0, datetime(2020, 3, 1, tzinfo=UTC))
    few = PointInTime(as_of=START + timedelta(days=9))
    views.fold(c, few)  # a handful of events: nothing worth a checkpoint
    assert stored_checkpoints(store, customer_id_for(c)) == []
    now = PointInTime(known_at=datetime.now(UTC))
    views.fold(c, now)
    taken = stored_checkpoints(store, customer_id_for(c))
    head = every_event(store, c)[-1].originator_version
    assert {version for version, _, _ in taken} == {head}
    counts = [count for _, _, count in taken]
    # After each EVERY events or more (a moment is never split), and after the last.
    assert counts == sorted(counts) and counts[-1] == 30
    assert all(b - a >= EVERY for a, b in zip(counts, counts[1:-1], strict=False))
    views.fold(c, now)
    assert stored_checkpoints(store, customer_id_for(c)) == taken
    # Another reader taking the same checkpoints at the same moment: the same rows, no error.
    other = PointInTimeViews(store, ModelSettings(), checkpoint_every=EVERY)
    with other.checkpoints.tables.connection() as conn:
        times, _ = other.checkpoints.read(conn, customer_id_for(c))
        other.checkpoints.take(conn, customer_id_for(c), times, [], head)
    assert stored_checkpoints(store, customer_id_for(c)) == taken
    with store.interactions.datastore.get_connection() as conn:
        blocks = conn.execute(f"SELECT first_version, last_version FROM {tables.STREAM_TIMES} WHERE originator_id = %s "
                              "ORDER BY first_version", (customer_id_for(c),)).fetchall()
    assert [(b["first_version"], b["last_version"]) for b in blocks] == [(1, 7), (8, 14), (15, 21), (22, 28)]


def test_checkpoints_of_other_thresholds_are_not_used(store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(144)
    c = new_customer_id()
    stream(store, c, rng, 40, 0, datetime(2020, 3, 1, tzinfo=UTC))
    events = every_event(store, c)
    quick = PointInTimeViews(store, ModelSettings(thresholds=LifecycleThresholds(at_risk_days=20, churn_days=40)),
                             checkpoint_every=EVERY)
    assert quick.checkpoints.fold_key != views.checkpoints.fold_key
    points = list(random_points(rng, events, 40))
    assert assert_same(quick, c, events, iter(points)) > 20
    assert assert_same(views, c, events, iter(points)) > 20


def test_a_rewritten_stream_voids_its_checkpoints(store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(233)
    c = new_customer_id()
    stream(store, c, rng, 30, 0, datetime(2020, 3, 1, tzinfo=UTC))
    now = PointInTime(known_at=datetime.now(UTC))
    views.fold(c, now)
    head = every_event(store, c)[-1].originator_version
    stored = stored_checkpoints(store, customer_id_for(c))
    # Someone rewrites the stream's chain from version 10 on with fresh hashes (put back at the end:
    # other tests verify the whole store).
    rewrite = (f"UPDATE {tables.EVENTS} e SET hash = h.hash FROM unnest(%s::int8[], %s::bytea[]) AS h(version, hash) "
               "WHERE e.originator_id = %s AND e.originator_version = h.version")
    with store.interactions.datastore.get_connection() as conn:
        kept = conn.execute(f"SELECT originator_version, hash FROM {tables.EVENTS} WHERE originator_id = %s "
                            "AND originator_version >= 10", (customer_id_for(c),)).fetchall()
        versions = [r["originator_version"] for r in kept]
        conn.execute(rewrite, (versions, [bytes(32) for _ in kept], customer_id_for(c)))
    try:
        events = every_event(store, c)
        assert assert_same(views, c, events, iter([now])) == 1
        with store.interactions.datastore.get_connection() as conn:
            blocks = conn.execute(f"SELECT last_version, chain_hash FROM {tables.STREAM_TIMES} "
                                  "WHERE originator_id = %s ORDER BY first_version", (customer_id_for(c),)).fetchall()
        assert [b["last_version"] for b in blocks] == [7, 14, 21, 28]  # indexed again from the stored rows
        assert [b["chain_hash"] for b in blocks[1:]] == [bytes(32)] * 3
        again = stored_checkpoints(store, customer_id_for(c))
        assert {v for v, _, _ in again} == {head} and again == stored  # the old ones removed, taken again
        with store.interactions.datastore.get_connection() as conn:
            hashes = conn.execute(f"SELECT chain_hash FROM {tables.FOLD_CHECKPOINTS} WHERE originator_id = %s",
                                  (customer_id_for(c),)).fetchall()
        assert {r["chain_hash"] for r in hashes} == {bytes(32)}
    finally:
        with store.interactions.datastore.get_connection() as conn:
            conn.execute(rewrite, (versions, [r["hash"] for r in kept], customer_id_for(c)))


def test_checkpoints_after_a_missing_one_are_not_used_and_are_taken_again(
        store: InteractionLog, views: PointInTimeViews) -> None:
    rng = random.Random(987)
    c = new_customer_id()
    stream(store, c, rng, 40, 0, datetime(2020, 3, 1, tzinfo=UTC))
    now = PointInTime(known_at=datetime.now(UTC))
    views.fold(c, now)
    taken = stored_checkpoints(store, customer_id_for(c))
    version, through, _ = taken[len(taken) // 2]
    with store.interactions.datastore.get_connection() as conn:
        conn.execute(f"DELETE FROM {tables.FOLD_CHECKPOINTS} WHERE originator_id = %s AND version = %s "
                     "AND occurred_through = %s", (customer_id_for(c), version, through))
    events = every_event(store, c)
    assert assert_same(views, c, events, iter([now])) == 1
    assert stored_checkpoints(store, customer_id_for(c)) == taken  # the later ones went and came back
    assert assert_same(views, c, events, random_points(rng, events, 30)) > 10


# --------------------------------------------------------------------------------------------
# Through the API: the routes answer from checkpoints as from the full fold.


def test_the_routes_answer_from_checkpoints_as_from_every_event(
        store: InteractionLog, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_in_time, "CHECKPOINT_EVERY", 5)  # read when the API makes its views
    rng = random.Random(377)
    c = new_customer_id()
    stream(store, c, rng, 40, 0, datetime(2020, 3, 1, tzinfo=UTC))
    events = every_event(store, c)
    reference = PointInTimeViews(store, ModelSettings(), checkpoint_every=5)
    for point in [PointInTime(known_at=datetime.now(UTC)), *random_points(rng, events, 25)]:
        query = {name: iso(value) for name, value in (("as_of", point.as_of), ("known_at", point.known_at)) if value}
        want = expected(reference, events, point)
        view = client.get(f"/customers/{c}", params=query)
        if want is None:
            assert view.status_code == 404
            continue
        assert view.status_code == 200 and view.json() == want["view"], query
        assert client.get(f"/customers/{c}/lifecycle", params=query).json()["items"] == want["lifecycle"]
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            body = client.get(f"/customers/{c}/timeline", params={**query, "limit": "6", **({"cursor": cursor}
                                                                                           if cursor else {})}).json()
            items += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert items == want["timeline"], query
    assert stored_checkpoints(store, customer_id_for(c)), "the API took checkpoints"
