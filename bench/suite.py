"""All of issue 12's benchmarks in one run; `bench/run` calls this. The last line is one JSON object.

Each benchmark runs as its own process (its last output line is JSON) and prints as it goes:
  bench.ingest_scale   ingest with 1 and P processes against the bare pipeline (target 1)
  bench.freshness      publish → GET /customers/{id} at a fixed offered rate; RSS (targets 2, 4)
  bench.projections    catch-up of all read models from position 0 (target 5)
  bench.load_at_scale + bench.lookups
                       lookups at size with fixed-rate load and wrk (targets 3, 4)

`--quick` runs every one at a small size (a few minutes in all). Without it, full size: 2,000,000
events for ingest, 60 s at 5,000 events/s, 1,000,000 events of catch-up, and lookups on the
database `--lookups-database` (loaded by bench.load_at_scale if it holds nothing yet).

    bench/run [--quick] [--only ingest,freshness,projections,lookups]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, json_line

PYTHON = str(ROOT / ".venv" / "bin" / "python")
BENCHMARKS = ("ingest", "freshness", "projections", "lookups")


def run(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m module args`, passing its output through; its last line, as JSON."""
    command = [PYTHON, "-m", module, *args]
    print(f"\n$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stderr.write(line)
        if line.strip():
            last = line
    code = process.wait()
    if code != 0:
        raise RuntimeError(f"{module} exited with {code}")
    print(f"({module}: {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    return json.loads(last)


def lookups_database_loaded(database: str) -> bool:
    import psycopg

    from services.settings import Settings

    admin = Settings()
    try:
        with psycopg.connect(admin.database_url.rsplit("/", 1)[0] + f"/{database}", connect_timeout=5) as conn:
            return conn.execute("SELECT to_regclass('bench_scale_meta') IS NOT NULL").fetchone()[0]  # type: ignore[index]
    except psycopg.OperationalError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"a subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--ingest-processes", type=int, default=2, help="ingest processes (default 2)")
    parser.add_argument("--lookups-database", default="rapport_scale",
                        help="database of the lookups benchmark (default rapport_scale; loaded if empty)")
    args = parser.parse_args(argv)
    chosen = [b for b in args.only.split(",") if b]
    if unknown := set(chosen) - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    quick = ["--quick"] if args.quick else []
    result: dict[str, Any] = {"quick": args.quick}
    rss: dict[str, float] = {}
    if "ingest" in chosen:
        r = run("bench.ingest_scale", *quick, "--processes", str(args.ingest_processes))
        result |= {k: r[k] for k in ("ingest_eps", "ingest_ratio", "ingest_processes")}
        result |= {"ingest_eps_one_process": r["one_eps"], "ingest_ratio_one_process": r["one_process_ratio"],
                   "bare_pipeline_eps": r["bare_eps"], "ingest_events": r["events"]}
        rss["ingest"] = r["ingest_rss_mb_max"]
    if "freshness" in chosen:
        r = run("bench.freshness", *quick, "--ingest-processes", str(args.ingest_processes))
        result |= {"freshness_p99_ms": r["freshness_p99_ms"], "freshness_p50_ms": r["freshness_p50_ms"],
                   "freshness_offered_eps": r["offered_eps"]}
        for kind, mb in r["rss_mb_max"].items():
            rss[kind] = max(rss.get(kind, 0.0), mb)
    if "projections" in chosen:
        events = "100000" if args.quick else "1000000"
        r = run("bench.projections", "--events", events, "--skip-api")
        result |= {"rebuild_eps": r["all_eps"], "rebuild_events": r["events"], "rebuild_per_model_eps": r["per_model_eps"]}
        if "peak_rss_mb" in r:
            rss["projector"] = max(rss.get("projector", 0.0), r["peak_rss_mb"])
    if "lookups" in chosen:
        if not lookups_database_loaded(args.lookups_database):
            size = (["--customers", "10000", "--events", "200000", "--heavy", "10000"] if args.quick
                    else ["--customers", "1000000", "--events", "20000000", "--heavy", "100000"])
            run("bench.load_at_scale", "--database", args.lookups_database, *size)
        r = run("bench.lookups", "--database", args.lookups_database, *quick)
        result |= {k: r[k] for k in ("lookup_p99_ms", "lookup_rps_32", "trend_p99_ms", "stages_p99_ms")}
        rss["api"] = max(rss.get("api", 0.0), r["api_rss_mb_max"])
    result["rss_mb"] = rss
    result["rss_mb_max"] = max(rss.values(), default=0.0)
    print(json_line(result, digits=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
