"""Capture throughput of the flywheel store: one writer, then several processes at once, on
SQLite and on PostgreSQL.

Every capture is its own transaction (task lookup + insert + commit), as when a server
records each answer it gives; each writer is its own process with its own `Store`, as each
server worker is. Writers open their store first and start together, so the numbers measure
captures, not Python start-up.

PostgreSQL comes from WHETSTONE_TEST_PG_URL, or else from `scripts/postgres.sh start` (a
throwaway local cluster with fsync off: compare it with SQLite's WAL + synchronous=NORMAL,
which does not fsync each commit either). Each run gets a fresh database, dropped afterwards.

Run:  python benchmarks/store.py [--n 2000] [--writers 4] [--backends sqlite,postgresql]
Writes benchmarks/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "store.json"


def _writer(url: str, writer: int, n: int, ready: Any, go: Any, results: Any) -> None:
    from whetstone.store import Store

    store = Store(url)
    store.get_task("bench")  # connect now, outside the timed part
    ready.release()
    go.wait()
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        store.capture("bench", f"writer {writer} capture {i}", "ok", model="bench@1")
        latencies.append(time.perf_counter() - t)
    results.put((writer, time.perf_counter() - start, latencies))
    store.close()


def run_case(url: str, writers: int, n: int) -> dict[str, Any]:
    """`writers` processes capture `n` records each into a fresh store at `url`."""
    from whetstone.records import Task
    from whetstone.store import Store

    store = Store(url)
    store.create_task(Task(name="bench", kind="generate"))
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(url, w, n, ready, go, results)) for w in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    done = [results.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a writer failed on {store.display_url}")
    stored = store.count_records("bench")
    store.close()
    if stored != writers * n:
        raise SystemExit(f"lost captures on {url}: {stored} of {writers * n} stored")
    lat = sorted(x for _, _, ls in done for x in ls)
    return {
        "writers": writers,
        "captures": writers * n,
        "seconds": round(wall, 3),
        "records_per_s": round(writers * n / wall, 1),
        "latency_ms_p50": round(statistics.median(lat) * 1000, 3),
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1] * 1000, 3),
    }


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield f"sqlite:///{d}/bench.db"


def pg_server_url() -> str:
    url = os.environ.get("WHETSTONE_TEST_PG_URL")
    if url:
        return url
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def pg_store(server: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"whetstone_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pg_info(server: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(server) as c:
        return {
            k: str(c.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
            for k in ("server_version", "fsync", "synchronous_commit")
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="captures per writer (default 2000)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writers (default 4)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from whetstone.util import atomic_write_text

    backends: dict[str, Any] = {}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            stores, info = sqlite_store, {"sqlite_version": sqlite3.sqlite_version}
        elif backend == "postgresql":
            server = pg_server_url()
            stores, info = (lambda s=server: pg_store(s)), pg_info(server)
        else:
            raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")
        cases = []
        for writers in sorted({1, args.writers}):
            with stores() as url:
                cases.append(run_case(url, writers, args.n))
        backends[backend] = {"info": info, "cases": cases}

    table = Table(title=f"Store capture throughput ({args.n} captures per writer)")
    for col in ("backend", "writers", "captures", "seconds", "records/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for backend, res in backends.items():
        for c in res["cases"]:
            table.add_row(
                backend,
                str(c["writers"]),
                str(c["captures"]),
                f"{c['seconds']:.2f}",
                f"{c['records_per_s']:.0f}",
                f"{c['latency_ms_p50']:.2f}",
                f"{c['latency_ms_p99']:.2f}",
            )
    Console().print(table)

    report = {
        "benchmark": "store capture throughput",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            # Other work on the machine moves these numbers; say how busy it was.
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "per_writer": args.n,
        "backends": backends,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
