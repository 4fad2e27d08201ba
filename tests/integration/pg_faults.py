"""Real PostgreSQL faults for integration tests, and the small helpers the tests that use them share.

- `restart_postgres`: the cluster serving the test database restarted in fast mode, as
  `scripts/stack` manages it (`pg_ctlcluster VERSION NAME restart -m fast`, as root).
- `database_away`: only this test session's database refuses connections, and its open
  connections are cut (`ALLOW_CONNECTIONS false` + `pg_terminate_backend`), for as long as the
  `with` block lasts; nothing else on the server is touched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from services.settings import Settings
from tests.conftest import ROOT, settings_env


def postgres_cluster(port: int | str) -> tuple[str, str]:
    """(version, name) of the Debian cluster listening on `port`, as `scripts/stack` picks it."""
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True, timeout=30).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == str(port):
            return version, name
    raise AssertionError(f"no PostgreSQL cluster on port {port} in `pg_lsclusters`:\n{listing}")


def restart_postgres(settings: Settings) -> float:
    """Restart the cluster of the test database in fast mode (connections are cut); the seconds it took.
    pg_ctlcluster waits until the server accepts connections again."""
    version, name = postgres_cluster(settings.database["port"])
    command = ["pg_ctlcluster", version, name, "restart", "-m", "fast"]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}): {result.stdout}{result.stderr}"
    return time.monotonic() - started


def admin_conninfo(settings: Settings) -> str:
    """A connection to the server's `postgres` database as the test's role: not the one taken away."""
    return psycopg.conninfo.make_conninfo(**{**settings.database, "dbname": "postgres"})


@contextmanager
def database_away(settings: Settings) -> Iterator[None]:
    """The test database refuses new connections and its open ones are cut, until the block ends."""
    name = settings.database["dbname"]
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()", (name,),
            )
            yield
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def answers(query: Callable[[], Any]) -> Any:
    """`query()`, or None while the database is away (for `wait_for` conditions)."""
    try:
        return query()
    except (psycopg.OperationalError, psycopg.InterfaceError):
        return None
    except Exception as error:  # eventsourcing wraps psycopg's errors in its own classes
        from eventsourcing.persistence import InterfaceError, OperationalError

        if isinstance(error, (OperationalError, InterfaceError)):
            return None
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 15, key: str | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, body: parsed JSON, else the text), sending the API key `key` if given."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - localhost
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def start_rapport(command: str, settings: Settings, log_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    """`rapport COMMAND` as a child process with the test's settings; its output goes to a file."""
    log = (log_dir / f"{command}.log").open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "services.cli", command], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=settings_env(settings, **env))
    finally:
        log.close()  # the child has its own copy


def log_tail(log_dir: Path, command: str, lines: int = 40) -> str:
    path = log_dir / f"{command}.log"
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- last {lines} lines of `rapport {command}` ---\n" + "\n".join(text.splitlines()[-lines:])
