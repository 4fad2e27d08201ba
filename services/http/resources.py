"""What the routes share: settings, a pool of read connections, a Kafka producer made on first use."""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from consumers.ingest import kafka_producer
from services.bootstrap import ServiceUnavailable, check_kafka, ensure_schema, read_pool
from services.settings import Settings

log = logging.getLogger("rapport.api")


class Resources:
    """What the routes share: settings, a read pool, a Kafka producer made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_schema(settings)  # queries never meet a missing table, even on a new database
        self.pool: ConnectionPool = read_pool(settings)
        self._producer: Any = None
        self._kafka_checked: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()
        self._checking_pool = False

    @property
    def producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = kafka_producer(self.settings.kafka_servers, max_block_ms=5000,
                                                bootstrap_timeout_ms=5000, request_timeout_ms=10000)
            return self._producer

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

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        self.pool.close()


def resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


# Module level: route annotations are strings (PEP 563) that FastAPI resolves in this module.
Res = Annotated[Resources, Depends(resources)]
