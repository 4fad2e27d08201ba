"""One customer's point-in-time fold (contract §5) and its checkpoints, taken by rule.

What a point in time admits of a customer's stream is a set of its interactions; its view is the
read models' fold of that set (`CustomerFold`: `customer_360`'s merge state, the lifecycle fold).
Folding a customer with 100,000 events on every request takes seconds; a checkpoint keeps most of
that work.

**A checkpoint** (`eventstore.checkpoints.FoldCheckpoint`) is the fold of the interactions of
versions 1..v that occurred by T: the `customer_360` rows, the lifecycle fold ready to go on
(`LifecycleFold.to_json`), the stage intervals finalised since the checkpoint it continued, how
many events it holds and the latest recorded time among them. It is cut in occurred time as well
as in versions because versions follow the recorded time, not the occurred time: in a stream whose
events arrive in any order of occurrence (late events; the benchmark's heavy customer is shuffled)
no prefix of versions lies wholly before a given `as_of`, so a checkpoint of a prefix alone would
rarely serve one.

**A checkpoint serves a point** (`best`) when the point admits every event it holds (it admits its
latest occurred and recorded times: `PointInTime.admits_moments`, the rule for one event) and no
admitted event it lacks occurred by T (the lifecycle fold goes on only with later facts). The view
is then the checkpoint plus the admitted events it lacks (`beyond`): those after v, and those up
to v that occurred after T. Of the checkpoints that serve, the one holding most events is used.
Which events are admitted is found in the stream's time index (`StreamTimes`: the blocks of
`rapport_stream_times`, then the events after them), so only the events to fold are read and decoded.

**The rule** (`FoldCheckpoints.fold`): a read that would fold more than `every` events beyond its
best checkpoint first takes a ladder of them: the fold, in occurred order, of every interaction up
to the last version before one its `known_at` does not know (the whole stream without `known_at`),
going on from the best checkpoint that serves that set, with a checkpoint after each `every` events
(at the end of a moment) and one after the last. Then it answers from them. An as_of then costs at
most about `every` events to fold, whatever the stream's length. A stream whose new events come
after its old ones in occurred time continues its top checkpoint; a late event makes the next
read that admits it fold again from the checkpoint before it.

A checkpoint depends on the fold's code: `fold_key` names it (the format, the read models'
versions, the lifecycle thresholds, the event classes' versions) and checkpoints of another key
are ignored. Bump `FOLD_VERSION` when the fold changes in a way none of those show.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

import orjson

from domain.customer import TYPE_BY_EVENT_CLASS, Customer
from domain.lifecycle import LifecycleFold, LifecycleThresholds, Stage, StageInterval, interval_at
from eventstore.checkpoints import CheckpointTables, FoldCheckpoint, TimeBlock, microseconds, pack, unpack
from eventstore.store import InteractionLog
from projections.customer_360 import Customer360
from projections.lifecycle import Lifecycle, fact_of
from projections.pages import LogPages
from projections.readmodel import MergeState

CHECKPOINT_EVERY = 1000  # events between two checkpoints, and per block of the time index
FOLD_VERSION = 1  # what a checkpoint holds: bump when the fold changes in a way `fold_key` does not show
TIMES_VERSION = 1  # the time index's entries

Admits = Callable[[int, int], bool]  # (occurred µs, recorded µs) → admitted: `PointInTime.admits_moments`


def fold_key(thresholds: LifecycleThresholds) -> str:
    classes = ",".join(f"{cls.__name__}.{getattr(cls, 'class_version', 1)}" for cls in TYPE_BY_EVENT_CLASS)
    return (f"{FOLD_VERSION}/customer_360.{Customer360.version}/lifecycle.{Lifecycle.version}"
            f"/{thresholds.at_risk_days},{thresholds.churn_days}/{classes}")


class CustomerFold:
    """One customer's fold by the read models' own code: `customer_360`'s merge state and the
    lifecycle fold, each going on with more events. The stage intervals finalised before the
    checkpoint it started from are read only when the whole history is asked for."""

    def __init__(self, model: Customer360, thresholds: LifecycleThresholds, merge: MergeState | None = None,
                 lifecycle: LifecycleFold | None = None,
                 finalised: Callable[[], list[StageInterval]] | None = None) -> None:
        self.model, self.thresholds = model, thresholds
        self.merge = merge if merge is not None else model.merge_state()
        self.lifecycle = lifecycle or LifecycleFold(thresholds)
        self._finalised = finalised
        # Set by `PointInTimeViews.fold`: the customer its rows are for, and who it was then.
        self.customer_id: str | None = None
        self.identity: Any = None

    def add(self, events: Sequence[Customer.Interaction]) -> None:
        """Fold events in, in any order; all must have occurred after every event folded so far."""
        self.model.add_events(self.merge, events)
        self.lifecycle.add(map(fact_of, events))

    def customer_360_rows(self) -> dict[str, list[list[Any]]]:
        """The customer's rows of the `customer_360` tables, as the read model would hold them."""
        return self.model.rows_from(self.merge)

    def history(self) -> list[StageInterval]:
        """Every stage interval, including those the passing of time brings after the last event."""
        return [*(self._finalised() if self._finalised else ()), *self.lifecycle.history()]

    def interval_at(self, at: datetime) -> StageInterval | None:
        """The interval holding at `at` (`domain.lifecycle.interval_at` of the whole history). The
        intervals start in order, so when the fold's own first one has started by `at` the answer
        is among the fold's own and the finalised ones are not read."""
        ahead = self.lifecycle.history()
        if self._finalised is None or (ahead and ahead[0].starts_by(at)):
            return interval_at(ahead, at)
        return interval_at(self.history(), at)

    # -- as a checkpoint keeps it ------------------------------------------------------------------
    def checkpoint(self, transcoder: Any) -> tuple[bytes, bytes]:
        """(state, the intervals finalised since the fold started or was last checkpointed), encoded:
        the state by the event store's transcoder (it keeps Decimals and datetimes as they are), the
        intervals as plain JSON. The fold then forgets those intervals, as one restored from this
        checkpoint would."""
        lifecycle = self.lifecycle.to_json()
        state = transcoder.encode({"customer_360": self.customer_360_rows(), "lifecycle": lifecycle})
        history = orjson.dumps([_interval_json(i) for i in self.lifecycle.changes[:-1]])
        self.lifecycle = LifecycleFold.from_json(lifecycle, self.thresholds)
        return state, history

    @classmethod
    def restore(cls, model: Customer360, thresholds: LifecycleThresholds, state: dict[str, Any],
                finalised: Callable[[], list[StageInterval]]) -> CustomerFold:
        return cls(model, thresholds, model.state_of(state["customer_360"]),
                   LifecycleFold.from_json(state["lifecycle"], thresholds), finalised)


