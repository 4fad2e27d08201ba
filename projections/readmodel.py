"""What a read model is: its tables, declared once, and how a page of domain events changes them.

A table declares its columns; a *merge table* also declares how each column merges (sum, min, max,
set union, latest by `(occurred_at, event_id)`). From that one declaration come the DDL, the
in-page combine in Python and the `INSERT ... ON CONFLICT DO UPDATE` that merges a page into the
stored rows. Every merge is commutative and associative, so a merge table's rows do not depend on
the order events arrive in or on how the log is split into pages.

Read models that are not merges (append-only, recomputed per customer) use the same tables for
their DDL and write with their own set-based SQL. Every table lives in a PostgreSQL schema given
at construction: the live one, or a side schema where a rebuild builds a fresh copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from decimal import Context, localcontext
from enum import Enum
from functools import partial
from typing import Any, ClassVar, Protocol

from domain.lifecycle import LifecycleThresholds
from projections.identity import Owners

LIVE_SCHEMA = "public"
# The schemas read models write into are written into SQL as names: only plain ones are taken.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class ModelSettings:
    """What read models take from Rapport's settings (built by the composition root)."""

    thresholds: LifecycleThresholds = LifecycleThresholds()
    alert_max_age: timedelta = timedelta(days=30)  # RAPPORT_ALERT_MAX_AGE_DAYS: older changes raise no alert


class Merge(Enum):
    KEY = "key"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    UNION = "union"  # text[]: sorted set union
    LATEST = "latest"  # one of a group of columns kept from the row with the greatest (at, event_id)
    NONE = "none"  # not merged: append-only and recomputed tables


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # SQL type; text is compared by code point (COLLATE "C"), as Python compares str
    merge: Merge = Merge.NONE
    group: str = ""  # LATEST: the group's name; its order columns are `<group>_at` and `<group>_event_id`
    not_null: bool = False
    default: str | None = None

    def ddl(self) -> str:
        sql_type = self.type + (' COLLATE "C"' if self.type in ("text", "text[]") else "")
        parts = [f'"{self.name}" {sql_type}']
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        return " ".join(parts)


def key(name: str, type_: str = "text") -> Column:
    return Column(name, type_, Merge.KEY, not_null=True)


def summed(name: str, type_: str = "int") -> Column:
    return Column(name, type_, Merge.SUM, not_null=True, default="0")


def earliest(name: str, type_: str = "timestamptz") -> Column:
    return Column(name, type_, Merge.MIN)


def greatest(name: str, type_: str = "timestamptz") -> Column:
    return Column(name, type_, Merge.MAX)


def union(name: str) -> Column:
    return Column(name, "text[]", Merge.UNION, not_null=True, default="'{}'")


def latest(group: str, **values: str) -> list[Column]:
    """Columns kept together from the event with the greatest `(occurred_at, event_id)`:
    `values` (name → SQL type), then `<group>_at` and `<group>_event_id`."""
    return [
        *(Column(name, type_, Merge.LATEST, group) for name, type_ in values.items()),
        Column(f"{group}_at", "timestamptz", Merge.LATEST, group),
        Column(f"{group}_event_id", "text", Merge.LATEST, group),
    ]


