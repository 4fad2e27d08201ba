"""Who is who, stored beside the events and written in their transaction (issue 14).

The rules are `domain.identity`'s; this module keeps their inputs and their current result:

- `rapport_identity_links`: each link an event made (its anchor alone, or anchor → other), once,
  with the earliest event time `(occurred_at, event_id)` any event made it at and the earliest time
  Rapport recorded one;
- `rapport_identifiers`: each identifier's customer now, and the stream its own events are stored
  in (the stream of the events whose anchor it is). The primary key is the guarantee that no
  identifier has two customers;
- `rapport_identity_customers`: every customer id there is or was, with a version and, for one
  merged away, the customer it redirects to;
- `rapport_identity_separations`: the operators' separations (unmerges) in force;
- `rapport_identity_refusals`: each link refused (its anchor's customer keeps it apart from the
  other identifier's), with why and the event that asked for it.

**Concurrency** is optimistic, as eventsourcing's streams are: a decision reads a closed set of
identifiers (`IdentityTables.closure`: the customers of the batch's identifiers, all their
identifiers, every link touching those, and so on) with each customer's version; the write
(`IdentityTables.write`, in the events' transaction) locks those customers' rows in id order, and
if any version moved it raises `IntegrityError`: ingest then re-reads and decides again, as for a
stream version taken meanwhile. New identifiers and new customers are plain inserts, so two
processes creating the same one collide on the primary key the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier

from domain.identity import Identifier as Id
from domain.identity import Link, Refusal, Separation
from eventstore import tables

ALONE = ""  # `other` of a link that says its anchor was seen


class IdentityConflict(IntegrityError):
    """A customer a decision read changed before it was stored: decide again."""


def parse_identifier(text: str) -> Id:
    kind, _, value = text.partition(":")
    return Id(kind, value)


def create_statements(schema: str) -> list[Composed]:
    """The identity tables, for the event store's `sql_create_statements`."""
    links, identifiers, customers, separations, refusals = (
        SQL("{}.{}").format(Identifier(schema), Identifier(name)) for name in (
            tables.IDENTITY_LINKS, tables.IDENTIFIERS, tables.IDENTITY_CUSTOMERS, tables.IDENTITY_SEPARATIONS,
            tables.IDENTITY_REFUSALS))
    return [
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            'anchor text COLLATE "C" NOT NULL, other text COLLATE "C" NOT NULL, '
            "occurred_at timestamptz NOT NULL, event_id text NOT NULL, recorded_at timestamptz NOT NULL, "
            "PRIMARY KEY (anchor, other))").format(links),
        SQL("CREATE INDEX IF NOT EXISTS {} ON {} (other)").format(
            Identifier(f"{tables.IDENTITY_LINKS}_other"), links),
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            'identifier text COLLATE "C" PRIMARY KEY, customer_id text COLLATE "C" NOT NULL, stream uuid NOT NULL, '
            "updated_at timestamptz NOT NULL DEFAULT now())").format(identifiers),
        SQL("CREATE INDEX IF NOT EXISTS {} ON {} (customer_id)").format(
            Identifier(f"{tables.IDENTIFIERS}_customer_id"), identifiers),
        SQL("CREATE INDEX IF NOT EXISTS {} ON {} (stream)").format(Identifier(f"{tables.IDENTIFIERS}_stream"), identifiers),
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            'customer_id text COLLATE "C" PRIMARY KEY, version bigint NOT NULL, merged_into text COLLATE "C", '
            "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(customers),
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            'a text COLLATE "C" NOT NULL, b text COLLATE "C" NOT NULL, reason text NOT NULL, '
            "made_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (a, b))").format(separations),
        SQL("CREATE TABLE IF NOT EXISTS {} ("
            'anchor text COLLATE "C" NOT NULL, other text COLLATE "C" NOT NULL, why text NOT NULL, '
            "event_id text NOT NULL, occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (anchor, other))").format(refusals),
        # The fingerprint of the key emails and phones are hashed under: one key per database.
        SQL("CREATE TABLE IF NOT EXISTS {}.{} (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), "
            "fingerprint text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())").format(
                Identifier(schema), Identifier(tables.IDENTITY_KEY)),
    ]


class WrongIdentityKey(RuntimeError):
    """The identity key differs from the one this database's identifiers were hashed under."""