def _interval_json(interval: StageInterval) -> list[Any]:
    return [interval.stage.value, interval.since.isoformat(), interval.until.isoformat() if interval.until else None,
            interval.reason, interval.event_id, interval.previous_stage.value if interval.previous_stage else None]


_STAGES: dict[str | None, Stage | None] = {None: None, **{stage.value: stage for stage in Stage}}


def intervals_of(history: bytes) -> list[StageInterval]:
    """The stage intervals a checkpoint's `history` holds."""
    return [StageInterval(_STAGES[stage], datetime.fromisoformat(since),  # type: ignore[arg-type]
                          datetime.fromisoformat(until) if until else None, reason, event_id, _STAGES[previous])
            for stage, since, until, reason, event_id, previous in orjson.loads(history)]


@dataclass
class StreamTimes:
    """A stream's interactions in version order: version, occurred and recorded time (µs) of each,
    and the events decoded so far, by version."""

    versions: list[int] = field(default_factory=list)
    occurred: list[int] = field(default_factory=list)
    recorded: list[int] = field(default_factory=list)
    decoded: dict[int, Customer.Interaction] = field(default_factory=dict)

    def add_entries(self, entries: bytes) -> None:
        values = unpack(entries)
        self.versions += values[0::3]
        self.occurred += values[1::3]
        self.recorded += values[2::3]

    def add_event(self, version: int, event: Customer.Interaction) -> None:
        self.versions.append(version)
        self.occurred.append(microseconds(event.occurred_at))
        self.recorded.append(microseconds(event.timestamp))
        self.decoded[version] = event

    def admitted(self, admits: Admits) -> list[bool]:
        return list(map(admits, self.occurred, self.recorded))

    def known_through(self, knows: Admits | None) -> int | None:
        """The last version before the first interaction `knows` does not admit (the last of all
        without `knows`); None before the first."""
        if knows is not None:
            for position, known in enumerate(map(knows, self.occurred, self.recorded)):
                if not known:
                    return self.versions[position - 1] if position else None
        return self.versions[-1] if self.versions else None

    def earliest_from(self, admitted: list[bool]) -> list[int]:
        """At each position, the earliest occurred time of the admitted events from there on."""
        earliest = [0] * (len(admitted) + 1)
        running = earliest[-1] = 2**63 - 1
        for position in range(len(admitted) - 1, -1, -1):
            if admitted[position] and self.occurred[position] < running:
                running = self.occurred[position]
            earliest[position] = running
        return earliest


