"""What every benchmark needs around its measurement: messages, throwaway databases, topics and
consumer groups, clean-up that never hides the result, and a `rapport api` child process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from kafka.admin import KafkaAdminClient
from psycopg import sql

from services import bootstrap
from services.settings import Settings
from services.topics import delete_topics

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6  # of every throwaway topic: the ingest processes share them


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def drop_database(admin_settings: Settings, dbname: str, attempts: int = 20) -> None:
    """DROP DATABASE, ending our own leftover sessions (FORCE). FORCE refuses when an autovacuum
    worker (not our role) is in the database; a plain DROP cancels those, so alternate and retry."""
    name = sql.Identifier(dbname)
    with psycopg.connect(bootstrap.conninfo(admin_settings), autocommit=True, connect_timeout=5) as conn:
        for attempt in range(attempts):
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)" if attempt % 2 == 0
                                     else "DROP DATABASE IF EXISTS {}").format(name))
                return
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)


def create_database(admin_settings: Settings, dbname: str) -> None:
    drop_database(admin_settings, dbname)
    with psycopg.connect(bootstrap.conninfo(admin_settings), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def quietly(what: str, action: Callable[[], Any]) -> None:
    """Clean-up goes on whatever fails; the failure is said, not raised."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - clean-up goes on
        say(f"clean-up: {what} failed: {type(error).__name__}: {error}")


def delete_group(servers: list[str], group: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="rapport-bench")
    try:
        admin.delete_groups([group])
    finally:
        admin.close()


KEY_VARIABLE = "RAPPORT_BENCH_API_KEY"  # in the environment: load generators in child processes (and wrk) see it


def use_bench_key(database_url: str) -> str:
    """A key (analyst, auditor) for the benchmark's requests, made in that database and put in this
    process's environment, which child processes inherit; `key_headers` sends it."""
    from services import access

    bootstrap.ensure_access_tables(Settings(database_url=database_url))
    with psycopg.connect(bootstrap.conninfo(Settings(database_url=database_url)), autocommit=True) as conn:
        key = access.create_key(conn, "benchmark", ["analyst", "auditor"])[1]
    os.environ[KEY_VARIABLE] = key
    return key


def key_headers() -> dict[str, str]:
    key = os.environ.get(KEY_VARIABLE)
    return {"X-API-Key": key} if key else {}


def http_get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path on a new connection, with the benchmark's key: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=key_headers())
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def json_line(result: Mapping[str, Any], digits: int = 3) -> str:
    """A benchmark's last line: its figures as one JSON object, floats rounded."""
    return json.dumps({k: (round(v, digits) if isinstance(v, float) else v) for k, v in result.items()})


def ignore_signals() -> None:
    """Let the clean-up finish: a second Ctrl-C or SIGTERM must not leave throwaways behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def remove_throwaways(admin: Settings, servers: list[str], topics: Iterable[str] = (), groups: Iterable[str] = (),
                      databases: Iterable[str] = ()) -> None:
    """Delete a benchmark's topics and consumer groups and drop its databases, saying what failed."""
    topics = list(topics)
    if topics:
        quietly("deleting the topics", lambda: delete_topics(servers, topics))
    for group in groups:
        quietly(f"deleting the consumer group {group}", lambda g=group: delete_group(servers, g))
    for name in databases:
        quietly(f"dropping database {name}", lambda d=name: drop_database(admin, d))


@contextmanager
def rapport_api(env: Mapping[str, str], port: int, log_path: Path, ready_path: str = "/health",
                stop_seconds: float = 20) -> Iterator[subprocess.Popen[bytes]]:
    """`rapport api` as a child process with `env` added to this one's, once `ready_path` answers
    200 on `port`; stopped with SIGTERM at the end. Its output goes to `log_path`, removed when
    all went well. Requests send a key made for the benchmark (`use_bench_key`)."""
    database_url = env.get("RAPPORT_DATABASE_URL")
    if database_url:
        use_bench_key(database_url)
    rapport = Path(sys.executable).with_name("rapport")
    command = [str(rapport), "api"] if rapport.exists() else [sys.executable, "-m", "services.cli", "api"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"rapport api exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if http_get(port, ready_path, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rapport api did not answer in 90 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield process
        log_path.unlink(missing_ok=True)  # kept when something went wrong
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
