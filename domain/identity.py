"""Identity resolution: which identifiers are one customer (issue 14). Pure rules, no I/O.

**Identifiers.** An event's `customer` names the person by up to three identifiers: `id:` (the
producer's account id, as written), `email:` (trimmed, lower-cased) and `phone:` (E.164, read by
Google's `phonenumbers` with a default region for numbers written without a country code). The
event keeps what was written; only matching uses the normal forms. An email or phone that cannot
be read is a broken rule of the event (`UnreadableIdentifier`, dead-lettered with the reason).

**Links.** An event links its *anchor* (its first identifier: the id, else the email, else the
phone, the contract's customer key) to each of its other identifiers, at its time
`(occurred_at, event_id)`. Only the earliest time of each link matters.

**A customer** is a set of identifiers joined by links (`resolve`). The links are taken in event
time (`occurred_at`, then `event_id`, then the identifiers), never in arrival order, so every
arrival order of the same events gives the same customers. A link is refused, and the refusal
kept, when it would put two different `id:`s in one customer (an email shared by a household's
two accounts stays with the account that showed it first in event time) or when an operator split
the two sides apart (`Separation`, made by an unmerge; lifted by an operator again).

**Kept as keyed hashes.** Emails and phones are personal data (issue 15): what identity resolution
stores and compares is not their normal form but a keyed hash of it (`for_matching`: HMAC-SHA256
under a secret kept outside the database, 128 bits, written `email:#<32 hex>`), so that the
identity tables and events hold no email or phone, and a forgotten customer's cannot be recovered
from them. Account ids (`id:`) are the business's own keys and stay as written.

**The customer's id** (`canonical_id`) is its `id:` if it has one; else an id generated from its
earliest identifier (`generated_id`, `rc-` and 20 hex digits of a UUID 5): stable, the same
whatever the arrival order, and not the email or phone itself. When two customers merge, the
survivor is the one whose id the merged customer takes: the one with an `id:`, else the one whose
earliest identifier is earlier in event time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, NamedTuple
from uuid import UUID, uuid5

import phonenumbers

Kind = Literal["id", "email", "phone"]
KINDS: tuple[Kind, ...] = ("id", "email", "phone")  # the anchor is the first present, as the contract's key
# Fixed forever: generated customer ids are derived from it.
GENERATED_NAMESPACE = UUID("0b6f6c1e-3f0a-4d55-9a43-6a0f2d8e7c21")
GENERATED_PREFIX = "rc-"
DEFAULT_REGION = "US"
_SPACE = re.compile(r"\s")


class UnreadableIdentifier(ValueError):
    """An email or phone that cannot be read; `reason` names the field and the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Identifier(NamedTuple):
    """`kind` (id, email, phone) and `value` in normal form. A tuple: ingest hashes millions of them."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, text: str, region: str = DEFAULT_REGION) -> Identifier:
        """`email:ana@example.com`, `phone:+94771234567` or `id:crm-42`, normalised."""
        kind, sep, value = text.partition(":")
        if not sep or kind not in KINDS:
            raise UnreadableIdentifier(f"identifier {text!r}: write it as id:VALUE, email:VALUE or phone:VALUE")
        return identifier(kind, value, region)


def identifier(kind: str, raw: str, region: str = DEFAULT_REGION) -> Identifier:
    """The normal form of one identifier as written in an event's `customer.<kind>`."""
    if kind == "email":
        return Identifier("email", normal_email(raw))
    if kind == "phone":
        return Identifier("phone", normal_phone(raw, region))
    if kind == "id":
        return Identifier("id", raw)
    raise ValueError(f"unknown identifier kind {kind!r}")