def check_identity_key(conn: Any, fingerprint: str, schema: str = "public") -> None:
    """Record the key's fingerprint on first use; refuse another key later (it would split every customer)."""
    table = SQL("{}.{}").format(Identifier(schema), Identifier(tables.IDENTITY_KEY))
    with conn.cursor(row_factory=tuple_row) as curs:
        curs.execute(SQL("INSERT INTO {} (fingerprint) VALUES (%s) ON CONFLICT DO NOTHING").format(table), (fingerprint,))
        curs.execute(SQL("SELECT fingerprint FROM {}").format(table))
        row = curs.fetchone()
    if not conn.autocommit:
        conn.commit()
    if row is not None and row[0] != fingerprint:
        raise WrongIdentityKey(
            f"the identity key (fingerprint {fingerprint}) is not the one this database's emails and phones were "
            f"hashed under (fingerprint {row[0]}): every process of one database needs the same "
            "RAPPORT_IDENTITY_KEY or RAPPORT_IDENTITY_KEY_FILE")


@dataclass
class IdentityState:
    """A closed set of identifiers as stored: their customers, those customers' versions, every link
    touching them and the separations between them."""

    owners: dict[Id, str] = field(default_factory=dict)
    streams: dict[Id, UUID] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    links: dict[tuple[Id, Id | None], Link] = field(default_factory=dict)
    recorded: dict[tuple[Id, Id | None], datetime] = field(default_factory=dict)  # each link's first recording
    separations: list[Separation] = field(default_factory=list)
    separations_made: dict[Separation, datetime] = field(default_factory=dict)


@dataclass
class IdentityWrites:
    """What one decision stores, checked against the versions it was made from."""

    expected: dict[str, int] = field(default_factory=dict)  # customer → version read (every customer read)
    changed: set[str] = field(default_factory=set)  # customers whose identifiers changed: version + 1
    created: set[str] = field(default_factory=set)  # new customers: inserted at version 1
    merged: dict[str, str] = field(default_factory=dict)  # customer → the one it now redirects to
    new_identifiers: list[tuple[Id, str, UUID]] = field(default_factory=list)  # identifier, customer, stream
    moved_identifiers: list[tuple[Id, str, str]] = field(default_factory=list)  # identifier, to, from
    links: list[tuple[Link, datetime]] = field(default_factory=list)  # with the time it is recorded
    separations_added: list[tuple[Separation, str]] = field(default_factory=list)
    separations_lifted: list[Separation] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.expected or self.created or self.new_identifiers or self.links
                    or self.separations_added or self.separations_lifted or self.refusals)

    def add(self, other: IdentityWrites) -> None:
        for name in ("changed", "created"):
            getattr(self, name).update(getattr(other, name))
        for name in ("expected", "merged"):
            getattr(self, name).update(getattr(other, name))
        for name in ("new_identifiers", "moved_identifiers", "links", "separations_added", "separations_lifted",
                     "refusals"):
            getattr(self, name).extend(getattr(other, name))


