"""Benchmark: the HTTP API's lookups at size (issue 12, target 3).

Against `rapport api` (the real product, started here as a child process) on a database filled
by `bench.load_at_scale`:
  (a) GET /customers/{id} at a FIXED offered rate (default 1,000/s) over random existing ids;
  (b) saturation: `wrk` (a separate process; closed loop) with 32 connections over random ids,
      and the same wrk run against GET /health (the server and one pooled `SELECT 1`) as the
      baseline of the same run;
  (c) GET /satisfaction/trend (NPS by month, two years) and GET /lifecycle/stages at a fixed
      100/s each;
  (d) the customer with 100,000 events alone at the rate of (a);
  (e) the API's RSS (the process and its workers, summed) sampled every second throughout.
The fixed-rate loads come from a separate process (`_open_loop`, asyncio on keep-alive
connections): request i is due at start + i / rate and its latency runs from then, so a slow
server is charged for the requests it delayed (no coordinated omission). It prints a table and,
as its LAST line, one JSON object. It never fails on a time; it is not a test.

    .venv/bin/python -m bench.lookups --database rapport_scale [--quick] [--duration 30] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.common import http_get, key_headers, rapport_api, say, with_dbname  # noqa: E402
from services import bootstrap  # noqa: E402
from services.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
META_TABLE = "bench_scale_meta"
PAGE = 4096


# --- the API process and its memory -----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """The process and its descendants (by /proc/*/stat's ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 1048576
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_s(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def _db_pids(conninfo: str, dbname: str) -> list[int]:
    """The PostgreSQL backends serving the bench database (the API's pooled connections)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                           "AND pid <> pg_backend_pid()", (dbname,))]


class RssSampler:
    """The API's RSS (its process tree, summed) every second, in a thread, for the whole run."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, int]] = []  # (seconds, total MB, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)
        self._t0 = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            self.samples.append((time.monotonic() - self._t0, sum(_rss_mb(p) for p in pids), len(pids)))
            self._stop.wait(1.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, Any]:
        mbs = [s[1] for s in self.samples] or [float("nan")]
        return {"api_rss_mb_first": mbs[0], "api_rss_mb_last": mbs[-1], "api_rss_mb_max": max(mbs),
                "api_rss_samples": len(mbs), "api_processes": max((s[2] for s in self.samples), default=0),
                "api_rss_mb_series": [round(m) for m in mbs[:: max(1, len(mbs) // 30)]]}


@contextmanager
def api_process(database_url: str, port: int, workers: int | None) -> Iterator[subprocess.Popen[bytes]]:
    env = {"RAPPORT_DATABASE_URL": database_url, "RAPPORT_API_PORT": str(port),
           "RAPPORT_LOG_LEVEL": "WARNING"}  # no access log line per request
    if workers is not None:
        env["RAPPORT_API_WORKERS"] = str(workers)
    log_path = Path(tempfile.gettempdir()) / f"bench-lookups-api-{port}.log"
    with rapport_api(env, port, log_path) as process:
        yield process
    say(f"rapport api exited with {process.returncode}")


# --- fixed-rate load (a separate process) -----------------------------------------------------

def _open_loop(port: int, paths: list[str], rate: float, duration: float, connections: int, out: Any) -> None:
    """Child process: GET paths[i % len] due at start + i / rate, on up to `connections` keep-alive
    connections (a request waits for a free one; its latency still runs from when it was due)."""
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    n = max(1, round(rate * duration))
    results: list[tuple[float, float, int]] = []  # (latency from due time, service time, status)

    key_line = "".join(f"{name}: {value}\r\n" for name, value in key_headers().items())

    async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{key_line}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        return status

    async def main() -> float:
        idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(connections):
            idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
        start = clock() + 0.05
        tasks = []

        async def fire(i: int, due: float) -> None:
            conn = await idle.get()
            sent = clock()
            try:
                status = await one_request(*conn, paths[i % len(paths)])
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                status = 0
                conn = await asyncio.open_connection("127.0.0.1", port)
            done = clock()
            results.append((done - due, done - sent, status))
            idle.put_nowait(conn)

        for i in range(n):
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(i, due)))
        await asyncio.gather(*tasks)
        return clock() - start

    elapsed = asyncio.run(main())
    out.put({"results": results, "elapsed": elapsed})


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


DB: dict[str, str] = {}  # conninfo and dbname of the bench database, for the backends' CPU


def _cpu_now(api_pid: int) -> tuple[list[int], list[int], float, float]:
    pids, backends = _tree(api_pid), _db_pids(DB["conninfo"], DB["dbname"])
    return pids, backends, _cpu_s(pids), _cpu_s(backends)


def _cpu_since(start: tuple[list[int], list[int], float, float]) -> tuple[float, float]:
    """CPU seconds of the API's processes and of the database backends serving it since `start`
    (backends connected meanwhile are counted whole)."""
    pids, backends, api0, db0 = start
    new = [p for p in _db_pids(DB["conninfo"], DB["dbname"]) if p not in backends]
    return _cpu_s(pids) - api0, _cpu_s(backends) - db0 + _cpu_s(new)


def fixed_rate(port: int, api_pid: int, paths: list[str], rate: float, duration: float, connections: int,
               label: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_open_loop, args=(port, paths, rate, duration, connections, out), name="bench-load")
    start = _cpu_now(api_pid)
    child.start()
    answer = out.get(timeout=duration + 120)
    child.join()
    cpu, db_cpu = _cpu_since(start)
    results = answer["results"]
    latencies = [r[0] * 1000 for r in results]
    return {
        "label": label, "offered_rate": rate, "achieved_rate": len(results) / answer["elapsed"],
        "requests": len(results), "errors": sum(1 for r in results if r[2] != 200),
        "p50_ms": _percentile(latencies, 0.50), "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99), "max_ms": max(latencies, default=float("nan")),
        "service_p99_ms": _percentile([r[1] * 1000 for r in results], 0.99),
        "api_cpu_ms_per_request": cpu * 1000 / max(len(results), 1),
        "db_cpu_ms_per_request": db_cpu * 1000 / max(len(results), 1),
    }


# --- saturation with wrk ----------------------------------------------------------------------

WRK_SCRIPT = """
wrk.headers["X-API-Key"] = os.getenv("RAPPORT_BENCH_API_KEY")
local ids = {}
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end
request = function()
  return wrk.format("GET", "/customers/" .. ids[math.random(#ids)])
end
"""

WRK_HEALTH = 'request = function() return wrk.format("GET", "/health") end\n'


def _wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(port: int, api_pid: int, script: str, args: list[str], connections: int, duration: float,
        label: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    start = _cpu_now(api_pid)
    try:
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", f.name,
             f"http://127.0.0.1:{port}", "--", *args], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    cpu, db_cpu = _cpu_since(start)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M))
    return {"label": label, "connections": connections, "rps": rps, "requests": requests,
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
            "p50_ms": _wrk_ms(dist["50"]), "p90_ms": _wrk_ms(dist["90"]), "p99_ms": _wrk_ms(dist["99"]),
            "api_cpu_ms_per_request": cpu * 1000 / max(requests, 1),
            "db_cpu_ms_per_request": db_cpu * 1000 / max(requests, 1)}


# --- the run ----------------------------------------------------------------------------------

def sample_ids(conninfo: str, n: int) -> tuple[list[str], dict[str, Any]]:
    with psycopg.connect(conninfo) as conn:
        meta = conn.execute(f"SELECT data FROM {META_TABLE} WHERE id = 1").fetchone()  # noqa: S608 - names from constants
        customers = conn.execute("SELECT count(*) FROM customer_360").fetchone()[0]
        # A few random pages of the table, then random rows of those: quick at a million rows.
        percent = min(100.0, 100.0 * 4 * n / max(customers, 1))
        ids = [r[0] for r in conn.execute(
            "SELECT customer_id FROM customer_360 TABLESAMPLE SYSTEM (%s) WHERE customer_id NOT LIKE 'heavy-%%' "
            "ORDER BY random() LIMIT %s", (percent, n))]
        last = conn.execute("SELECT max(last_seen_at) FROM customer_360").fetchone()[0]
    info = dict(meta[0]) if meta else {}
    info |= {"customers_in_view": customers, "data_last_at": last.astimezone(UTC).isoformat()}
    return ids, info


def path_of(customer_id: str) -> str:
    return "/customers/" + urllib.parse.quote(customer_id, safe="@~+")


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = Settings()
    url = with_dbname(admin.database_url, args.database)
    DB.update(conninfo=bootstrap.conninfo(Settings(database_url=url)), dbname=args.database)
    ids, info = sample_ids(DB["conninfo"], args.ids)
    heavy = info.get("heavy_customer")
    today = datetime.now(UTC).date()
    trend = (f"/satisfaction/trend?kind=nps&granularity=month&from={_years_before(today, 2).isoformat()}"
             f"&to={(today + timedelta(days=1)).isoformat()}")
    port = _free_port()
    result: dict[str, Any] = {"database": args.database, "data": info, "ids_sampled": len(ids),
                              "workers": args.workers, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as f:
        f.write("\n".join(path_of(i)[len("/customers/"):] for i in ids) + "\n")
    paths = [path_of(i) for i in ids]
    try:
        with api_process(url, port, args.workers) as api, RssSampler(api.pid) as rss:
            for path in (paths[0], trend, "/lifecycle/stages", *([path_of(heavy)] if heavy else [])):
                status, body = http_get(port, path, timeout=10)
                if status != 200:
                    raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
            say(f"warm-up: GET /customers/{{id}} at {args.rate:g}/s for {args.warmup:g} s")
            fixed_rate(port, api.pid, paths, args.rate, args.warmup, args.connections, "warm-up")
            loads: dict[str, dict[str, Any]] = {}
            say(f"(a) GET /customers/{{id}} at {args.rate:g}/s for {args.duration:g} s")
            loads["lookup"] = fixed_rate(port, api.pid, paths, args.rate, args.duration, args.connections,
                                         f"GET /customers/{{id}} ({len(ids)} random ids) at {args.rate:g}/s")
            say(f"(b) wrk, {args.wrk_connections} connections, {args.wrk_duration:g} s: /health, then /customers/{{id}}")
            health = wrk(port, api.pid, WRK_HEALTH, [], args.wrk_connections, args.wrk_duration,
                         "GET /health (baseline: server + SELECT 1)")
            lookup = wrk(port, api.pid, WRK_SCRIPT, [f.name], args.wrk_connections, args.wrk_duration,
                         "GET /customers/{id}, random ids")
            say(f"(c) trend and stages at {args.slow_rate:g}/s for {args.duration:g} s each")
            loads["trend"] = fixed_rate(port, api.pid, [trend], args.slow_rate, args.duration, 4,
                                        f"GET {trend} at {args.slow_rate:g}/s")
            loads["stages"] = fixed_rate(port, api.pid, ["/lifecycle/stages"], args.slow_rate, args.duration, 4,
                                         f"GET /lifecycle/stages at {args.slow_rate:g}/s")
            if heavy:
                say(f"(d) {heavy} alone at {args.rate:g}/s for {args.heavy_duration:g} s")
                loads["heavy"] = fixed_rate(port, api.pid, [path_of(heavy)], args.rate, args.heavy_duration,
                                            args.connections, f"GET /customers/{heavy} "
                                            f"({info.get('heavy_events')} events) at {args.rate:g}/s")
                loads["lookup_after"] = fixed_rate(port, api.pid, paths, args.rate, args.heavy_duration,
                                                   args.connections, f"GET /customers/{{id}} again at {args.rate:g}/s")
    finally:
        os.unlink(f.name)
    result |= {"loads": loads, "wrk": {"health": health, "lookup": lookup}, **rss.figures()}
    result |= {
        "lookup_p50_ms": loads["lookup"]["p50_ms"], "lookup_p99_ms": loads["lookup"]["p99_ms"],
        "lookup_errors": loads["lookup"]["errors"], "lookup_rps_32": lookup["rps"],
        "health_rps_32": health["rps"], "lookup_to_health_ratio": lookup["rps"] / health["rps"],
        "trend_p99_ms": loads["trend"]["p99_ms"], "stages_p99_ms": loads["stages"]["p99_ms"],
        "heavy_p99_ms": loads["heavy"]["p99_ms"] if heavy else None,
    }
    return result


def table(r: dict[str, Any]) -> str:
    d = r["data"]
    lines = [
        f"data: {d.get('customers_in_view')} customers in the view ({d.get('read_model_events', '?')} events in the "
        f"read models, {d.get('event_store_rows', '?')} in the event store, copies {d.get('copies', 1)}); "
        f"API workers {r['workers'] or 'default'}; {r['cpus']} CPUs, load average at start "
        f"{', '.join(f'{v:.2f}' for v in r['loadavg_start'])}",
        "",
        f"{'fixed rate (latency from the due time)':<62}{'req/s':>8}{'err':>5}{'p50 ms':>8}{'p90 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}{'API CPU':>8}{'DB CPU':>8}  (CPU: ms per request)",
    ]
    for load in r["loads"].values():
        label = load["label"] if len(load["label"]) <= 61 else load["label"][:58] + "..."
        lines.append(f"{label:<62}{load['achieved_rate']:>8.0f}{load['errors']:>5}{load['p50_ms']:>8.1f}"
                     f"{load['p90_ms']:>8.1f}{load['p99_ms']:>8.1f}{load['max_ms']:>8.1f}"
                     f"{load['api_cpu_ms_per_request']:>8.2f}{load['db_cpu_ms_per_request']:>8.2f}")
    lines += ["", f"{'wrk, closed loop':<62}{'req/s':>8}{'err':>5}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
                  f"{'':>8}{'API CPU':>8}{'DB CPU':>8}"]
    for w in r["wrk"].values():
        label = f"{w['label']} ({w['connections']} conn.)"
        lines.append(f"{label:<62}{w['rps']:>8.0f}{w['errors']:>5}"
                     f"{w['p50_ms']:>8.1f}{w['p90_ms']:>8.1f}{w['p99_ms']:>8.1f}{'':>8}"
                     f"{w['api_cpu_ms_per_request']:>8.2f}{w['db_cpu_ms_per_request']:>8.2f}")
    lines += [f"ratio lookups / baseline: {r['lookup_to_health_ratio']:.2f}", "",
              f"API RSS (all its processes, every second): first {r['api_rss_mb_first']:.0f} MB, "
              f"max {r['api_rss_mb_max']:.0f} MB, last {r['api_rss_mb_last']:.0f} MB over {r['api_rss_samples']} "
              f"samples ({r['api_processes']} processes): {r['api_rss_mb_series']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.lookups", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database", default="rapport_scale", help="database filled by bench.load_at_scale")
    p.add_argument("--workers", type=int, default=None, help="RAPPORT_API_WORKERS for the API (default: its own)")
    p.add_argument("--rate", type=float, default=1000.0, help="offered rate of (a) and (d) per second (default 1000)")
    p.add_argument("--slow-rate", type=float, default=100.0, help="offered rate of (c) per second (default 100)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of each fixed-rate load (default 30)")
    p.add_argument("--heavy-duration", type=float, default=10.0, help="seconds of (d) (default 10)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (default 5)")
    p.add_argument("--wrk-duration", type=float, default=20.0, help="seconds of each wrk run (default 20)")
    p.add_argument("--wrk-connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--connections", type=int, default=64, help="connections of the fixed-rate loader (default 64)")
    p.add_argument("--ids", type=int, default=20_000, help="random customer ids to spread requests over")
    p.add_argument("--quick", action="store_true", help="small sizes and durations (the whole run under 2 minutes)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.heavy_duration, args.warmup, args.wrk_duration, args.ids = 8.0, 4.0, 2.0, 8.0, 2000
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (Debian: apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