def best(times: StreamTimes, checkpoints: Sequence[FoldCheckpoint], admitted: list[bool],
         serves: Callable[[FoldCheckpoint], bool]) -> FoldCheckpoint | None:
    """The checkpoint holding most events among those that `serves` (it holds only admitted
    events) after which no admitted event occurred by its `occurred_through`."""
    earliest: list[int] | None = None
    for checkpoint in sorted(checkpoints, key=lambda c: c.events, reverse=True):
        if not serves(checkpoint):
            continue
        after = bisect_right(times.versions, checkpoint.version)
        if after < len(times.versions):
            earliest = earliest or times.earliest_from(admitted)
            if earliest[after] <= microseconds(checkpoint.occurred_through):
                continue  # an admitted event it lacks occurred before its end: its lifecycle cannot go on
        return checkpoint
    return None


def beyond(times: StreamTimes, admitted: list[bool], checkpoint: FoldCheckpoint | None) -> list[int]:
    """Positions of the admitted events that the checkpoint does not hold."""
    if checkpoint is None:
        return [position for position, admits in enumerate(admitted) if admits]
    version, through = checkpoint.version, microseconds(checkpoint.occurred_through)
    return [position for position, (admits, v, occurred) in enumerate(zip(admitted, times.versions, times.occurred, strict=True))
            if admits and (v > version or occurred > through)]


def moments(events: Sequence[Customer.Interaction], every: int) -> Iterator[Sequence[Customer.Interaction]]:
    """Events sorted by occurred time, in runs of about `every`, never splitting a moment."""
    start = 0
    while start < len(events):
        end = min(start + every, len(events))
        while end < len(events) and events[end].occurred_at == events[end - 1].occurred_at:
            end += 1
        yield events[start:end]
        start = end