@dataclass(frozen=True)
class Table:
    """A table of a read model. `indexes` are SQL fragments after `ON <table>`, e.g. `(since)`."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[str, ...] = ()
    doc: str = ""
    fillfactor: int = 100

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def position(self, name: str) -> int:
        return self.column_names.index(name)

    def create_statements(self, schema: str) -> list[str]:
        columns = ",\n  ".join(c.ddl() for c in self.columns)
        key = ", ".join(f'"{c}"' for c in self.primary_key)
        # Rows of tables that are updated (merges, folds) keep room on their page for the new
        # version, so PostgreSQL updates them in place without touching the indexes (HOT).
        storage = f" WITH (fillfactor = {self.fillfactor})" if self.fillfactor < 100 else ""
        table = qualified(schema, self.name)
        statements = [f"CREATE TABLE IF NOT EXISTS {table} (\n  {columns},\n  PRIMARY KEY ({key})){storage}"]
        for i, index in enumerate(self.indexes):
            statements.append(
                f'CREATE INDEX IF NOT EXISTS "{self.name}_{i}" ON {qualified(schema, self.name)} {index}'
            )
        if self.doc:
            statements.append(f"COMMENT ON TABLE {qualified(schema, self.name)} IS {_literal(self.doc)}")
        return statements

    def staging(self, schema: str) -> str:
        """A temporary table (of the session, emptied at commit) that rows are COPYed into before
        one set-based statement takes them to this table: binary COPY adapts values in C, where
        array parameters (`unnest(%s, ...)`) are adapted value by value in Python."""
        return f'pg_temp."stage_{schema}_{self.name}"'

    def stage(self, curs: Any, schema: str, rows: Iterable[Sequence[Any]], columns: Sequence[str] | None = None) -> None:
        """COPY rows (values of `columns`, default all, in table order) into `staging(schema)`."""
        chosen = [c for c in self.columns if columns is None or c.name in columns]
        staging = self.staging(schema)
        curs.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({', '.join(c.ddl() for c in chosen)}) "
                     "ON COMMIT DELETE ROWS")
        names = ", ".join(f'"{c.name}"' for c in chosen)
        with curs.copy(f"COPY {staging} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_COPY_TYPE_NAMES.get(c.type, c.type) for c in chosen])
            for row in rows:
                copy.write_row(row)

    def insert_sql(self, schema: str, on_conflict: str = "DO NOTHING") -> str:
        """Takes the rows staged by `stage` (leaving the staging table empty) into this table, in
        key order (two writers of one table then lock its rows in the same order)."""
        names = ", ".join(f'"{n}"' for n in self.column_names)
        key = ", ".join(f'"{c}"' for c in self.primary_key)
        return (f"WITH d AS (DELETE FROM {self.staging(schema)} RETURNING *)\n"  # noqa: S608 - names from declarations
                f"INSERT INTO {qualified(schema, self.name)} AS t ({names})\nSELECT {names} FROM d ORDER BY {key}\n"
                f"ON CONFLICT ({key}) {on_conflict}")

    def copy(self, curs: Any, schema: str, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows with binary COPY, the fastest way in (no ON CONFLICT: for tables where each
        event adds its own rows once; a repeat fails the page, whose events are then parked)."""
        names = ", ".join(f'"{n}"' for n in self.column_names)
        with curs.copy(f"COPY {qualified(schema, self.name)} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_COPY_TYPE_NAMES.get(c.type, c.type) for c in self.columns])
            for row in rows:
                copy.write_row(row)

    def copy_rows(self, rows: Iterable[Sequence[Any]]) -> Iterable[Sequence[Any]]:
        """Rows as COPY takes them: sets (the values of `union` columns) as sorted lists."""
        unions = [i for i, c in enumerate(self.columns) if c.type == "text[]"]
        if not unions:
            return rows
        return [[sorted(v) if i in unions else v for i, v in enumerate(row)] for row in rows]


_COPY_TYPE_NAMES = {"int": "int4", "bigint": "int8"}  # psycopg's registry knows the types by these names


def qualified(schema: str, name: str) -> str:
    return f'"{schema}"."{name}"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


ANALYTICS_SCHEMA = "analytics"


@dataclass(frozen=True)
class View:
    """A documented view for analysts in schema `analytics`, over the live tables. Its column
    names are the stable interface: they survive rebuilds and changes of the tables beneath.
    `select` names tables as `{table_name}`; `columns` documents each output column."""

    name: str
    select: str
    doc: str
    columns: tuple[tuple[str, str], ...] = ()

    def create_statements(self) -> list[str]:
        target = qualified(ANALYTICS_SCHEMA, self.name)
        body = self.select.format_map(_LiveTables())
        statements = [f"DROP VIEW IF EXISTS {target}", f"CREATE VIEW {target} AS\n{body}",
                      f"COMMENT ON VIEW {target} IS {_literal(self.doc)}"]
        statements += [f'COMMENT ON COLUMN {target}."{column}" IS {_literal(doc)}' for column, doc in self.columns]
        return statements

    def drop_statement(self) -> str:
        return f"DROP VIEW IF EXISTS {qualified(ANALYTICS_SCHEMA, self.name)}"


class _LiveTables(dict[str, str]):
    def __missing__(self, name: str) -> str:
        return qualified(LIVE_SCHEMA, name)


# -- merge tables ------------------------------------------------------------------------------


def _merge_sql(table: Table) -> str:
    sets: list[str] = []
    groups: dict[str, list[str]] = {}
    for c in table.columns:
        n = f'"{c.name}"'
        if c.merge is Merge.SUM:
            sets.append(f"{n} = t.{n} + excluded.{n}")
        elif c.merge is Merge.MIN:
            sets.append(f"{n} = LEAST(t.{n}, excluded.{n})")
        elif c.merge is Merge.MAX:
            sets.append(f"{n} = GREATEST(t.{n}, excluded.{n})")
        elif c.merge is Merge.UNION:
            sets.append(f'{n} = ARRAY(SELECT DISTINCT v COLLATE "C" FROM unnest(t.{n} || excluded.{n}) v ORDER BY 1)')  # noqa: S608 - names from declarations
        elif c.merge is Merge.LATEST:
            groups.setdefault(c.group, []).append(c.name)
    for group, names in groups.items():
        at, event_id = f'"{group}_at"', f'"{group}_event_id"'
        picks = ", ".join(f'CASE WHEN newer THEN excluded."{c}" ELSE t."{c}" END' for c in names)
        targets = ", ".join(f'"{c}"' for c in names)
        sets.append(
            f"({targets}) = (SELECT {picks} FROM (SELECT excluded.{at} IS NOT NULL AND "  # noqa: S608 - names from declarations
            f"(t.{at} IS NULL OR (excluded.{at}, excluded.{event_id}) > (t.{at}, t.{event_id})) AS newer) n)"
        )
    return "DO UPDATE SET\n  " + ",\n  ".join(sets) if sets else "DO NOTHING"


def _combiner(table: Table) -> Callable[[list[Any], Sequence[Any]], None]:
    """In-page merge of a new row into the accumulated one, by the same rules as `_merge_sql`
    (one loop per kind of merge: this runs for every event)."""
    sums = [i for i, c in enumerate(table.columns) if c.merge is Merge.SUM]
    mins = [i for i, c in enumerate(table.columns) if c.merge is Merge.MIN]
    maxes = [i for i, c in enumerate(table.columns) if c.merge is Merge.MAX]
    unions = [i for i, c in enumerate(table.columns) if c.merge is Merge.UNION]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(table.columns):
        if c.merge is Merge.LATEST:
            groups.setdefault(c.group, []).append(i)
    latest = [(table.position(f"{group}_at"), table.position(f"{group}_event_id"), members)
              for group, members in groups.items()]

    def combine(acc: list[Any], row: Sequence[Any]) -> None:
        for i in sums:
            acc[i] += row[i]
        for i in mins:
            value = row[i]
            if value is not None and (acc[i] is None or value < acc[i]):
                acc[i] = value
        for i in maxes:
            value = row[i]
            if value is not None and (acc[i] is None or value > acc[i]):
                acc[i] = value
        for i in unions:
            if row[i]:
                acc[i] |= row[i]
        for at, event_id, members in latest:
            if row[at] is not None and (acc[at] is None or (row[at], row[event_id]) > (acc[at], acc[event_id])):
                for i in members:
                    acc[i] = row[i]

    return combine


Merged = dict[tuple[Any, ...], list[Any]]


class MergeTable:
    """A table whose rows merge by key: rows of a page are combined in Python, then upserted."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.key_width = len(table.primary_key)
        assert table.column_names[: self.key_width] == list(table.primary_key), "key columns come first"
        self.combine = _combiner(table)
        self._union = [i for i, c in enumerate(table.columns) if c.merge is Merge.UNION]

    def upsert_sql(self, schema: str) -> str:
        return self.table.insert_sql(schema, _merge_sql(self.table))

    def upsert(self, curs: Any, schema: str, sql: str, merged: Merged) -> None:
        """Write merged rows (`sql` is `upsert_sql(schema)`, made once)."""
        self.table.stage(curs, schema, self.table.copy_rows(self.in_key_order(merged)))
        curs.execute(sql)

    def accumulate(self, rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
        merged: Merged = {}
        self.merge_into(merged, rows)
        return self.in_key_order(merged)

    def merge_into(self, merged: Merged, rows: Iterable[Sequence[Any]]) -> None:
        """Combine rows into `merged` (key → row), by the table's merge rules."""
        width = self.key_width
        for row in rows:
            row_key = tuple(row[:width])
            acc = merged.get(row_key)
            if acc is None:
                acc = merged[row_key] = list(row)
                for i in self._union:
                    acc[i] = set(acc[i])
            else:
                self.combine(acc, row)

    @staticmethod
    def in_key_order(merged: Merged) -> list[list[Any]]:
        # In key order: two writers of one table then lock its rows in the same order.
        return [merged[k] for k in sorted(merged)]


# -- read models -------------------------------------------------------------------------------


class ReadModel:
    """Base of every read model: a name, tables in one schema, and `apply(curs, events)`.

    `version` says which shape of the tables the code writes; a changed read model (new column,
    fixed rule) gets a new version and is rolled out with a blue/green rebuild."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]]
    views: ClassVar[tuple[View, ...]] = ()

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema {schema!r} is not a plain schema name (lower-case letters, digits and _, "
                             "not starting with a digit, at most 63)")
        self.schema = schema
        self.settings = settings or ModelSettings()
        self.owners = Owners()  # whose each interaction is (projections/identity.py)

    def t(self, name: str) -> str:
        """The qualified name of one of this model's tables in its schema."""
        return qualified(self.schema, name)

    def create_statements(self) -> list[str]:
        return [s for table in self.tables for s in table.create_statements(self.schema)]

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        """Apply a page of domain events (in notification order) with set-based SQL on `curs`."""
        raise NotImplementedError

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        """Remove every row of these customers, and what they added to rows shared with others,
        as if none of their events had been applied (an identity change refolds them)."""
        raise NotImplementedError

    def redact(self, curs: Any, customers: Sequence[str]) -> None:
        """Remove the personal data (`domain.personal`) from these customers' rows: they asked to be
        forgotten. Counts, times, amounts and scores stay. Nothing to do for a model that holds none."""

    def batch(self, curs: Any) -> Batch:
        """Many pages applied as one, in the caller's transaction: `add` each page, then `finish`.
        Rows are the same as applying the pages one by one (merges are commutative); a model that
        keeps work for `finish` (a merge, a fold) writes each key once per batch instead of once
        per page. By default each page is applied as it comes."""
        return FunctionBatch(partial(self.apply, curs), _nothing)


class Batch(Protocol):
    def add(self, events: Sequence[Any]) -> None: ...

    def finish(self) -> None: ...


@dataclass
class FunctionBatch:
    """A batch made of two functions."""

    add: Callable[[Sequence[Any]], None]
    finish: Callable[[], None]


def _nothing() -> None:
    pass


Rows = dict[str, list[Sequence[Any]]]
MergeState = dict[str, Merged]  # table name → key → row being merged


class MergeReadModel(ReadModel):
    """A read model made only of merge tables: each handler turns one event into rows.

    Subclasses declare `tables` and `handlers` (domain event class → method name). A handler
    appends rows (tuples in the table's column order) to `rows[table_name]`.
    """

    handlers: ClassVar[dict[type, str]]
    decimal_context: ClassVar[Context | None] = None  # for sums of Decimals, when not the default

    def __init__(self, schema: str = LIVE_SCHEMA, settings: ModelSettings | None = None) -> None:
        super().__init__(schema, settings)
        self._merges = {t.name: MergeTable(t) for t in self.tables}
        self._sql = {name: m.upsert_sql(schema) for name, m in self._merges.items()}
        self._bound = {cls: getattr(self, method) for cls, method in self.handlers.items()}

    def apply(self, curs: Any, events: Sequence[Any]) -> None:
        batch = self.batch(curs)
        batch.add(events)
        batch.finish()

    def batch(self, curs: Any) -> Batch:
        """Pages merged in memory, one upsert per table at `finish`."""
        merged: MergeState = {name: {} for name in self._merges}
        return FunctionBatch(partial(self._add, merged), partial(self._finish, curs, merged))

    def rows_of(self, events: Iterable[Any]) -> dict[str, list[list[Any]]]:
        """The rows these events alone give each table (table name → rows in key order, sets as
        sorted lists): what the projector would store from them into empty tables, by the same
        handlers and combine. The point-in-time views fold one customer's events with it."""
        state = self.merge_state()
        self.add_events(state, events)
        return self.rows_from(state)

    # A fold kept between calls (the point-in-time views' checkpoints): start with `merge_state`
    # (or `state_of` the rows kept), `add_events` as they come, read with `rows_from`.
    def merge_state(self) -> MergeState:
        """An empty fold of this model's tables."""
        return {name: {} for name in self._merges}

    def add_events(self, state: MergeState, events: Iterable[Any]) -> None:
        """Merge events into the fold, by the projector's handlers and in-page combine."""
        self._add(state, events)

    def rows_from(self, state: MergeState) -> dict[str, list[list[Any]]]:
        """The fold's rows of each table (as `rows_of` gives them)."""
        return {name: [list(row) for row in self._merges[name].table.copy_rows(MergeTable.in_key_order(rows))]
                for name, rows in state.items()}

    def state_of(self, rows: dict[str, list[list[Any]]]) -> MergeState:
        """The fold whose `rows_from` gives `rows`, to be continued with `add_events`."""
        state = self.merge_state()
        for name, table_rows in rows.items():
            self._merges[name].merge_into(state[name], table_rows)  # one row per key: nothing to combine
        return state

    def rows_as(self, rows: dict[str, list[list[Any]]], customer_id: str) -> dict[str, list[list[Any]]]:
        """`rows` (as `rows_from` gives them) all under one customer, merged by the tables' rules:
        the rows of a fold of events keyed by several customers, as those customers merged."""
        state = self.merge_state()
        for name, table_rows in rows.items():
            merge = self._merges[name]
            unions = merge._union  # noqa: SLF001 - sets while merging, as the handlers make them
            merge.merge_into(state[name], [[customer_id, *(set(v) if i in unions else v for i, v in enumerate(row) if i)]
                                           for row in table_rows])
        return self.rows_from(state)

    def _add(self, merged: MergeState, events: Iterable[Any]) -> None:
        rows: Rows = {name: [] for name in merged}
        bound = self._bound
        for event in events:
            handler = bound.get(type(event))
            if handler is not None:
                handler(event, rows)
        with localcontext(self.decimal_context) if self.decimal_context else nullcontext():
            for name, table_rows in rows.items():
                if table_rows:
                    self._merges[name].merge_into(merged[name], table_rows)

    def forget_customers(self, curs: Any, customers: Sequence[str]) -> None:
        # Every merge table is keyed by customer first.
        for table in self.tables:
            assert table.primary_key[0] == "customer_id", table.name
            curs.execute(f"DELETE FROM {self.t(table.name)} WHERE customer_id = ANY(%s)", (list(customers),))  # noqa: S608 - names from constants

    def _finish(self, curs: Any, merged: MergeState) -> None:
        for name, table_merged in merged.items():
            if table_merged:
                self._merges[name].upsert(curs, self.schema, self._sql[name], table_merged)
