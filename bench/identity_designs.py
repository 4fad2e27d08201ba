"""Benchmark (issue 14): identity resolution, aggregate + unique index (A) against eventsourcing's
Dynamic Consistency Boundaries (B), on the same workload in the same run.

The workload is a seeded stream of "link facts": each fact is one interaction carrying 1-3
identifiers of one person (`id:crm-…`, `email:…`, `phone:…`, a random non-empty subset, so people
are discovered piecemeal and merged when a fact links identifiers seen apart), plus a small share
of household facts where two persons' ids show one shared email. One pure decision (`decide`) is
used by both designs: nothing to write, new identifiers join the fact's customer, or customers are
merged (the one holding an `id:` survives); two different ids are never merged: the contested
identifier stays with the id that showed it first in event time (it is reclaimed by an earlier
fact that arrives late) and the refused link is recorded.

  A  one stream per customer through eventsourcing's PostgreSQL application recorder (optimistic
     concurrency on (stream, version)), and a table `identifiers(identifier PK, customer, since)`
     written in the events' transaction (the recorder's `_insert_events` extension point, as
     eventstore/store.py does). Decisions on the same identifiers are serialised by
     `pg_advisory_xact_lock` on the identifiers' keys (hashed into --lock-buckets keys; 1: one
     global lock), taken before the state is read inside that transaction; decisions that meet
     only in another identifier of a customer both write that customer's stream, and the later one
     fails on its version and retries; the primary key is the last safety net. A fact whose
     identifiers are all known to one customer is decided by one read and takes no lock.
  B  eventsourcing.dcb (`PostgresDCBRecorderTT`): one event per change, tagged with its
     identifiers and customers; a decision reads the events with the fact's identifier tags and
     its customers' tags, then appends with `DCBAppendCondition(fail_if_events_match=<that
     query>, after=<the read's head>)`; when the condition fails it reads again and retries.

Each design runs one fact per call and 500 facts per call (A: one transaction; B: one append whose
condition is the union of the 500 decisions' queries), with 1 writer and with N writer processes
(facts split by a hash of their anchor, as Kafka partitions split them; each writer takes its share
in event-time order), each run in its own throwaway database. It prints facts/s, p50/p99 ms per
call (read + decision + append, retries included), retries, the ratio B/A, and checks that every
run ends with the same partition of identifiers into customers as a single in-memory pass in event
time (and, for A, that folding its events gives its table). Then, as its LAST line, one JSON
object. It never fails on a time; it is not a test.

    .venv/bin/python -m bench.identity_designs [--facts 20000] [--persons N] [--writers 2] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem  # noqa: E402
from eventsourcing.dcb.postgres_tt import PostgresDCBRecorderTT  # noqa: E402
from eventsourcing.persistence import IntegrityError, StoredEvent  # noqa: E402
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore  # noqa: E402
from psycopg.sql import SQL, Identifier  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import create_database, drop_database, json_line, say  # noqa: E402
from services.settings import Settings  # noqa: E402

SEED = 14
BATCH = 500
HOUSEHOLD_SHARE = 0.02  # of the facts
HOUSEHOLD_PERSONS = 0.10  # of the persons live in a two-person household sharing one email
A_EVENTS = "identity_events"
B_EVENTS = "identity"  # eventsourcing.dcb names its tables identity_tt_main, identity_tt_tag
LOCK_BASE = 0x1D3E_0000  # pg_advisory_xact_lock keys of identity changes (design A): LOCK_BASE + bucket
LOCK_KEYS = 64  # buckets the identifiers hash into (1: one lock serialises every identity change)
MAX_ATTEMPTS = 10_000  # a call that conflicts this often is reported as stuck

Fact = tuple[int, tuple[str, ...]]  # (position in event time, identifiers in anchor order: id, email, phone)
Change = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The workload


def generate_facts(facts: int, persons: int, seed: int = SEED) -> tuple[list[Fact], int]:
    """`facts` link facts over `persons` persons, in event time; and the number of households."""
    rng = random.Random(seed)
    households = int(persons * HOUSEHOLD_PERSONS) // 2  # persons 2k and 2k+1 share email:home-k

    def person(p: int) -> tuple[str, str, str]:
        return f"id:crm-{p:06d}", f"email:p{p:06d}@example.com", f"phone:+9477{p:07d}"

    out: list[Fact] = []
    for seq in range(facts):
        if households and rng.random() < HOUSEHOLD_SHARE:
            home = rng.randrange(households)
            shared = f"email:home-{home:05d}@example.com"
            who = 2 * home + rng.randrange(2)
            # The shared email with one of the two ids; now and then on its own (a web form).
            ids: tuple[str, ...] = (shared,) if rng.random() < 0.1 else (person(who)[0], shared)
        else:
            mask = rng.randrange(1, 8)
            ids = tuple(x for bit, x in enumerate(person(rng.randrange(persons))) if mask >> bit & 1)
        out.append((seq, ids))
    return out, households


def anchor_share(fact: Fact, writers: int) -> int:
    """The writer (Kafka partition) of a fact: a stable hash of its anchor (its id, else email, else phone)."""
    # Not crc32: it is linear, and the ids of a household (crm-000042, crm-000043) always fell in
    # the same one of two shares, so the shares never contended for a shared email.
    return int.from_bytes(hashlib.blake2b(fact[1][0].encode(), digest_size=8).digest(), "big") % writers


# ---------------------------------------------------------------------------------------------
# The decision, the same for both designs


@dataclass
class View:
    """What a decision needs to know: each identifier's customer and since when (event time) it
    belongs to it (as claimed by an id), and the members of the customers concerned."""

    owner: dict[str, str] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)
    members: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def holder_id(self, customer: str) -> str | None:
        return next((m for m in self.members[customer] if m.startswith("id:")), None)

    def partition(self) -> frozenset[frozenset[str]]:
        return frozenset(frozenset(m) for m in self.members.values() if m)


def is_noop(identifiers: Sequence[str], owner: dict[str, str]) -> bool:
    """All identifiers known and owned by one customer: nothing to write."""
    owners = {owner.get(i) for i in identifiers}
    return len(owners) == 1 and None not in owners


def decide(fact: Fact, view: View) -> list[Change]:
    """The changes a fact makes to identity, given the current view (not modified).

    - all known and owned by one customer: nothing;
    - otherwise the survivor is the customer holding an id (the fact's own id's, else the first
      id-holder among the fact's customers), else the anchor's customer, else a new customer;
      customers without an id are merged into it, unknown identifiers join it;
    - an identifier of a customer holding another id: reclaimed when this fact (with an id) is
      earlier in event time than that id's claim, otherwise the link is refused (recorded)."""
    seq, identifiers = fact
    owners = [view.owner.get(i) for i in identifiers]
    known = list(dict.fromkeys(o for o in owners if o is not None))
    unknown = [i for i, o in zip(identifiers, owners, strict=True) if o is None]
    if not unknown and len(known) == 1:
        return []
    fact_id = identifiers[0] if identifiers[0].startswith("id:") else None
    holders = {c: view.holder_id(c) for c in known}
    winner = view.owner.get(fact_id) if fact_id else next((c for c in known if holders[c]), None)
    rivals = {c for c in known if c != winner and holders[c] is not None}
    mergeable = [c for c in known if c != winner and holders[c] is None]
    holds_id = winner is not None or fact_id is not None
    changes: list[Change] = []
    if winner is not None:
        survivor, absorbed = winner, mergeable
    elif mergeable:
        survivor, absorbed = mergeable[0], mergeable[1:]
    else:
        survivor, absorbed = f"c{seq}", []
        changes.append({"kind": "created", "customer": survivor, "identifiers": unknown, "at": seq})
        unknown = []
    for z in absorbed:
        moved = sorted(view.members[z])
        changes.append({"kind": "merged", "customer": survivor, "absorbed": z, "identifiers": moved,
                        "claimed": moved if holds_id else [], "at": seq})
    if unknown:
        # A survivor without an id that gets the fact's new id: its identifiers are claimed now.
        claimed = sorted(view.members[survivor]) if fact_id is not None and winner is None else []
        changes.append({"kind": "joined", "customer": survivor, "identifiers": unknown, "claimed": claimed,
                        "at": seq})
    for i, o in zip(identifiers, owners, strict=True):
        if o in rivals:
            if fact_id is not None and seq < view.since[i]:
                changes.append({"kind": "reclaimed", "customer": survivor, "previous": o, "identifier": i,
                                "at": seq})
            else:
                changes.append({"kind": "refused", "customer": survivor, "owner": o, "identifier": i, "at": seq})
    return changes


def apply(change: Change, view: View) -> None:
    kind, customer, at = change["kind"], change.get("customer"), change.get("at")
    if kind in ("created", "joined", "merged"):
        for i in change["identifiers"]:
            view.owner[i] = customer
            view.members[customer].add(i)
            if kind != "merged":
                view.since[i] = at
        if kind == "merged":
            view.members.pop(change["absorbed"], None)
        for i in change.get("claimed", ()):
            view.since[i] = at
    elif kind == "reclaimed":
        i = change["identifier"]
        view.members[change["previous"]].discard(i)
        view.owner[i] = customer
        view.members[customer].add(i)
        view.since[i] = at
    # refused (and A's mirror events merged_into, released) change nothing


def reference(facts: Iterable[Fact]) -> tuple[View, Counter[str]]:
    """One pass in memory, in the order given (event time): the end state every run must reach,
    and the changes by kind (`facts_writing`: facts that change something)."""
    view, kinds = View(), Counter[str]()
    for fact in facts:
        changes = decide(fact, view)
        kinds["facts_writing"] += bool(changes)
        for change in changes:
            apply(change, view)
            kinds[change["kind"]] += 1
    return view, kinds


def tags(change: Change) -> list[str]:
    """B: the tags of a change's event: every identifier and customer whose state it changes.
    A refusal changes nothing; its own tag keeps it out of the decisions' reads."""
    kind = change["kind"]
    if kind == "refused":
        return [f"refused:{change['identifier']}"]
    out = [f"cust:{change['customer']}"]
    if kind == "merged":
        out.append(f"cust:{change['absorbed']}")
    if kind == "reclaimed":
        out += [f"cust:{change['previous']}", change["identifier"]]
    else:
        out += change["identifiers"] + [i for i in change.get("claimed", ()) if i not in change["identifiers"]]
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Design A: aggregate streams + unique index, one transaction


class IdentityRecorder(PostgresApplicationRecorder):
    """eventsourcing's application recorder; `identifiers` rows written in the events' transaction."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, events_table_name=A_EVENTS)
        self.sql_create_statements += [
            SQL("CREATE TABLE IF NOT EXISTS identifiers (identifier text PRIMARY KEY, customer text NOT NULL, "
                "since bigint NOT NULL)"),
            SQL("CREATE INDEX IF NOT EXISTS identifiers_customer ON identifiers (customer)"),
        ]

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], *,
                       new_rows: Sequence[tuple[str, str, int]] = (),
                       moved_rows: Sequence[tuple[str, str, int, str]] = (), **kwargs: Any) -> None:
        if new_rows:  # the primary key refuses an identifier given to two customers
            curs.execute("INSERT INTO identifiers (identifier, customer, since) "
                         "SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[])",
                         ([r[0] for r in new_rows], [r[1] for r in new_rows], [r[2] for r in new_rows]), prepare=True)
        if moved_rows:  # only from the customer the decision read; the caller checks curs.rowcount (last)
            curs.execute("UPDATE identifiers i SET customer = u.customer, since = u.since "
                         "FROM unnest(%s::text[], %s::text[], %s::int8[], %s::text[]) AS u(identifier, customer, "
                         "since, previous) WHERE i.identifier = u.identifier AND i.customer = u.previous",
                         ([r[0] for r in moved_rows], [r[1] for r in moved_rows], [r[2] for r in moved_rows],
                          [r[3] for r in moved_rows]), prepare=True)
        super()._insert_events(curs, stored_events, **kwargs)


def stream_id(customer: str) -> uuid.UUID:
    """A customer's stream: md5 of its name, so that SQL finds it too (`md5(customer)::uuid`)."""
    return uuid.UUID(hashlib.md5(customer.encode()).hexdigest())  # noqa: S324 - a name, not a secret


def a_stream_events(changes: Sequence[Change]) -> list[tuple[str, str, Change]]:
    """(customer, kind, change) of each event A appends: a merge and a reclaim are written on both
    customers' streams (so that a concurrent change to either conflicts on its version)."""
    out = []
    for c in changes:
        out.append((c["customer"], c["kind"], c))
        if c["kind"] == "merged":
            out.append((c["absorbed"], "merged_into", c))
        elif c["kind"] == "reclaimed":
            out.append((c["previous"], "released", c))
    return out


def lock_keys(identifiers: Iterable[str], buckets: int) -> list[int]:
    """A's advisory lock keys of some identifiers, sorted (every transaction takes them in one order)."""
    return sorted({LOCK_BASE + zlib.crc32(i.encode()) % buckets for i in identifiers})


class DesignA:
    name = "A"

    def __init__(self, datastore: PostgresDatastore, lock_buckets: int = LOCK_KEYS) -> None:
        self.recorder = IdentityRecorder(datastore)
        self.datastore = datastore
        self.lock_buckets = lock_buckets
        # The customers of the identifiers, all their identifiers, and each one's stream version.
        self.read_state = SQL(
            "SELECT i.identifier, i.customer, i.since, (SELECT max(e.originator_version) FROM {} e "
            "WHERE e.originator_id = md5(i.customer)::uuid) AS version FROM identifiers i "
            "WHERE i.customer IN (SELECT customer FROM identifiers WHERE identifier = ANY(%s))"
        ).format(Identifier(A_EVENTS))
        self.stats: Counter[str] = Counter()

    def create(self) -> None:
        self.recorder.create_table()

    def process(self, facts: Sequence[Fact]) -> None:
        identifiers = list(dict.fromkeys(i for _, ids in facts for i in ids))
        with self.datastore.cursor() as curs:  # autocommit: one snapshot, no lock
            curs.execute("SELECT identifier, customer FROM identifiers WHERE identifier = ANY(%s)", (identifiers,),
                         prepare=True)
            owner = {r["identifier"]: r["customer"] for r in curs.fetchall()}
        if all(is_noop(ids, owner) for _, ids in facts):
            return
        for _attempt in range(MAX_ATTEMPTS):
            try:
                self._write(facts, identifiers)
                return
            except IntegrityError:
                self.stats["retries"] += 1
        raise RuntimeError(f"A: a call of {len(facts)} facts conflicted {MAX_ATTEMPTS} times")

    def _write(self, facts: Sequence[Fact], identifiers: list[str]) -> None:
        """One transaction, two round trips (pipelined, as the recorder's own `insert_events`):
        BEGIN + the lock + the state (members, since, stream versions); then the identifier rows,
        the library's table lock, NOTIFY and insert of the events, COMMIT."""
        with self.datastore.get_connection() as conn, conn.pipeline() as pipeline, conn.transaction():
            with conn.cursor() as curs:
                # Every identifier of the facts, bucketed: two decisions on one identifier wait for
                # each other; decisions that meet only in a customer's other identifiers conflict
                # on that customer's stream version (both write to it) and the later one retries.
                curs.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::int8[]) AS k",
                             (lock_keys(identifiers, self.lock_buckets),), prepare=True)
                curs.execute(self.read_state, (identifiers,), prepare=True)
                rows = curs.fetchall()
            view = View()
            loaded: dict[str, tuple[str, int]] = {}
            versions: dict[uuid.UUID, int] = {}
            for r in rows:
                view.owner[r["identifier"]] = r["customer"]
                view.since[r["identifier"]] = r["since"]
                view.members[r["customer"]].add(r["identifier"])
                loaded[r["identifier"]] = (r["customer"], r["since"])
                if r["version"] is not None:
                    versions[stream_id(r["customer"])] = r["version"]
            changes: list[Change] = []
            for fact in facts:
                for change in decide(fact, view):
                    apply(change, view)
                    changes.append(change)
            if not changes:
                self.stats["stale_reads"] += 1  # the read without the lock was out of date
                return
            stored = []
            for customer, kind, change in a_stream_events(changes):
                sid = stream_id(customer)
                versions[sid] = versions.get(sid, 0) + 1
                stored.append(StoredEvent(sid, versions[sid], f"identity:{kind}", json.dumps(change).encode()))
            touched = {i for c in changes for i in
                       ([c["identifier"]] if "identifier" in c else c["identifiers"] + c.get("claimed", []))}
            new_rows, moved_rows = [], []
            for i in sorted(touched):
                now = (view.owner[i], view.since[i])
                if i not in loaded:
                    new_rows.append((i, *now))
                elif loaded[i] != now:
                    moved_rows.append((i, *now, loaded[i][0]))
            with conn.cursor() as rows_curs, conn.cursor() as events_curs:
                self.recorder._insert_events(rows_curs, stored, new_rows=new_rows, moved_rows=moved_rows)
                self.recorder._insert_stored_events(events_curs, stored)  # the table lock, NOTIFY, insert
                pipeline.sync()  # a unique violation raises here
                if moved_rows and rows_curs.rowcount != len(moved_rows):
                    raise IntegrityError(f"{len(moved_rows) - rows_curs.rowcount} identifiers changed customer "
                                         "meanwhile")
        self.stats["writes"] += 1
        self.stats["events"] += len(stored)
        self.stats.update(c["kind"] for c in changes)

    def end_state(self) -> dict[str, Any]:
        """The partition in the table, and the one folded from the events (they must agree)."""
        table: defaultdict[str, set[str]] = defaultdict(set)
        folded = View()
        with self.datastore.cursor() as curs:
            curs.execute("SELECT identifier, customer FROM identifiers")
            for r in curs.fetchall():
                table[r["customer"]].add(r["identifier"])
            curs.execute(SQL("SELECT topic, state FROM {} ORDER BY notification_id").format(Identifier(A_EVENTS)))
            for r in curs.fetchall():
                apply({**json.loads(bytes(r["state"])), "kind": r["topic"].split(":", 1)[1]}, folded)
        partition = frozenset(frozenset(m) for m in table.values())
        return {"partition": partition, "events_agree": folded.partition() == partition}


