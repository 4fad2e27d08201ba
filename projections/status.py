"""Where the read models stand: for `GET /projections`, `GET /metrics` and `rapport projections`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore import tables
from projections.runner import PARKED_TABLE, positions


def projection_status(conn: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per read model: position, the log's head, lag in events and in seconds (age of the oldest
    event not yet applied), events parked. One snapshot for all (`conn` gives dict rows)."""
    with conn.transaction(), conn.cursor() as curs:
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        at = positions(curs, names)
        curs.execute(f"SELECT COALESCE(MAX(notification_id), 0) AS head FROM {tables.EVENTS}")  # noqa: S608 - names from constants
        head = curs.fetchone()["head"]
        curs.execute(f"SELECT read_model, count(*) AS n FROM {PARKED_TABLE} GROUP BY 1")  # noqa: S608 - names from constants
        parked = {row["read_model"]: row["n"] for row in curs.fetchall()}
        result = []
        for name in names:
            lag_seconds = 0.0
            if at[name] < head:
                curs.execute(
                    f"SELECT extract(epoch FROM now() - {tables.RECORDED_AT_SQL}) AS age FROM {tables.EVENTS} "  # noqa: S608 - names from constants
                    "WHERE notification_id > %s ORDER BY notification_id LIMIT 1", (at[name],))
                row = curs.fetchone()
                lag_seconds = max(float(row["age"]), 0.0) if row else 0.0
            result.append({"name": name, "position": at[name], "head": head, "lag": head - at[name],
                           "lag_seconds": round(lag_seconds, 3),
                           "parked": parked.get(name, 0)})
        return result


def parked_events(conn: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """The events parked by these read models, oldest first, with the error and the event."""
    with conn.cursor() as curs:
        curs.execute(f"SELECT read_model, notification_id, originator_id, originator_version, topic, error, "  # noqa: S608 - names from constants
                     f"attempts, parked_at, convert_from(state, 'UTF8') AS event FROM {PARKED_TABLE} "
                     "WHERE read_model = ANY(%s) ORDER BY read_model, notification_id", (list(names),))
        return list(curs.fetchall())
