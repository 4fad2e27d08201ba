"""Who may do what (issue 15): API keys with roles, stored hashed, and the access log of auditors and admins.

A key is `rk_<key id>_<secret>`: the key id (public, 12 characters) finds the row, the secret
(256 random bits) is checked against its SHA-256. A plain hash is enough for a secret this long: slow
password hashes defend guessable passwords, and would cost every request milliseconds. The secret is
shown once, when the key is made; the database never holds it.

The access log is append-only for Rapport: its own database role holds no UPDATE, DELETE or TRUNCATE
on the table (revoked from the owner itself) and a trigger refuses them anyway. A superuser can still
change it: ship it elsewhere too if you need more (README, Security).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

API_KEYS = "rapport_api_keys"
ACCESS_LOG = "rapport_access_log"


class Role(str, enum.Enum):
    """What a key may do. `admin` may do everything."""

    producer = "producer"  # POST /events
    analyst = "analyst"  # read models, dashboard, metrics
    auditor = "auditor"  # audit routes, as_of / known_at, exports
    admin = "admin"  # everything, including merges, erasure and key management


ROLE_HELP = {
    Role.producer: "publish events (POST /events)",
    Role.analyst: "read the read models, the dashboard and the metrics",
    Role.auditor: "audit routes, point-in-time views (as_of, known_at) and exports; each request logged",
    Role.admin: "everything, including merges, erasure and key management; each request logged",
}
LOGGED_ROLES = frozenset({Role.auditor, Role.admin})

KEY_PATTERN = re.compile(r"rk_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})")
_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS {API_KEYS} (
    key_id text PRIMARY KEY,
    name text NOT NULL,
    roles text[] NOT NULL,
    secret_sha256 bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE TABLE IF NOT EXISTS {ACCESS_LOG} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    key_id text NOT NULL,
    key_name text NOT NULL,
    roles text[] NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    query text NOT NULL
);
CREATE OR REPLACE FUNCTION rapport_access_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{ACCESS_LOG} is append-only: its rows cannot be changed or deleted';
END $$;
DROP TRIGGER IF EXISTS append_only ON {ACCESS_LOG};
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {ACCESS_LOG}
    FOR EACH ROW EXECUTE FUNCTION rapport_access_log_is_append_only();
DROP TRIGGER IF EXISTS append_only_truncate ON {ACCESS_LOG};
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON {ACCESS_LOG}
    FOR EACH STATEMENT EXECUTE FUNCTION rapport_access_log_is_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON {ACCESS_LOG} FROM CURRENT_USER;
"""


class KeyRequestError(ValueError):
    """A key request that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never its secret."""

    key_id: str
    name: str
    roles: tuple[Role, ...]
    created_at: datetime
    revoked_at: datetime | None

    def may(self, needed: Iterable[Role]) -> bool:
        return Role.admin in self.roles or any(role in self.roles for role in needed)

    @property
    def logged(self) -> bool:
        return any(role in LOGGED_ROLES for role in self.roles)

    def as_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "name": self.name, "roles": [r.value for r in self.roles],
                "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
                "revoked_at": self.revoked_at.isoformat().replace("+00:00", "Z") if self.revoked_at else None}


def create_tables(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_SQL)  # type: ignore[arg-type]  # constant text: names from this module


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_roles(names: Iterable[str]) -> tuple[Role, ...]:
    roles: list[Role] = []
    for name in names:
        try:
            role = Role(name.strip().lower())
        except ValueError:
            raise KeyRequestError(f"no role {name!r}; the roles are: {', '.join(r.value for r in Role)}") from None
        if role not in roles:
            roles.append(role)
    if not roles:
        raise KeyRequestError(f"a key needs at least one role: {', '.join(r.value for r in Role)}")
    return tuple(roles)


def create_key(conn: psycopg.Connection[Any], name: str, roles: Iterable[str]) -> tuple[ApiKey, str]:
    """A new key and its full text `rk_<id>_<secret>`, the only time it is known."""
    name = name.strip()
    if not name or len(name) > 200:
        raise KeyRequestError("a key needs a name of 1–200 characters saying who or what uses it (e.g. 'pbx-01')")
    parsed = parse_roles(roles)
    key_id = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(12))
    secret = secrets.token_urlsafe(32)  # 43 characters, 256 bits
    row = conn.execute(
        f"INSERT INTO {API_KEYS} (key_id, name, roles, secret_sha256) VALUES (%s, %s, %s, %s) "  # noqa: S608 - names from constants
        "RETURNING key_id, name, roles, created_at, revoked_at",
        (key_id, name, [r.value for r in parsed], secret_digest(secret)),
    ).fetchone()
    assert row is not None
    return _key(row), f"rk_{key_id}_{secret}"


def list_keys(conn: psycopg.Connection[Any], include_revoked: bool = True) -> list[ApiKey]:
    rows = conn.execute(
        f"SELECT key_id, name, roles, created_at, revoked_at FROM {API_KEYS} "  # noqa: S608 - names from constants
        "WHERE %s OR revoked_at IS NULL ORDER BY created_at, key_id", (include_revoked,)).fetchall()
    return [_key(row) for row in rows]


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> ApiKey:
    """Revoke a key (by its id, or its full text); revoking twice keeps the first time."""
    match = KEY_PATTERN.fullmatch(key_id)
    key_id = match.group(1) if match else key_id
    row = conn.execute(
        f"UPDATE {API_KEYS} SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s "  # noqa: S608 - names from constants
        "RETURNING key_id, name, roles, created_at, revoked_at", (key_id,)).fetchone()
    if row is None:
        raise KeyRequestError(f"no key {key_id!r}; `rapport keys list` shows the keys")
    return _key(row)


KEY_LOOKUP_SQL = f"SELECT key_id, name, roles, created_at, revoked_at, secret_sha256 FROM {API_KEYS} WHERE key_id = %s"  # noqa: S608 - names from constants


def split_key(text: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.fullmatch(text.strip())
    return (match.group(1), match.group(2)) if match else None


def key_from_row(row: Any, secret: str) -> ApiKey | None:
    """The key, if `secret` is its secret and it is not revoked."""
    if row is None:
        return None
    values = row if isinstance(row, dict) else dict(zip(("key_id", "name", "roles", "created_at", "revoked_at",
                                                            "secret_sha256"), row, strict=True))
    if values["revoked_at"] is not None or not hmac.compare_digest(bytes(values["secret_sha256"]), secret_digest(secret)):
        return None
    return _key(values)


ACCESS_LOG_SQL = (f"INSERT INTO {ACCESS_LOG} (key_id, key_name, roles, method, path, query) "  # noqa: S608 - names from constants
                  "VALUES (%s, %s, %s, %s, %s, %s)")


def access_log_row(key: ApiKey, method: str, path: str, query: str) -> tuple[Any, ...]:
    return (key.key_id, key.name, [r.value for r in key.roles], method, path, query)


def read_access_log(conn: psycopg.Connection[Any], limit: int = 100) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            f"SELECT id, at, key_id, key_name, roles, method, path, query FROM {ACCESS_LOG} ORDER BY id DESC LIMIT %s",  # noqa: S608 - names from constants
            (limit,)).fetchall()


def _key(row: Any) -> ApiKey:
    values = row if isinstance(row, dict) else dict(zip(("key_id", "name", "roles", "created_at", "revoked_at"),
                                                        row, strict=False))
    return ApiKey(values["key_id"], values["name"], tuple(Role(r) for r in values["roles"]),
                  values["created_at"], values["revoked_at"])