# ---------------------------------------------------------------------------------------------
# Design B: Dynamic Consistency Boundaries (eventsourcing.dcb)


def fold(events: Iterable[Any]) -> View:
    view = View()
    for sequenced in events:
        apply(json.loads(sequenced.event.data), view)
    return view


class DesignB:
    name = "B"

    def __init__(self, datastore: PostgresDatastore, **_: Any) -> None:
        self.recorder = PostgresDCBRecorderTT(datastore, events_table_name=B_EVENTS)
        self.stats: Counter[str] = Counter()

    def create(self) -> None:
        self.recorder.create_table()

    def process(self, facts: Sequence[Fact]) -> None:
        identifiers = list(dict.fromkeys(i for _, ids in facts for i in ids))
        by_identifier = [DCBQueryItem(tags=[i]) for i in identifiers]
        for _attempt in range(MAX_ATTEMPTS):
            # Who owns the fact's identifiers: the events tagged with them.
            first = fold(self.recorder.read(DCBQuery(items=by_identifier)))
            if all(is_noop(ids, first.owner) for _, ids in facts):
                return
            # The boundary of the decision: the identifiers and their customers (members, ids).
            customers = {first.owner[i] for i in identifiers if i in first.owner}
            while True:
                query = DCBQuery(items=by_identifier + [DCBQueryItem(tags=[f"cust:{c}"]) for c in sorted(customers)])
                response = self.recorder.read(query)
                view = fold(response)
                head = response.head
                owners = {view.owner[i] for i in identifiers if i in view.owner}
                if owners <= customers:
                    break
                customers |= owners  # moved between the two reads: widen the boundary
            changes: list[Change] = []
            for fact in facts:
                for change in decide(fact, view):
                    apply(change, view)
                    changes.append(change)
            if not changes:
                self.stats["stale_reads"] += 1
                return
            events = [DCBEvent(type=c["kind"], data=json.dumps(c).encode(), tags=tags(c)) for c in changes]
            try:
                self.recorder.append(events, DCBAppendCondition(fail_if_events_match=query, after=head))
            except IntegrityError:
                self.stats["retries"] += 1
                continue
            self.stats["writes"] += 1
            self.stats["events"] += len(events)
            self.stats.update(c["kind"] for c in changes)
            return
        raise RuntimeError(f"B: a call of {len(facts)} facts conflicted {MAX_ATTEMPTS} times")

    def end_state(self) -> dict[str, Any]:
        return {"partition": fold(self.recorder.read()).partition(), "events_agree": True}


