"""The parts of the point-in-time checkpoints that need no database: the rule in microseconds, a
fold kept and continued, the runs a ladder is cut into, the choice of a checkpoint."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, UUIDAsHex

from domain.contract import validate_envelope
from domain.customer import Customer
from domain.lifecycle import LifecycleThresholds, lifecycle_history
from eventstore.checkpoints import FoldCheckpoint, microseconds, pack, unpack
from eventstore.transcoder import FastJSONTranscoder
from projections.checkpoints import CustomerFold, StreamTimes, best, beyond, intervals_of, moments
from projections.customer_360 import Customer360
from projections.lifecycle import fact_of
from projections.point_in_time import PointInTime

TICK = timedelta(microseconds=1)
THRESHOLDS = LifecycleThresholds(at_risk_days=30, churn_days=60)  # short: time alone changes stages often


def transcoder() -> FastJSONTranscoder:
    """The event store's transcoder, as the application registers it."""
    made = FastJSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        made.register(transcoding)
    return made


def story(rng: random.Random, n: int) -> list[Customer.Interaction]:
    """`n` interactions in random order of occurrence, some sharing a moment, recorded one a minute."""
    customer = Customer("c-1")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(n):
        at = start + timedelta(days=rng.randrange(0, 200), hours=rng.choice([0, 0, 5]))
        kind = rng.choice(["call", "email", "purchase", "survey_response"])
        data: dict[str, Any] = {
            "call": {"direction": "inbound", "duration_seconds": 5},
            "email": {"direction": rng.choice(["inbound", "outbound"])},
            "purchase": {"order_id": str(i), "amount": rng.choice(["1.10", "20", "0.5"]), "currency": "EUR",
                         "items": [{"sku": f"s{i % 4}", "quantity": 1, "unit_price": "1"}]},
            "survey_response": {"kind": "nps", "score": rng.randrange(0, 11)},
        }[kind]
        customer.record(validate_envelope({"event_id": f"e{i:03d}", "type": kind, "occurred_at": at.isoformat(),
                                           "customer": {"id": "c-1", "name": f"n{i % 3}"}, "data": data}))
    events = [e for e in customer.collect_events() if isinstance(e, Customer.Interaction)]
    return [dataclasses.replace(e, timestamp=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i))  # type: ignore[type-var]
            for i, e in enumerate(events)]


def test_the_rule_in_microseconds_admits_what_it_admits_in_datetimes() -> None:
    rng = random.Random(1)
    events = story(rng, 40)
    moments_ = [m for e in events for m in (e.occurred_at, e.timestamp)]
    offsets = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    points = [PointInTime(as_of=(m + s).astimezone(rng.choice(offsets))) for m in moments_ for s in (-TICK, TICK * 0, TICK)]
    points += [PointInTime(known_at=m + s) for m in moments_ for s in (-TICK, TICK * 0, TICK)]
    points += [PointInTime(rng.choice(moments_), rng.choice(moments_)) for _ in range(200)]
    for point in points:
        in_microseconds = point.in_microseconds()
        for event in events:
            assert in_microseconds.admits_moments(microseconds(event.occurred_at), microseconds(event.timestamp)) \
                == point.admits(event), (point, event.event_id)


def test_microseconds_are_exact_and_pack_both_ways() -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-3)))
    assert microseconds(moment + TICK) - microseconds(moment) == 1
    assert microseconds(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    values = [0, -1, 2**62, -(2**62), microseconds(moment), microseconds(datetime(1, 1, 2, tzinfo=UTC))]
    assert unpack(pack(values)) == values


def test_a_fold_kept_in_a_checkpoint_goes_on_as_the_fold_of_every_event() -> None:
    model, codec = Customer360(), transcoder()
    for seed in range(20):
        events = sorted(story(random.Random(seed), 30), key=lambda e: e.occurred_at)
        cut = random.Random(seed).randrange(1, len(events))
        while cut < len(events) and events[cut].occurred_at == events[cut - 1].occurred_at:
            cut += 1  # a checkpoint ends with a moment
        whole = CustomerFold(model, THRESHOLDS)
        whole.add(events)

        kept = CustomerFold(model, THRESHOLDS)
        kept.add(events[:cut])
        state, history = kept.checkpoint(codec)
        restored = CustomerFold.restore(model, THRESHOLDS, codec.decode(state), partial(intervals_of, history))
        restored.add(events[cut:])
        assert restored.customer_360_rows() == whole.customer_360_rows() == model.rows_of(events)
        assert restored.history() == whole.history() == lifecycle_history(map(fact_of, events), THRESHOLDS)
        assert len(codec.decode(state)["lifecycle"]["changes"]) == 1  # the others are in `history`
        for event in events:
            for at in (event.occurred_at - TICK, event.occurred_at, event.occurred_at + timedelta(days=45)):
                assert restored.interval_at(at) == whole.interval_at(at)


def test_runs_of_a_ladder_never_split_a_moment() -> None:
    events = sorted(story(random.Random(7), 60), key=lambda e: e.occurred_at)
    runs = list(moments(events, 4))
    assert [e for run in runs for e in run] == events
    for run, following in zip(runs, runs[1:], strict=False):
        assert len(run) >= 4 and run[-1].occurred_at < following[0].occurred_at


def checkpoint(version: int, through: datetime, events: int, recorded: datetime) -> FoldCheckpoint:
    return FoldCheckpoint(version, through, events, recorded, None, None)


def test_the_checkpoint_used_holds_most_events_and_nothing_admitted_after_it_occurred_before_its_end() -> None:
    day = datetime(2024, 1, 1, tzinfo=UTC)
    times = StreamTimes()
    # versions 2..6: occurred on days 1, 2, 3, 4 and — late — day 2 again, recorded in order
    for version, (occurred, recorded) in enumerate([(1, 10), (2, 11), (3, 12), (4, 13), (2, 14)], start=2):
        times.versions.append(version)
        times.occurred.append(microseconds(day + timedelta(days=occurred)))
        times.recorded.append(microseconds(day + timedelta(days=recorded)))
    up_to_5 = checkpoint(5, day + timedelta(days=4), 4, day + timedelta(days=13))
    early_of_5 = checkpoint(5, day + timedelta(days=1), 1, day + timedelta(days=10))
    everything = checkpoint(6, day + timedelta(days=4), 5, day + timedelta(days=14))

    def serves(point: PointInTime) -> Any:
        rule = point.in_microseconds().admits_moments
        return lambda c: rule(microseconds(c.occurred_through), microseconds(c.recorded_through))

    checkpoints = [early_of_5, up_to_5, everything]
    now = PointInTime(known_at=day + timedelta(days=20))
    admitted = times.admitted(now.in_microseconds().admits_moments)
    assert best(times, checkpoints, admitted, serves(now)) == everything
    assert beyond(times, admitted, everything) == []
    # Known on day 14 minus a tick: the late event is not known; `everything` holds it.
    before_late = PointInTime(known_at=day + timedelta(days=14) - TICK)
    admitted = times.admitted(before_late.in_microseconds().admits_moments)
    assert best(times, checkpoints, admitted, serves(before_late)) == up_to_5
    # Without `everything`, known now: the late event occurred (day 2) before up_to_5's end (day 4),
    # so only the checkpoint that ends on day 1 can go on; the rest is folded from there.
    admitted = times.admitted(now.in_microseconds().admits_moments)
    assert best(times, [early_of_5, up_to_5], admitted, serves(now)) == early_of_5
    assert [times.versions[p] for p in beyond(times, admitted, early_of_5)] == [3, 4, 5, 6]