def normal_email(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or "." not in domain.strip(".") or _SPACE.search(email):
        raise UnreadableIdentifier(
            f"customer.email {raw!r} cannot be read as an email address: write it as name@domain.tld")
    return email


@lru_cache(maxsize=65536)  # parsing costs ~25 µs; a customer's events repeat its number
def normal_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as error:
        raise UnreadableIdentifier(
            f"customer.phone {raw!r} cannot be read as a phone number ({error._msg}): write it in "
            f"international form, e.g. +94771234567, or as a number of the default region {region}") from None
    if not phonenumbers.is_possible_number(number):
        raise UnreadableIdentifier(
            f"customer.phone {raw!r} is not a possible phone number in region "
            f"{phonenumbers.region_code_for_number(number) or region} (wrong length): write it in "
            "international form, e.g. +94771234567")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


HASHED_KINDS = frozenset({"email", "phone"})
HASH_MARK = "#"


def for_matching(x: Identifier, key: bytes | None) -> Identifier:
    """The form identity resolution stores and compares: an email or phone as a keyed hash of its normal
    form (`email:#<32 hex>`); an account id as it is. Without a key (rules checked on their own, in unit
    tests), the normal form itself."""
    if key is None or x.kind not in HASHED_KINDS or x.value.startswith(HASH_MARK):
        return x
    return Identifier(x.kind, HASH_MARK + hmac.new(key, str(x).encode(), hashlib.sha256).hexdigest()[:32])


def named_by(written: Iterable[tuple[str, Any]], region: str, key: bytes | None) -> dict[str, str]:
    """Each email or phone as written (`(kind, value)` pairs), as identity keeps it (`kind:#hash`) → its normal
    form (`kind:value`): how views and operators' answers name what identity stores. Unreadable ones are left out."""
    names: dict[str, str] = {}
    for kind, raw in written:
        if kind in HASHED_KINDS and isinstance(raw, str) and raw:
            try:
                plain = identifier(kind, raw, region)
            except UnreadableIdentifier:
                continue
            names[str(for_matching(plain, key))] = str(plain)
    return names


def key_fingerprint(key: bytes) -> str:
    """Names a key without revealing it: which key a database's identifiers were hashed under."""
    return hmac.new(key, b"rapport identity key fingerprint", hashlib.sha256).hexdigest()[:16]


def is_hashed(x: Identifier) -> bool:
    return x.value.startswith(HASH_MARK)


def in_kind_order(identifiers: Iterable[Identifier]) -> list[Identifier]:
    """Ids, then emails, then phones, each sorted: how a customer's identifiers are listed."""
    return sorted(identifiers, key=lambda x: (KINDS.index(x.kind) if x.kind in KINDS else len(KINDS), x.value))


def identifiers_of(customer: Mapping[str, Any], region: str = DEFAULT_REGION, key: bytes | None = None
                   ) -> tuple[Identifier, ...]:
    """The event's identifiers as identity resolution matches them (normalised, emails and phones as keyed
    hashes under `key`), the anchor first (raises `UnreadableIdentifier`)."""
    return _identifiers(customer.get("id"), customer.get("email"), customer.get("phone"), region, key)


@lru_cache(maxsize=65536)  # a customer's events repeat its identifiers: read once
def _identifiers(account: Any, email: Any, phone: Any, region: str, key: bytes | None) -> tuple[Identifier, ...]:
    return tuple(for_matching(identifier(kind, value, region), key)
                 for kind, value in (("id", account), ("email", email), ("phone", phone)) if isinstance(value, str) and value)


def generated_id(earliest: Identifier) -> str:
    """The id of a customer without an `id:`, from its earliest identifier."""
    return GENERATED_PREFIX + uuid5(GENERATED_NAMESPACE, str(earliest)).hex[:20]


# -- links and their resolution ------------------------------------------------------------------
Moment = tuple[datetime, str]  # (occurred_at, event_id): event time, ties by event_id
_NONE = Identifier("", "")  # sorts before every identifier


@dataclass(frozen=True, slots=True)
class Link:
    """What one event says: its anchor goes with `other` (None: the anchor was seen, alone or not)."""

    occurred_at: datetime
    event_id: str
    anchor: Identifier
    other: Identifier | None = None

    @property
    def moment(self) -> Moment:
        return self.occurred_at, self.event_id

    @property
    def order(self) -> tuple[datetime, str, Identifier, Identifier]:
        """Event time, ties by event_id, then the identifiers: the order links are taken in."""
        return self.occurred_at, self.event_id, self.anchor, self.other or _NONE


def links_of(identifiers: Sequence[Identifier], occurred_at: datetime, event_id: str) -> list[Link]:
    """The links one event makes: its anchor seen, and joined to each other identifier."""
    anchor = identifiers[0]
    return [Link(occurred_at, event_id, anchor)] + [Link(occurred_at, event_id, anchor, o) for o in identifiers[1:]]


@dataclass(frozen=True, order=True, slots=True)
class Separation:
    """An operator's decision: `a` and `b` are never one customer (an unmerge), until lifted."""

    a: Identifier
    b: Identifier

    @classmethod
    def of(cls, x: Identifier, y: Identifier) -> Separation:
        return cls(*sorted((x, y)))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A link not made, and why: `owner` kept `link.other`; the anchor's customer asked for it."""

    link: Link
    reason: Literal["two ids", "separated"]


@dataclass
class Resolution:
    """Customers as sets of identifiers: `customer_of` each identifier, with the refused links."""

    customer_of: dict[Identifier, str]
    members: dict[str, list[Identifier]]
    first_seen: dict[Identifier, Moment]
    refusals: list[Refusal] = field(default_factory=list)

    def refusals_of(self, customer_id: str) -> list[Refusal]:
        """The links this customer's events asked for and did not get."""
        return [r for r in self.refusals if self.customer_of[r.link.anchor] == customer_id]


def resolve(links: Iterable[Link], separations: Iterable[Separation] = ()) -> Resolution:
    """The customers these links make (see the module's rules): union-find in event time."""
    ordered = sorted(links, key=Link.order.fget)  # type: ignore[attr-defined]
    parent: dict[Identifier, Identifier] = {}
    account: dict[Identifier, Identifier | None] = {}  # root → its `id:` identifier
    sets: dict[Identifier, list[Identifier]] = {}  # root → members
    first_seen: dict[Identifier, Moment] = {}
    apart = [(s.a, s.b) for s in separations]
    refusals: list[Refusal] = []

    def find(x: Identifier) -> Identifier:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def add(x: Identifier, moment: Moment) -> None:
        if x not in parent:
            parent[x], sets[x], first_seen[x] = x, [x], moment
            account[x] = x if x.kind == "id" else None

    for link in ordered:
        add(link.anchor, link.moment)
        if link.other is None:
            continue
        add(link.other, link.moment)
        a, b = find(link.anchor), find(link.other)
        if a == b:
            continue
        if account[a] is not None and account[b] is not None:
            refusals.append(Refusal(link, "two ids"))
            continue
        if any({find(x), find(y)} == {a, b} for x, y in apart if x in parent and y in parent):
            refusals.append(Refusal(link, "separated"))
            continue
        if len(sets[a]) < len(sets[b]):
            a, b = b, a
        parent[b] = a
        sets[a].extend(sets.pop(b))
        joined = account.pop(b)
        account[a] = account[a] or joined

    customer_of: dict[Identifier, str] = {}
    members: dict[str, list[Identifier]] = {}
    for root, identifiers in sets.items():
        customer_id = canonical_id(identifiers, first_seen, account[root])
        members[customer_id] = in_kind_order(identifiers)
        for x in identifiers:
            customer_of[x] = customer_id
    return Resolution(customer_of, members, first_seen, refusals)


def canonical_id(identifiers: Iterable[Identifier], first_seen: Mapping[Identifier, Moment],
                 account: Identifier | None = None) -> str:
    """A customer's id: its `id:`, else the id generated from its earliest identifier."""
    if account is None:
        account = next((x for x in identifiers if x.kind == "id"), None)
        if account is None:
            return generated_id(min(identifiers, key=lambda x: (first_seen[x], x)))
    return account.value


# -- what a change of links does to stored customers ---------------------------------------------
@dataclass(frozen=True)
class Move:
    """Identifiers that leave one customer for another (`cause`: the earliest new link that took
    them there; None for an operator's decision)."""

    identifiers: tuple[Identifier, ...]
    source: str
    target: str
    cause: Link | None


@dataclass
class Decision:
    """What to store after links or separations changed, for every identifier of the closure: the
    owner of each new or moved identifier, the moves between existing customers, the customers
    left with nothing (merged into another: their id now redirects), and the new refusals."""

    owners: dict[Identifier, str]
    new: list[Identifier]
    moves: list[Move]
    merged: dict[str, str]
    created: set[str]
    changed: set[str]
    refusals: list[Refusal]

    @property
    def changes_anything(self) -> bool:
        return bool(self.owners or self.refusals)


def decide(owners_before: Mapping[Identifier, str], links_before: Sequence[Link], links_after: Sequence[Link],
           separations_before: Sequence[Separation] = (), separations_after: Sequence[Separation] | None = None,
           new_links: Sequence[Link] = ()) -> Decision:
    """The change from the stored customers (`owners_before`, resolved from `links_before` and
    `separations_before`) to the resolution of `links_after` with `separations_after`. The links
    are those of a closed set of identifiers: every link touching any of them."""
    after_separations = separations_before if separations_after is None else separations_after
    before, after = resolve(links_before, separations_before), resolve(links_after, after_separations)
    owners: dict[Identifier, str] = {}
    new: list[Identifier] = []
    moved: dict[tuple[str, str], list[Identifier]] = {}
    for x, customer_id in after.customer_of.items():
        old = owners_before.get(x)
        if old == customer_id:
            continue
        owners[x] = customer_id
        if old is None:
            new.append(x)
        else:
            moved.setdefault((old, customer_id), []).append(x)
    existing = set(owners_before.values())
    created = {owners[x] for x in new if owners[x] not in existing} | {t for (_, t) in moved if t not in existing}
    moves = [Move(tuple(in_kind_order(xs)), source, target, _cause(new_links, after, target))
             for (source, target), xs in sorted(moved.items())]
    merged = {}
    for source in {m.source for m in moves} - set(after.members):
        # Nothing of it is left (a customer with an `id:` never vanishes: its id stays with it).
        # It redirects to the customer its earliest identifier went to, the one its id was made from.
        members = [x for x, old in owners_before.items() if old == source]
        earliest = min(members, key=lambda x: (before.first_seen[x], x))
        merged[source] = after.customer_of[earliest]
    # Every existing customer whose identifiers move, gain one, or gain a link (made or refused):
    # a decision made meanwhile from its state, by another process, must then be made again.
    touched = {owners_before[x] for link in new_links for x in (link.anchor, link.other) if x in owners_before}
    changed = {m.source for m in moves} | {m.target for m in moves if m.target in existing} | {
        owners[x] for x in new if owners[x] in existing} | touched
    # A refusal is of a pair: the same pair refused again by a later event is not news.
    old_refusals = {(r.link.anchor, r.link.other) for r in before.refusals}
    refusals = [r for r in after.refusals if (r.link.anchor, r.link.other) not in old_refusals]
    return Decision(owners, in_kind_order(new), moves, merged, created, changed, refusals)


def _cause(new_links: Sequence[Link], after: Resolution, target: str) -> Link | None:
    joined = [link for link in new_links if after.customer_of.get(link.anchor) == target]
    return min(joined, key=Link.order.fget, default=None)  # type: ignore[attr-defined]
