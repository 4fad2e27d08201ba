"""What the routes share: settings, a pool of read connections, a Kafka producer and the event store
(for the point-in-time views) made on first use."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from consumers.ingest import kafka_producer
from eventstore.store import InteractionLog
from projections.point_in_time import PointInTimeViews
from projections.readmodel import ModelSettings
from services.bootstrap import ServiceUnavailable, check_kafka, conninfo, ensure_schema, event_store_env, read_pool, readable_now
from services.settings import Settings

log = logging.getLogger("rapport.api")


class Resources:
    """What the routes share: settings, a read pool, a Kafka producer and the event store made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_schema(settings)  # queries never meet a missing table, even on a new database
        self.pool: ConnectionPool = read_pool(settings, max_size=settings.api_pool_size)
        # For the hot path of GET /customers/{id} (services/http/lookup.py), opened by `open_async`.
        self.async_pool: AsyncConnectionPool | None = None
        self._producer: Any = None
        self._store: InteractionLog | None = None
        self._point_in_time: PointInTimeViews | None = None
        self._kafka_checked: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()
        self._checking_pool = False
        self._async_check: asyncio.Task[None] | None = None

    @property
    def producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = kafka_producer(self.settings.kafka_client_config, max_block_ms=5000,
                                                bootstrap_timeout_ms=5000, request_timeout_ms=10000)
            return self._producer

    @property
    def store(self) -> InteractionLog:
        """The event store, for point-in-time views and identity corrections. Opened on first use: an
        API process that is never asked keeps no connections to it. Its tables exist
        (`ensure_schema`), so nothing is created here, in a request."""
        with self._lock:
            if self._store is None:
                self._store = InteractionLog(env={**event_store_env(self.settings), "CREATE_TABLE": "n"})
            return self._store

    @property
    def point_in_time(self) -> PointInTimeViews:
        """One customer's views at a point in time, from the event store (contract §5)."""
        store = self.store
        with self._lock:
            if self._point_in_time is None:
                self._point_in_time = PointInTimeViews(store, ModelSettings(thresholds=self.settings.thresholds))
            return self._point_in_time

    def kafka_status(self) -> str:
        """'ok', or what is wrong: a real metadata request, cached for 2 s."""
        checked_at, status = self._kafka_checked
        if time.monotonic() - checked_at < 2.0:
            return status
        try:
            check_kafka(self.settings, [self.settings.topic])
            status = "ok"
        except ServiceUnavailable as error:
            status = f"unavailable: {str(error).splitlines()[0]}"
        self._kafka_checked = (time.monotonic(), status)
        return status

    def check_connections_soon(self) -> None:
        """After a database error: test every idle connection of the pool now, in the background.
        A restarted server closed them all; each would otherwise be found broken by a request of its
        own (the pool checks one per hand-out), and several requests in a row would answer 503."""
        with self._lock:
            if self._checking_pool:
                return
            self._checking_pool = True

        def check() -> None:
            try:
                self.pool.check()
            except Exception:  # noqa: BLE001 - the pool keeps trying on its own; nothing to add
                log.debug("checking the read pool failed", exc_info=True)
            finally:
                self._checking_pool = False

        threading.Thread(target=check, name="read-pool-check", daemon=True).start()
        if self.async_pool is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._async_check = loop.create_task(self._check_async_pool())

    async def _check_async_pool(self) -> None:
        try:
            await self.async_pool.check()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the pool keeps trying on its own; nothing to add
            log.debug("checking the asyncio read pool failed", exc_info=True)

    async def open_async(self) -> None:
        """Open the asyncio read pool in the server's event loop: the same connections as `pool`
        (autocommit, dict rows, checked before use, 503 after `timeout`)."""
        self.async_pool = AsyncConnectionPool(
            conninfo(self.settings), min_size=1, max_size=self.settings.api_pool_size, open=False,
            timeout=self.pool.timeout, check=check_idle_async_connection,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
        )
        await self.async_pool.open()

    async def close_async(self) -> None:
        if self.async_pool is not None:
            await self.async_pool.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        if self._store is not None:
            self._store.close()
        self.pool.close()


async def check_idle_async_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """`services.bootstrap.check_idle_connection` for the asyncio pool: no round trip when the
    idle connection has nothing to read; the library's check otherwise."""
    if not conn.closed and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        if not readable_now(conn.fileno()):
            return
    await AsyncConnectionPool.check_connection(conn)


def resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


# Module level: route annotations are strings (PEP 563) that FastAPI resolves in this module.
Res = Annotated[Resources, Depends(resources)]