class IdentityTables:
    """Reads and writes the identity tables (in the event store's schema)."""

    def __init__(self, schema: str) -> None:
        self.links, self.identifiers, self.customers, self.separations, self.refusals = (
            SQL("{}.{}").format(Identifier(schema), Identifier(name)) for name in (
                tables.IDENTITY_LINKS, tables.IDENTIFIERS, tables.IDENTITY_CUSTOMERS, tables.IDENTITY_SEPARATIONS,
                tables.IDENTITY_REFUSALS))

    # -- reading --------------------------------------------------------------------------------
    def known_links(self, conn: Any, pairs: Iterable[tuple[Id, Id | None]]) -> dict[tuple[Id, Id | None], tuple[datetime, str]]:
        """The earliest event time stored for each of these links that exists."""
        wanted = {(str(a), str(o) if o is not None else ALONE): (a, o) for a, o in pairs}
        if not wanted:
            return {}
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("SELECT l.anchor, l.other, l.occurred_at, l.event_id FROM {} l "
                             "JOIN unnest(%s::text[], %s::text[]) AS w(anchor, other) USING (anchor, other)"
                             ).format(self.links), ([a for a, _ in wanted], [o for _, o in wanted]))
            return {wanted[a, o]: (at, event_id) for a, o, at, event_id in curs.fetchall()}

    def closure(self, conn: Any, seeds: Iterable[Id]) -> IdentityState:
        """The stored state of the smallest closed set holding `seeds`: with an identifier come its
        customer, all that customer's identifiers, and every link touching any of them. Read in one
        snapshot, so that the versions read are those of the state read (a decision checks them)."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return self._closure(conn, seeds)

    def _closure(self, conn: Any, seeds: Iterable[Id]) -> IdentityState:
        state = IdentityState()
        seen: set[Id] = set()
        frontier = set(seeds)
        customers: set[str] = set()
        with conn.cursor(row_factory=tuple_row) as curs:
            while frontier:
                seen |= frontier
                texts = [str(x) for x in frontier]
                curs.execute(SQL("SELECT identifier, customer_id, stream FROM {} WHERE identifier = ANY(%s)"
                                 ).format(self.identifiers), (texts,))
                rows = curs.fetchall()
                new_customers = {c for _, c, _ in rows} - customers
                if new_customers:
                    customers |= new_customers
                    curs.execute(SQL("SELECT identifier, customer_id, stream FROM {} WHERE customer_id = ANY(%s)"
                                     ).format(self.identifiers), (sorted(new_customers),))
                    rows += curs.fetchall()
                for text, customer_id, stream in rows:
                    x = parse_identifier(text)
                    state.owners[x], state.streams[x] = customer_id, stream
                members = [str(x) for x in state.owners if x not in seen] + texts
                curs.execute(SQL("SELECT anchor, other, occurred_at, event_id, recorded_at FROM {} "
                                 "WHERE anchor = ANY(%s) OR other = ANY(%s)").format(self.links), (members, members))
                grown: set[Id] = {x for x in state.owners if x not in seen}
                for anchor_text, other_text, occurred_at, event_id, recorded_at in curs.fetchall():
                    anchor = parse_identifier(anchor_text)
                    other = parse_identifier(other_text) if other_text != ALONE else None
                    state.links[anchor, other] = Link(occurred_at, event_id, anchor, other)
                    state.recorded[anchor, other] = recorded_at
                    grown |= {x for x in (anchor, other) if x is not None and x not in seen}
                seen |= {x for x in state.owners}
                frontier = grown - seen
            if customers:
                curs.execute(SQL("SELECT customer_id, version FROM {} WHERE customer_id = ANY(%s)").format(self.customers),
                             (sorted(customers),))
                state.versions = dict(curs.fetchall())
            texts = [str(x) for x in seen]
            curs.execute(SQL("SELECT a, b, made_at FROM {} WHERE a = ANY(%s) OR b = ANY(%s)").format(self.separations),
                         (texts, texts))
            for a, b, made_at in curs.fetchall():
                separation = Separation(parse_identifier(a), parse_identifier(b))
                state.separations.append(separation)
                state.separations_made[separation] = made_at
        return state

    # -- writing, in the events' transaction ----------------------------------------------------
    def write(self, curs: Any, writes: IdentityWrites) -> None:
        """Store a decision, or raise `IntegrityError` if a customer it read changed meanwhile."""
        if writes.expected:
            # In id order, so that two writers never wait on each other's rows in a cycle.
            with curs.connection.cursor(row_factory=tuple_row) as locked:
                locked.execute(SQL("SELECT customer_id, version FROM {} WHERE customer_id = ANY(%s) "
                                   "ORDER BY customer_id FOR UPDATE").format(self.customers), (sorted(writes.expected),))
                stored = dict(locked.fetchall())
            moved = sorted(c for c, v in writes.expected.items() if stored.get(c) != v)
            if moved:
                raise IdentityConflict(f"the identity of customers {', '.join(moved[:5])} changed meanwhile")
            bumped = sorted(writes.changed & set(writes.expected))
            if bumped:
                curs.execute(SQL("UPDATE {} c SET version = c.version + 1, updated_at = now(), "
                                 "merged_into = m.merged_into FROM unnest(%s::text[], %s::text[]) AS m(id, merged_into) "
                                 "WHERE c.customer_id = m.id").format(self.customers),
                             (bumped, [writes.merged.get(c) for c in bumped]))
        if writes.created:
            created = sorted(writes.created)
            # A customer merged away and made again (an unmerge gives back its id) is updated; one
            # that exists and is not merged away was made by another process meanwhile.
            with curs.connection.cursor(row_factory=tuple_row) as made:
                made.execute(SQL("INSERT INTO {} AS c (customer_id, version) SELECT id, 1 FROM unnest(%s::text[]) AS id "
                                 "ON CONFLICT (customer_id) DO UPDATE SET version = c.version + 1, merged_into = NULL, "
                                 "updated_at = now() WHERE c.merged_into IS NOT NULL RETURNING customer_id"
                                 ).format(self.customers), (created,))
                taken = sorted(set(created) - {row[0] for row in made.fetchall()})
            if taken:
                raise IdentityConflict(f"customers {', '.join(taken[:5])} were made meanwhile")
        if writes.new_identifiers:
            new = sorted(writes.new_identifiers, key=lambda row: str(row[0]))
            curs.execute(SQL("INSERT INTO {} (identifier, customer_id, stream) "
                             "SELECT * FROM unnest(%s::text[], %s::text[], %s::uuid[])").format(self.identifiers),
                         ([str(x) for x, _, _ in new], [c for _, c, _ in new], [s for _, _, s in new]))
        if writes.moved_identifiers:
            moved_rows = sorted(writes.moved_identifiers, key=lambda row: str(row[0]))
            # Each moves from the customer the decision saw it with, or the decision is made again.
            with curs.connection.cursor(row_factory=tuple_row) as moving:
                moving.execute(SQL("UPDATE {} i SET customer_id = m.customer_id, updated_at = now() "
                                   "FROM unnest(%s::text[], %s::text[], %s::text[]) AS m(identifier, customer_id, source) "
                                   "WHERE i.identifier = m.identifier AND i.customer_id = m.source RETURNING i.identifier"
                                   ).format(self.identifiers),
                               ([str(x) for x, _, _ in moved_rows], [c for _, c, _ in moved_rows],
                                [source for _, _, source in moved_rows]))
                if len(moving.fetchall()) != len(moved_rows):
                    raise IdentityConflict("identifiers changed customer meanwhile")
        if writes.links:
            rows = sorted(writes.links, key=lambda row: (str(row[0].anchor), str(row[0].other or "")))
            # The earliest event time wins, whatever order links arrive in; the earliest recording too.
            curs.execute(SQL(
                "INSERT INTO {} AS l (anchor, other, occurred_at, event_id, recorded_at) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::timestamptz[]) "
                "ON CONFLICT (anchor, other) DO UPDATE SET "
                "occurred_at = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.event_id) < (l.occurred_at, l.event_id) "
                "THEN EXCLUDED.occurred_at ELSE l.occurred_at END, "
                "event_id = CASE WHEN (EXCLUDED.occurred_at, EXCLUDED.event_id) < (l.occurred_at, l.event_id) "
                "THEN EXCLUDED.event_id ELSE l.event_id END, "
                "recorded_at = LEAST(l.recorded_at, EXCLUDED.recorded_at)").format(self.links),
                ([str(link.anchor) for link, _ in rows], [str(link.other) if link.other else ALONE for link, _ in rows],
                 [link.occurred_at for link, _ in rows], [link.event_id for link, _ in rows], [at for _, at in rows]))
        for separation, reason in writes.separations_added:
            curs.execute(SQL("INSERT INTO {} (a, b, reason) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
                             ).format(self.separations), (str(separation.a), str(separation.b), reason))
        if writes.refusals:
            rows = sorted(writes.refusals, key=lambda r: (str(r.link.anchor), str(r.link.other)))
            curs.execute(SQL("INSERT INTO {} (anchor, other, why, event_id, occurred_at) "
                             "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) "
                             "ON CONFLICT (anchor, other) DO NOTHING").format(self.refusals),
                         ([str(r.link.anchor) for r in rows], [str(r.link.other) for r in rows], [r.reason for r in rows],
                          [r.link.event_id for r in rows], [r.link.occurred_at for r in rows]))
        for separation in writes.separations_lifted:
            curs.execute(SQL("DELETE FROM {} WHERE a = %s AND b = %s").format(self.separations),
                         (str(separation.a), str(separation.b)))

    # -- answers for the API and the CLI --------------------------------------------------------
    def customer_of(self, conn: Any, identifiers: Sequence[Id]) -> dict[Id, str]:
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("SELECT identifier, customer_id FROM {} WHERE identifier = ANY(%s)").format(self.identifiers),
                         ([str(x) for x in identifiers],))
            return {parse_identifier(t): c for t, c in curs.fetchall()}

    def redirect(self, conn: Any, customer_id: str) -> str | None:
        """Where a customer merged away now lives (following merges of merges), or None."""
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("WITH RECURSIVE hop(id, depth) AS (SELECT merged_into, 1 FROM {0} WHERE customer_id = %s "
                             "AND merged_into IS NOT NULL UNION ALL SELECT c.merged_into, h.depth + 1 FROM hop h "
                             "JOIN {0} c ON c.customer_id = h.id WHERE c.merged_into IS NOT NULL AND h.depth < 100) "
                             "SELECT id FROM hop ORDER BY depth DESC LIMIT 1").format(self.customers), (customer_id,))
            row = curs.fetchone()
            return row[0] if row else None

    def members(self, conn: Any, customer_id: str) -> list[tuple[Id, UUID]]:
        """A customer's identifiers now, each with its stream."""
        with conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SQL("SELECT identifier, stream FROM {} WHERE customer_id = %s").format(self.identifiers),
                         (customer_id,))
            return [(parse_identifier(t), s) for t, s in curs.fetchall()]