DESIGNS = {"A": DesignA, "B": DesignB}


# ---------------------------------------------------------------------------------------------
# Runs: each in its own database, writers in their own processes


def datastore_for(db: dict[str, str], pool_size: int = 1) -> PostgresDatastore:
    return PostgresDatastore(db["dbname"], db["host"], db["port"], db["user"], db["password"], pool_size=pool_size)


def writer(design: str, db: dict[str, str], facts: list[Fact], batch: int, lock_buckets: int, ready: Any, go: Any,
           progress: Any, results: Any) -> None:
    """One writer process: its share of the facts, `batch` per call, in event time."""
    datastore = datastore_for(db)
    try:
        subject = DESIGNS[design](datastore, lock_buckets=lock_buckets)
        with datastore.get_connection():
            pass  # connected before the clock starts
        ready.release()
        go.wait()
        latencies, writing = [], []  # ms of every call; of the calls that wrote
        started = time.monotonic()
        for begin in range(0, len(facts), batch):
            chunk = facts[begin:begin + batch]
            writes = subject.stats["writes"]
            t = time.perf_counter()
            subject.process(chunk)
            latencies.append((time.perf_counter() - t) * 1000)
            if subject.stats["writes"] != writes:
                writing.append(latencies[-1])
            with progress.get_lock():
                progress.value += len(chunk)
        results.put({"started": started, "ended": time.monotonic(), "latencies": latencies, "writing": writing,
                     "stats": dict(subject.stats), "facts": len(facts)})
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        results.put({"error": f"{type(error).__name__}: {error}"})
        ready.release()
    finally:
        datastore.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def table_sizes(datastore: PostgresDatastore) -> dict[str, int]:
    with datastore.cursor() as curs:
        curs.execute("SELECT relname, pg_total_relation_size(oid) AS bytes FROM pg_class "
                     "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
        return {r["relname"]: r["bytes"] for r in curs.fetchall()}


def run(design: str, batch: int, writers: int, facts: list[Fact], db: dict[str, str], label: str,
        lock_buckets: int) -> dict[str, Any]:
    """One design, one batch size, `writers` processes, on an empty database `db`."""
    datastore = datastore_for(db)
    try:
        DESIGNS[design](datastore).create()
    finally:
        datastore.close()
    shares = [[f for f in facts if anchor_share(f, writers) == k] for k in range(writers)]
    context = multiprocessing.get_context("spawn")
    ready, go, progress, results = context.Semaphore(0), context.Event(), context.Value("q", 0), context.Queue()
    processes = [context.Process(target=writer, args=(design, db, share, batch, lock_buckets, ready, go, progress, results),
                                 name=f"identity-{label}-{k}") for k, share in enumerate(shares)]
    for p in processes:
        p.start()
    for _ in processes:
        if not ready.acquire(timeout=120):
            raise RuntimeError(f"{label}: a writer did not start in 120 s")
    go.set()
    outcomes = []
    with tqdm(total=len(facts), desc=label, unit="fact", file=sys.stderr) as bar:
        while len(outcomes) < len(processes):
            while not results.empty():
                outcomes.append(results.get())
            bar.update(progress.value - bar.n)
            if len(outcomes) < len(processes) and not any(p.is_alive() for p in processes) and results.empty():
                break
            time.sleep(0.1)
        bar.update(progress.value - bar.n)
    for p in processes:
        p.join(30)
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors or len(outcomes) < len(processes):
        raise RuntimeError(f"{label}: a writer failed: {errors or 'it died without a word'}")
    seconds = max(o["ended"] for o in outcomes) - min(o["started"] for o in outcomes)
    latencies = [x for o in outcomes for x in o["latencies"]]
    writing = [x for o in outcomes for x in o["writing"]] or [0.0]
    stats: Counter[str] = Counter()
    for o in outcomes:
        stats.update(o["stats"])
    datastore = datastore_for(db)
    try:
        subject = DESIGNS[design](datastore)
        state = subject.end_state()
        sizes = table_sizes(datastore)
    finally:
        datastore.close()
    return {"design": design, "batch": batch, "writers": writers, "seconds": seconds,
            "fps": len(facts) / seconds, "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 0.99),
            "write_p50_ms": statistics.median(writing), "write_p99_ms": percentile(writing, 0.99),
            "calls": len(latencies), "shares": [len(s) for s in shares], "stats": dict(stats),
            "partition": state["partition"], "events_agree": state["events_agree"], "sizes": sizes}


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.identity_designs", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--facts", type=int, default=20_000, help="link facts (default 20000)")
    parser.add_argument("--persons", type=int, default=None, help="persons (default facts/10)")
    parser.add_argument("--writers", type=int, default=2, help="concurrent writers of the second runs (default 2)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"facts per call of the batched runs (default {BATCH})")
    parser.add_argument("--lock-buckets", type=int, default=LOCK_KEYS,
                        help=f"A: advisory lock keys the identifiers hash into (default {LOCK_KEYS}; 1: one global lock)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the workload (default {SEED})")
    parser.add_argument("--quick", action="store_true", help="2,000 facts")
    parser.add_argument("--database", default=None,
                        help="prefix of the run databases, PREFIX_a_b1_w1 … (default rapport_bench_identity_<random>)")
    parser.add_argument("--keep", action="store_true", help="keep the run databases")
    args = parser.parse_args(argv)
    if args.quick:
        args.facts = 2_000
    args.persons = args.persons or max(2, args.facts // 10)
    if min(args.writers, args.batch, args.facts, args.lock_buckets) < 1:
        parser.error("--facts, --writers, --batch and --lock-buckets must be at least 1")
    return args


def fmt_bytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} kB"


def report(args: argparse.Namespace, runs: list[dict[str, Any]], expected: frozenset[frozenset[str]],
           kinds: Counter[str], households: int) -> dict[str, Any]:
    changes = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items()) if k != "facts_writing")
    print(f"identity linking: {args.facts:,} facts over {args.persons:,} persons ({households} households), "
          f"seed {args.seed}, {os.cpu_count()} CPUs; {len(expected):,} customers in the end; in event time "
          f"{kinds['facts_writing']:,} facts change something ({changes})")
    print("ms per call (read + decision + append, retries included): of all calls, and of those that wrote")
    print(f"{'design':<7}{'facts/call':>11}{'writers':>8}{'facts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'write p50':>10}"
          f"{'write p99':>10}{'calls':>7}{'writes':>8}{'events':>8}{'retries':>8}{'stale':>6}  end state")
    result: dict[str, Any] = {"facts": args.facts, "persons": args.persons, "households": households,
                              "customers": len(expected), "writers": args.writers, "batch": args.batch,
                              "a_lock_buckets": args.lock_buckets}
    for r in runs:
        s = r["stats"]
        same = r["partition"] == expected
        note = ("= reference" if same else f"DIFFERS ({len(r['partition'] - expected)} customers not in the "
                f"reference, {len(expected - r['partition'])} missing)")
        if not r["events_agree"]:
            note += "; table != folded events"
        print(f"{r['design']:<7}{r['batch']:>11}{r['writers']:>8}{r['fps']:>10,.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['write_p50_ms']:>10.2f}{r['write_p99_ms']:>10.2f}{r['calls']:>7}"
              f"{s.get('writes', 0):>8}{s.get('events', 0):>8}"
              f"{s.get('retries', 0):>8}{s.get('stale_reads', 0):>6}  {note}")
        key = f"{r['design'].lower()}_b{r['batch']}_w{r['writers']}"
        result |= {f"{key}_fps": r["fps"], f"{key}_p50_ms": r["p50_ms"], f"{key}_p99_ms": r["p99_ms"],
                   f"{key}_write_p50_ms": r["write_p50_ms"], f"{key}_write_p99_ms": r["write_p99_ms"],
                   f"{key}_retries": s.get("retries", 0), f"{key}_events": s.get("events", 0),
                   f"{key}_reclaimed": s.get("reclaimed", 0), f"{key}_refused": s.get("refused", 0),
                   f"{key}_matches": same}
    print("ratio B/A (facts/s):", end="")
    for r in runs:
        if r["design"] == "B":
            a = next(x for x in runs if x["design"] == "A" and x["batch"] == r["batch"] and x["writers"] == r["writers"])
            ratio = r["fps"] / a["fps"]
            result[f"ratio_b_a_b{r['batch']}_w{r['writers']}"] = ratio
            print(f"  {r['batch']} per call, {r['writers']} writer(s) {ratio:.2f}", end="")
    print()
    matches = all(r["partition"] == expected and r["events_agree"] for r in runs)
    verdict = "reaches the same partition as the in-memory pass in event time" if matches else "does NOT match"
    print(f"end state: every run {verdict} (A, B; 1 and {args.writers} writers)")
    for design in ("A", "B"):
        last = next(r for r in reversed(runs) if r["design"] == design)
        print(f"  storage of {design} ({last['batch']} per call, {last['writers']} writers): "
              + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(last["sizes"].items())))
        result[f"{design.lower()}_bytes"] = sum(last["sizes"].values())
    result["end_state_match"] = matches
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin = Settings()
    prefix = args.database or f"rapport_bench_identity_{uuid.uuid4().hex[:8]}"
    facts, households = generate_facts(args.facts, args.persons, args.seed)
    view, kinds = reference(facts)
    expected = view.partition()
    plan = [(w, b, d) for w in dict.fromkeys((1, args.writers)) for b in dict.fromkeys((1, args.batch)) for d in "AB"]
    created: list[str] = []
    runs = []
    try:
        for writers, batch, design in plan:
            label = f"{design.lower()}_b{batch}_w{writers}"
            name = f"{prefix}_{label}"
            create_database(admin, name)
            created.append(name)
            db = {**admin.database, "dbname": name}
            runs.append(run(design, batch, writers, facts, db, f"{design} {batch}/call {writers}w", args.lock_buckets))
        result = report(args, runs, expected, kinds, households)
        print(json_line(result), flush=True)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if args.keep:
            say(f"kept: databases {', '.join(created)}")
        else:
            for name in created:
                drop_database(admin, name)


if __name__ == "__main__":
    sys.exit(main())