class FoldCheckpoints:
    """The point-in-time fold of any customer from the event store, with checkpoints taken by rule."""

    def __init__(self, store: InteractionLog, model: Customer360, thresholds: LifecycleThresholds,
                 every: int = CHECKPOINT_EVERY) -> None:
        assert every > 0
        self.model, self.thresholds, self.every = model, thresholds, every
        self.tables = CheckpointTables(store.interactions)
        self.pages = LogPages(store.interactions, store.mapper)  # its decoder: the mapper's events, upcast
        self.transcoder = store.mapper.transcoder
        self.fold_key = fold_key(thresholds)
        self.layout = f"{TIMES_VERSION}/{every}"

    # -- reading a stream ------------------------------------------------------------------------
    def read(self, conn: Any, stream: UUID) -> tuple[StreamTimes, list[FoldCheckpoint]]:
        """The stream's time index (its stored blocks, then the events after them, decoded; any
        block those complete is stored) and its checkpoints that are still current."""
        stored = self.tables.stream(conn, stream, self.layout, self.fold_key)
        blocks, checkpoints = self._current(conn, stream, stored.blocks, stored.checkpoints)
        times = StreamTimes()
        for block in blocks:
            times.add_entries(block.entries)
        first = blocks[-1].last_version + 1 if blocks else 1
        after = stored.events
        if len(blocks) < len(stored.blocks):  # stale blocks were removed: the events after the others
            after = self.tables.events_after(conn, stream, first - 1)
        complete, entries = [], []
        for notification, chain_hash in after:
            version = notification.originator_version
            event = self.pages.decode(notification)
            if isinstance(event, Customer.Interaction):
                times.add_event(version, event)
                entries += (version, times.occurred[-1], times.recorded[-1])
            if version == first + self.every - 1:
                complete.append(TimeBlock(first, version, pack(entries), chain_hash))
                first, entries = version + 1, []
        if complete:
            self.tables.save_time_blocks(conn, stream, self.layout, complete)
        return times, checkpoints

    def _current(self, conn: Any, stream: UUID, blocks: list[TimeBlock],
                 checkpoints: list[FoldCheckpoint]) -> tuple[list[TimeBlock], list[FoldCheckpoint]]:
        """The blocks (from the first, contiguous) and checkpoints made from the stream as it is
        stored now: its chain hash at their last version is still theirs. The others are removed."""
        if not blocks and not checkpoints:
            return blocks, checkpoints
        hashes = self.tables.chain_hashes(conn, stream, [b.last_version for b in blocks]
                                          + [c.version for c in checkpoints])
        kept: list[TimeBlock] = []
        for block in blocks:
            if (block.first_version != (kept[-1].last_version + 1 if kept else 1)
                    or block.last_version not in hashes or hashes[block.last_version] != block.chain_hash):
                self.tables.forget_time_blocks(conn, stream, self.layout, block.first_version)
                break
            kept.append(block)
        # A checkpoint's history goes on from its parent's (which holds fewer events): it is
        # current only if they all are.
        current: list[FoldCheckpoint] = []
        keys: set[tuple[int, datetime]] = set()
        for checkpoint in sorted(checkpoints, key=lambda c: c.events):
            if (hashes.get(checkpoint.version, b"?") == checkpoint.chain_hash
                    and (checkpoint.parent is None or checkpoint.parent in keys)):
                current.append(checkpoint)
                keys.add(checkpoint.key)
        if len(current) < len(checkpoints):
            self.tables.forget_checkpoints(conn, stream, self.fold_key, [c.key for c in checkpoints if c.key not in keys])
        return kept, current

    def events(self, conn: Any, stream: UUID, times: StreamTimes, positions: Sequence[int]) -> list[Customer.Interaction]:
        """The interactions at these positions of `times`: decoded already, or read and decoded."""
        versions = [times.versions[p] for p in positions]
        missing = [v for v in versions if v not in times.decoded]
        if missing:
            for notification in self.tables.events_at(conn, stream, missing):
                event = self.pages.decode(notification)
                if isinstance(event, Customer.Interaction):
                    times.decoded[notification.originator_version] = event
        return [times.decoded[v] for v in versions if v in times.decoded]

    # -- folding ---------------------------------------------------------------------------------
    def fold(self, conn: Any, stream: UUID, times: StreamTimes, checkpoints: list[FoldCheckpoint],
             admits: Admits, admitted: list[bool], knows: Admits | None) -> CustomerFold:
        """The fold of the events `admits` (`admitted`: which of `times` it admits; `knows`: its
        known_at alone), from the best checkpoint, taking checkpoints first by the rule when that
        leaves more than `every` events to fold."""

        def serves(checkpoint: FoldCheckpoint) -> bool:
            return admits(microseconds(checkpoint.occurred_through), microseconds(checkpoint.recorded_through))

        base = best(times, checkpoints, admitted, serves)
        rest = beyond(times, admitted, base)
        if len(rest) > self.every:
            through = times.known_through(knows)
            if through is not None and not any(c.version == through and c.events == bisect_right(times.versions, through)
                                               for c in checkpoints):  # taken already: they cannot do better
                checkpoints = [*checkpoints, *self.take(conn, stream, times, checkpoints, through)]
                base = best(times, checkpoints, admitted, serves)
                rest = beyond(times, admitted, base)
        fold = self.restore(conn, stream, base)
        fold.add(self.events(conn, stream, times, rest))
        return fold

    def take(self, conn: Any, stream: UUID, times: StreamTimes, checkpoints: Sequence[FoldCheckpoint],
             through: int) -> list[FoldCheckpoint]:
        """Checkpoints of the stream's interactions of versions 1..`through`, in occurred order,
        after each `every` events and after the last, going on from the best checkpoint of those."""
        within = [version <= through for version in times.versions]
        base = best(times, [c for c in checkpoints if c.version <= through], within, lambda c: True)
        events = sorted(self.events(conn, stream, times, beyond(times, within, base)), key=lambda e: e.occurred_at)
        if not events:
            return []
        fold = self.restore(conn, stream, base)
        held, recorded = (base.events, base.recorded_through) if base else (0, events[0].timestamp)
        parent = base.key if base else None
        chain_hash = self.tables.chain_hashes(conn, stream, [through]).get(through)
        taken = []
        for run in moments(events, self.every):
            fold.add(run)
            held += len(run)
            recorded = max(recorded, *(e.timestamp for e in run))
            state, history = fold.checkpoint(self.transcoder)
            taken.append(FoldCheckpoint(through, run[-1].occurred_at, held, recorded, parent, chain_hash, state, history))
            parent = taken[-1].key
        self.tables.save_checkpoints(conn, stream, self.fold_key, taken)
        return taken

    def restore(self, conn: Any, stream: UUID, checkpoint: FoldCheckpoint | None) -> CustomerFold:
        """The fold a checkpoint holds, ready to go on (an empty fold for None)."""
        if checkpoint is None:
            return CustomerFold(self.model, self.thresholds)
        state = checkpoint.state or self.tables.state(conn, stream, self.fold_key, checkpoint)
        return CustomerFold.restore(self.model, self.thresholds, self.transcoder.decode(state),
                                    partial(self._finalised, stream, checkpoint))

    def _finalised(self, stream: UUID, checkpoint: FoldCheckpoint) -> list[StageInterval]:
        """The stage intervals finalised before the checkpoint's fold: the histories along its chain."""
        with self.tables.connection() as conn:
            histories = self.tables.histories(conn, stream, self.fold_key, checkpoint)
        return [interval for history in histories for interval in intervals_of(history)]
