"""The hash chain over each customer's stored events: tamper evidence (contract §5).

Each stored event's `hash` is SHA-256 over the previous event's hash in the same stream (32 zero
bytes before the first) and the event's *stored bytes*: its stream id, its position (version) in
the stream, its topic (the event class) and its state, exactly as PostgreSQL holds them. So:
- an altered row no longer matches its hash;
- a removed row leaves a gap in the positions, and the next row's hash no longer matches;
- two swapped rows no longer match (the position is hashed);
- a row inserted with a made-up hash breaks the chain where it stands.
What the chain alone cannot show is a writer with database access who rewrites a stream's whole
tail with fresh hashes, or deletes its last events: the chain heads published by
`rapport audit heads` (kept by the auditor, outside the database) close that gap.

Ingest computes the chain in Python (`link`); `audit verify` recomputes it in PostgreSQL
(`EXPECTED_HASH_SQL`, over the table in stream order with a window), an independent second
implementation of the same rule. A test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import sha256
from uuid import UUID

GENESIS = bytes(32)  # the "previous hash" of a stream's first event

HASH_COLUMN = "hash"


def link(previous: bytes, originator_id: UUID, originator_version: int, topic: str, state: bytes) -> bytes:
    """The hash of one stored event after `previous` (the stream's last hash, or GENESIS).
    Every part has a fixed length or a length prefix, so no two events hash the same bytes."""
    topic_bytes = topic.encode()
    return sha256(
        previous + originator_id.bytes + originator_version.to_bytes(8, "big", signed=True)
        + len(topic_bytes).to_bytes(4, "big") + topic_bytes + state
    ).digest()


# The same rule in SQL, for a row of the events table whose stream's previous stored hash is
# `previous` (a bytea expression): uuid_send, int8send and int4send give the big-endian bytes.
EXPECTED_HASH_SQL = (
    "sha256(coalesce({previous}, '\\x" + "00" * 32 + "'::bytea) || uuid_send(originator_id) "
    "|| int8send(originator_version) || int4send(octet_length(convert_to(topic, 'UTF8'))) "
    "|| convert_to(topic, 'UTF8') || state)"
)


def heads_digest(heads: Iterable[tuple[UUID, int, bytes]]) -> str:
    """One SHA-256 over every chain head, (stream id, position, hash) in stream id order: a value an
    auditor can keep (or publish) to prove later that no history recorded by then was rewritten."""
    digest = sha256()
    for originator_id, position, head in heads:
        digest.update(originator_id.bytes + position.to_bytes(8, "big", signed=True) + head)
    return digest.hexdigest()
