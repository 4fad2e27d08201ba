"""Reading the event store as an auditor does: each stream's stored rows with their hashes, the
chain re-checked in PostgreSQL, what is wrong with a broken stream, and the chain heads.

Checking is in two steps. `check_range` recomputes every hash of a slice of the store in SQL (a
window over each stream in stored order) and cross-checks each stream against the `event_id`
index, which ingest writes in the same transaction; it names the streams that are not intact.
`diagnose` then reads such a stream (a few, normally none) and says for each bad position what
happened: removed, altered, reordered or inserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from domain.contract import customer_key
from eventstore import chain, tables

EVENTS = Identifier(tables.EVENTS)
EVENT_IDS = Identifier(tables.EVENT_IDS)

# Every stream whose stored hashes or positions do not chain, or whose number of stored
# interactions differs from the `event_id` index's count for it (index rows are never deleted),
# in one slice of stream ids. Position 1 of each stream is its registration, which has no event_id.
_CHECK_RANGE_SQL = SQL(
    "WITH rows AS (SELECT originator_id, originator_version, hash, "  # noqa: S608 - constant SQL fragments
    "lag(originator_version) OVER w AS previous_position, "
    + chain.EXPECTED_HASH_SQL.format(previous="lag(hash) OVER w") + " AS expected "
    "FROM {events} WHERE originator_id BETWEEN %(low)s AND %(high)s "
    "WINDOW w AS (PARTITION BY originator_id ORDER BY originator_version)), "
    "streams AS (SELECT originator_id, count(*) AS stored, "
    "bool_and(hash IS NOT DISTINCT FROM expected AND originator_version = coalesce(previous_position, 0) + 1) AS chained "
    "FROM rows GROUP BY originator_id), "
    "indexed AS (SELECT originator_id, count(*) AS n FROM {event_ids} "
    "WHERE originator_id BETWEEN %(low)s AND %(high)s GROUP BY originator_id) "
    "SELECT coalesce(s.originator_id, i.originator_id) AS originator_id, coalesce(s.stored, 0) AS stored, "
    "coalesce(s.chained, false) AND coalesce(i.n, 0) = s.stored - 1 AS intact "
    "FROM streams s FULL JOIN indexed i ON i.originator_id = s.originator_id"
)


@dataclass(frozen=True)
class Finding:
    """One thing wrong with one stored position of one customer's stream."""

    originator_id: UUID
    customer_id: str | None
    position: int
    problem: str  # removed | altered | reordered | inserted | unsealed
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "stream_id": str(self.originator_id), "position": self.position,
                "problem": self.problem, "detail": self.detail}


@dataclass(frozen=True)
class StoredRow:
    originator_id: UUID
    position: int
    topic: str
    state: bytes
    hash: bytes | None


def slices(count: int = 256) -> list[tuple[UUID, UUID]]:
    """The stream-id space cut into `count` contiguous slices (stream ids are uniform: uuid5)."""
    step = (1 << 128) // count
    bounds = [i * step for i in range(count)] + [1 << 128]
    return [(UUID(int=low), UUID(int=high - 1)) for low, high in zip(bounds, bounds[1:], strict=False)]


def check_range(conn: Any, low: UUID, high: UUID) -> tuple[int, int, list[UUID]]:
    """(events checked, streams checked, streams not intact) for the stream ids in [low, high]."""
    rows = _query(conn, _CHECK_RANGE_SQL.format(events=EVENTS, event_ids=EVENT_IDS),
                        {"low": low, "high": high}).fetchall()
    return (sum(r["stored"] for r in rows), len(rows),
            [r["originator_id"] for r in rows if not r["intact"]])


def stream_rows(conn: Any, originator_id: UUID, after: int = 0, limit: int | None = None) -> list[StoredRow]:
    """A stream's stored rows from position `after` + 1 on, in order (at most `limit`)."""
    rows = _query(
        conn,
        SQL("SELECT originator_id, originator_version, topic, state, hash FROM {} WHERE originator_id = %s "
            "AND originator_version > %s ORDER BY originator_version LIMIT %s").format(EVENTS),
        (originator_id, after, limit),
    ).fetchall()
    return [StoredRow(r["originator_id"], r["originator_version"], r["topic"], r["state"], r["hash"]) for r in rows]


def hash_before(conn: Any, row: StoredRow) -> bytes | None:
    """The stored hash of the row before `row` in its stream (None before the first)."""
    found = _query(
        conn,
        SQL("SELECT hash FROM {} WHERE originator_id = %s AND originator_version < %s "
            "ORDER BY originator_version DESC LIMIT 1").format(EVENTS), (row.originator_id, row.position),
    ).fetchone()
    return found["hash"] if found is not None else None


def check_heads(conn: Any, kept: Sequence[tuple[UUID, int, bytes]]) -> list[Finding]:
    """Each chain head kept earlier (stream, position, hash) must still be stored as it was."""
    if not kept:
        return []
    rows = _query(
        conn,
        SQL("SELECT k.id, k.position, k.hash AS kept, e.hash AS stored FROM unnest(%s::uuid[], %s::int8[], "
            "%s::bytea[]) AS k(id, position, hash) LEFT JOIN {} e ON e.originator_id = k.id "
            "AND e.originator_version = k.position").format(EVENTS),
        ([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]),
    ).fetchall()
    findings = []
    for r in rows:
        if r["stored"] == r["kept"]:
            continue
        stream = r["id"]
        customer = next((k for k in map(_customer_of, stream_rows(conn, stream, limit=1)) if k), None)
        problem, detail = ("removed", "the event at this kept chain head is no longer stored") \
            if r["stored"] is None else \
            ("altered", "the hash stored at this kept chain head differs: the stream was rewritten after the "
                        "heads were kept")
        findings.append(Finding(stream, customer, r["position"], problem, detail))
    return findings


