"""Blue/green rebuild of one read model: a fresh copy built beside the live one, then swapped in.

1. The copy's tables are created in schema `rapport_rebuild` (the same names) and filled from
   position 0 by the same runner and handlers as the live model, with a progress callback.
2. Once it is near the head, one transaction takes the read model's lock (so the live projector
   pauses between pages; queries go on), brings both copies to the same position, compares them
   (rows added, removed, changed, by primary key, over the columns both have), and swaps: the live
   tables are dropped, the copy's tables move into the live schema, the position and the parked
   events of the copy become the live ones, and the `analytics` views are made again over them.
   The API answers from the old tables until the commit and from the new ones after it: never from
   a half-built copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from projections.readmodel import ANALYTICS_SCHEMA, LIVE_SCHEMA, SCHEMA_NAME, ReadModel, Table, qualified
from projections.runner import PARKED_TABLE, TRACKING_TABLE, Projector, positions, record_version, stored_versions

log = logging.getLogger("rapport.rebuild")

REBUILD_SCHEMA = "rapport_rebuild"
EXAMPLES = 3


@dataclass
class TableComparison:
    table: str
    live_rows: int = 0
    new_rows: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    examples: list[str] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.new_columns or self.dropped_columns)


@dataclass
class RebuildReport:
    name: str
    position: int
    tables: list[TableComparison]
    swapped: bool

    @property
    def same(self) -> bool:
        return all(t.same for t in self.tables)


def side_schema_problem(schema: str) -> str | None:
    """Why `schema` cannot take a replayed or rebuilt copy, or None."""
    if not SCHEMA_NAME.fullmatch(schema):
        return "is not a plain schema name (lower-case letters, digits and _, not starting with a digit)"
    if schema in (LIVE_SCHEMA, ANALYTICS_SCHEMA, REBUILD_SCHEMA) or schema.startswith("pg_"):
        return f"is taken: not {LIVE_SCHEMA}, {ANALYTICS_SCHEMA}, {REBUILD_SCHEMA} or pg_*; choose a name of its own"
    return None


def build_copy(projector: Projector, progress: Callable[[int, int], None] | None = None) -> None:
    """Start a fresh copy (dropping any earlier unfinished one) and catch it up to the head."""
    [model] = projector.models
    [name] = projector.names
    assert model.schema != LIVE_SCHEMA, "a rebuild builds beside the live tables, never in them"
    with projector.store.datastore.transaction(commit=True) as curs:
        projector.lock(curs)
        for table in model.tables:
            curs.execute(f"DROP TABLE IF EXISTS {qualified(model.schema, table.name)}")
        curs.execute(f"DELETE FROM {TRACKING_TABLE} WHERE application_name = %s", (name,))  # noqa: S608 - names from constants
        curs.execute(f"DELETE FROM {PARKED_TABLE} WHERE read_model = %s", (name,))  # noqa: S608 - names from constants
    projector.create_tables()
    projector.catch_up(progress)


def compare_and_swap(live: Projector, copy: Projector, swap: bool = True) -> RebuildReport:
    """In one transaction: both copies to one position, compared, and (if `swap`) swapped."""
    [live_model], [live_name] = live.models, live.names
    [new_model], [new_name] = copy.models, copy.names
    with live.store.datastore.transaction(commit=True) as curs:
        live.lock(curs)
        copy.lock(curs)
        at = positions(curs, [live_name, new_name])
        target = max(at.values())
        # Live tables of another version cannot take this code's rows: compared where they stand.
        if stored_versions(curs, [live_name]).get(live_name, live_model.version) == live_model.version:
            live.advance(curs, target)
        copy.advance(curs, target)
        tables = [compare(curs, table, live_model, new_model) for table in new_model.tables]
        if swap:
            _swap(curs, live_model, new_model, live_name, new_name, target)
    return RebuildReport(live_name, target, tables, swap)


def compare(curs: Any, table: Table, live: ReadModel, new: ReadModel) -> TableComparison:
    """Rows of the new copy against the live one, by primary key, over the columns both have."""
    result = TableComparison(table.name)
    live_columns = _columns(curs, live.schema, table.name)
    if not live_columns:  # a table this version adds
        result.new_rows = _count(curs, new.t(table.name))
        result.added = result.new_rows
        return result
    new_columns = table.column_names
    result.new_columns = [c for c in new_columns if c not in live_columns]
    result.dropped_columns = [c for c in live_columns if c not in new_columns]
    common = [c for c in new_columns if c in live_columns]
    key = [c for c in table.primary_key if c in live_columns]
    old, fresh = live.t(table.name), new.t(table.name)
    result.live_rows, result.new_rows = _count(curs, old), _count(curs, fresh)
    on = " AND ".join(f'o."{c}" = n."{c}"' for c in key)
    differs = " OR ".join(f'o."{c}" IS DISTINCT FROM n."{c}"' for c in common if c not in key) or "false"
    key_text = " || ' ' || ".join(f'COALESCE(o."{c}", n."{c}")::text' for c in key)
    curs.execute(
        f"SELECT CASE WHEN o.\"{key[0]}\" IS NULL THEN 'added' WHEN n.\"{key[0]}\" IS NULL THEN 'removed' "  # noqa: S608 - names from declarations
        f"ELSE 'changed' END AS kind, count(*) AS n, (array_agg({key_text}))[1:%s] AS examples "
        f"FROM {old} o FULL JOIN {fresh} n ON {on} "
        f"WHERE o.\"{key[0]}\" IS NULL OR n.\"{key[0]}\" IS NULL OR ({differs}) GROUP BY 1",
        (EXAMPLES,),
    )
    for row in curs.fetchall():
        setattr(result, row["kind"], row["n"])
        result.examples += [f"{row['kind']}: {example}" for example in row["examples"]]
    return result


def _lock_for_swap(curs: Any, live: ReadModel, wait_seconds: float = 60.0) -> None:
    """Take the live tables and views of the read model, all at once, without ever waiting while
    holding some: a query holds its tables until it ends, in an order of its own, so taking them
    one by one could deadlock with it (and PostgreSQL would then end the query)."""
    names = [live.t(t.name) for t in live.tables] + [qualified(ANALYTICS_SCHEMA, v.name) for v in live.views]
    curs.execute("SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL", (names,))
    existing = [row["name"] for row in curs.fetchall()]
    if not existing:
        return
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with curs.connection.transaction():  # a savepoint: a failed attempt releases what it took
                curs.execute(f"LOCK TABLE {', '.join(existing)} IN ACCESS EXCLUSIVE MODE NOWAIT")
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{live.name}: queries kept its tables busy for {wait_seconds:.0f} s; nothing was "
                                   "swapped; run the rebuild again") from None
            time.sleep(0.02)


def _swap(curs: Any, live: ReadModel, new: ReadModel, live_name: str, new_name: str, position: int) -> None:
    _lock_for_swap(curs, live)
    for view in live.views:
        curs.execute(view.drop_statement())
    for table in live.tables:
        curs.execute(f"DROP TABLE IF EXISTS {live.t(table.name)}")
    for table in new.tables:
        curs.execute(f"ALTER TABLE {new.t(table.name)} SET SCHEMA \"{live.schema}\"")
    for view in new.views:
        for statement in view.create_statements():
            curs.execute(statement)
    curs.execute(f"DELETE FROM {TRACKING_TABLE} WHERE application_name IN (%s, %s)", (live_name, new_name))  # noqa: S608 - names from constants
    curs.execute(f"INSERT INTO {TRACKING_TABLE} (application_name, notification_id) VALUES (%s, %s)",  # noqa: S608 - names from constants
                 (live_name, position))
    record_version(curs, live_name, new.version)
    curs.execute(f"DELETE FROM {PARKED_TABLE} WHERE read_model = %s", (live_name,))  # noqa: S608 - names from constants
    curs.execute(f"UPDATE {PARKED_TABLE} SET read_model = %s WHERE read_model = %s", (live_name, new_name))  # noqa: S608 - names from constants
    log.info("%s: swapped in the rebuilt copy at position %d", live_name, position)


def _columns(curs: Any, schema: str, table: str) -> list[str]:
    curs.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                 "ORDER BY ordinal_position", (schema, table))
    return [row["column_name"] for row in curs.fetchall()]


def _count(curs: Any, table: str) -> int:
    curs.execute(f"SELECT count(*) AS n FROM {table}")  # noqa: S608 - names from constants
    return int(curs.fetchone()["n"])