def indexed_event_ids(conn: Any, originator_id: UUID) -> set[str]:
    rows = _query(conn, SQL("SELECT event_id FROM {} WHERE originator_id = %s").format(EVENT_IDS),
                        (originator_id,)).fetchall()
    return {r["event_id"] for r in rows}


def diagnose(conn: Any, originator_id: UUID) -> list[Finding]:
    """What is wrong with one stream, position by position (empty if it is intact)."""
    rows = stream_rows(conn, originator_id)
    indexed = indexed_event_ids(conn, originator_id)
    customer = next((k for k in map(_customer_of, rows) if k), None)
    findings: list[Finding] = []

    def found(position: int, problem: str, detail: str) -> None:
        findings.append(Finding(originator_id, customer, position, problem, detail))

    stored_ids = {eid for eid in map(_event_id_of, rows) if eid}
    hash_at = {r.position: r.hash for r in rows if r.hash is not None}
    missing_ids = sorted(indexed - stored_ids)  # recorded for this customer, no longer stored
    gone = f" (event_id index: no longer stored: {', '.join(map(repr, missing_ids))})" if missing_ids else ""
    previous_position, previous_hash, removed = 0, chain.GENESIS, 0
    for row in rows:
        gap = range(previous_position + 1, row.position)
        for missing in gap:
            found(missing, "removed", f"position {missing} is missing: the stored event there was deleted{gone}")
        removed += len(gap)
        event_id = _event_id_of(row)
        if row.hash is None:
            found(row.position, "unsealed", "stored without a hash: not written by Rapport's ingest")
        elif chain.link(previous_hash, row.originator_id, row.position, row.topic, row.state) != row.hash:
            origin = _recorded_position(row, hash_at)
            if origin == row.position:
                pass  # intact: its predecessor was moved (and is reported where it now stands)
            elif origin is not None:
                found(row.position, "reordered", f"event {event_id!r} was recorded at position {origin}")
            elif event_id and event_id not in indexed:
                found(row.position, "inserted",
                      f"event {event_id!r} is not in the event_id index: it was not recorded by ingest")
            elif not gap:  # after a removed event, its successor cannot match: the gap says why
                found(row.position, "altered", "its stored bytes or hash no longer match the chain: it, or the "
                      "hash of the event before it, was changed after it was recorded")
        previous_position, previous_hash = row.position, row.hash or chain.GENESIS
    # Indexed events beyond the gaps were removed from the end of the stream, where no gap shows.
    for position in range(previous_position + 1, previous_position + 1 + len(missing_ids) - removed):
        found(position, "removed", f"the stream ends before it: events recorded for this customer were deleted{gone}")
    return findings


def _recorded_position(row: StoredRow, hash_at: dict[int, bytes], reach: int = 16) -> int | None:
    """The position this row's own hash says it was recorded at, if any: a row moved or swapped
    with plain SQL keeps the hash it was given there, chained to a hash still stored near it (its
    own position, chained to a moved predecessor, means the row itself is intact). Positions
    within `reach` are tried, so a long stream costs little."""
    for position in sorted(range(max(1, row.position - reach), row.position + reach + 1),
                           key=lambda p: abs(p - row.position)):
        nearby = [hash_at[p] for p in range(position - reach - 1, position + reach + 2) if p in hash_at]
        for previous in (chain.GENESIS, *nearby) if position == 1 else nearby:
            if chain.link(previous, row.originator_id, position, row.topic, row.state) == row.hash:
                return position
    return None


def last_notification_id(conn: Any) -> int:
    row = _query(conn, SQL("SELECT coalesce(max(notification_id), 0) AS n FROM {}").format(EVENTS)).fetchone()
    return int(row["n"])


def heads(conn: Any) -> Iterator[tuple[UUID, int, bytes]]:
    """Every stream's last position and hash, in stream id order (a server-side cursor)."""
    with conn.transaction(), conn.cursor(name="rapport_chain_heads", row_factory=dict_row) as curs:
        curs.itersize = 10_000
        curs.execute(SQL("SELECT DISTINCT ON (originator_id) originator_id, originator_version, hash FROM {} "
                         "ORDER BY originator_id, originator_version DESC").format(EVENTS))
        for row in curs:
            yield row["originator_id"], row["originator_version"], row["hash"]


def _query(conn: Any, statement: Any, params: Any = None) -> Any:
    """A cursor over `statement`'s rows as dicts, whatever row factory the connection has."""
    return conn.cursor(row_factory=dict_row).execute(statement, params)


def _state_json(row: StoredRow) -> dict[str, Any] | None:
    try:
        value = json.loads(row.state)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _customer_of(row: StoredRow) -> str | None:
    state = _state_json(row)
    if state is None:
        return None
    if isinstance(state.get("customer_key"), str):  # the registration
        return state["customer_key"]
    customer = state.get("customer")
    return customer_key(customer) if isinstance(customer, dict) else None


def _event_id_of(row: StoredRow) -> str | None:
    state = _state_json(row)
    event_id = state.get("event_id") if state else None
    return event_id if isinstance(event_id, str) else None
