"""Soak: a bounded run of `whetstone serve` under mixed traffic and a schedule of faults, on
loopback only, ending in an account of every request and every record.

The server is a real `whetstone serve` process (so it can be killed with SIGKILL) on a real
PostgreSQL store (a cluster of its own, `scripts/postgres.sh` with its own folder and port),
serving more adapters than its pool holds (`--max-adapters`), with the API key from the
environment. The base model is a 2-layer random-weight Llama with the bundled tokenizer: the
soak is about the system (batching, eviction, capture, spill, restart), and a tiny model lets
it send thousands of requests on 2 cores. Every adapter's answer to every prompt is first
taken alone, one request at a time; every later answer must equal it.

Faults, at fixed fractions of the run: poison inputs (NUL, lone surrogate, JSON nested 100,000
deep, a record id past 2^63), clients that drop a stream after its first chunk, PostgreSQL
stopped and started (twice), every loaded adapter unloaded through /admin, and the server
killed with SIGKILL and started again. Before the kill the soak waits for a moment when the
capture queue is empty ("the last fault-free flush"): an answer acknowledged before that moment
must be in the store; one acknowledged after it may have died with the process, and is
reported as such.

    python benchmarks/soak.py [--minutes 20] [--clients 6] [--adapters 6] [--max-adapters 2]

Writes benchmarks/results/soak.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, print_table, write_result

KEY = "soak-key"
PG_DIR = "/tmp/whetstone-pg-soak"
PROMPTS = [
    "1600 Pennsylvania Ave NW, Washington DC 20500",
    "350 Fifth Avenue, New York, NY 10118",
    "4059 Mt Lee Dr, Hollywood, CA 90068",
    "1 Infinite Loop, Cupertino CA 95014",
    "221B Baker St, Springfield IL 62701",
    "742 Evergreen Terrace, Springfield OR 97403",
    "12 Grimmauld Pl, Boston MA 02108",
    "500 S Buena Vista St, Burbank, CA 91521",
]
# uvicorn shuts down gracefully on SIGTERM, then re-raises it: -15 is a clean exit.
CLEAN_EXIT = (0, -signal.SIGTERM)
# (fraction of the run, fault); the kill sits apart from both outages, so what it can lose is
# only what was in the server's memory.
SCHEDULE = [
    (0.08, "poison"),
    (0.15, "disconnects"),
    (0.25, "pg_outage"),
    (0.40, "unload"),
    (0.50, "poison"),
    (0.60, "kill"),
    (0.72, "disconnects"),
    (0.80, "pg_outage"),
    (0.90, "unload"),
]


# ---- the world: PostgreSQL, a project, a server process -------------------------------------
def pg(command: str) -> str:
    env = {**os.environ, "WHETSTONE_PG_DIR": PG_DIR, "WHETSTONE_PG_PORT": "54339"}
    env["WHETSTONE_PG_DB"] = "whetstone_soak"
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), command],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def make_project(tmp: Path, db: str, adapters: int) -> tuple[Path, list[str]]:
    """A project on `db` with `adapters` tasks, each with a random LoRA in production, and a
    task with none (answered by the base model)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import whetstone
    from serve_helpers import register_lora, tiny_llama
    from whetstone import registry
    from whetstone.models import base

    base_dir = tiny_llama(tmp / "tiny-base", base.load_tokenizer(base.resolve(None)))
    home = tmp / "project"
    p = whetstone.init(home, base_model=str(base_dir), db=db)
    tasks = []
    for i in range(adapters):
        name = f"t{i}"
        p.create_task(name, "generate", instruction="Split the address into its parts.")
        av = register_lora(p, name, base_dir, seed=i, tmp=tmp, dora=(i == adapters - 1))
        registry.set_stage(p, av.name, "production", action="promote")
        tasks.append(name)
    p.create_task("plain", "generate", instruction="Split the address into its parts.")
    tasks.append("plain")
    p.close()
    # Spill to disk soon after the store goes away, so the outages exercise the spool.
    with open(home / "whetstone.yaml", "a") as f:
        f.write("serve:\n  spool_after_s: 2.0\n")
    return home, tasks


class Server:
    def __init__(self, home: Path, port: int, max_adapters: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [
            sys.executable,
            "-m",
            "whetstone",
            "--project",
            str(home),
            "serve",
            "--port",
            str(port),
            "--max-adapters",
            str(max_adapters),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        import httpx

        env = {**os.environ, "WHETSTONE_API_KEY": KEY}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start in {timeout:.0f} s: see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Never leave a server behind, whatever happened to the soak."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


# ---- traffic ------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # "chat" | "stream" | "dropped_stream" | "poison:<what>"
    task: str
    prompt: int
    sent: float
    done: float = 0.0
    status: int = 0  # 0: no HTTP answer (connection refused or reset)
    ref: str | None = None
    answer: str | None = None
    error: str | None = None


@dataclass
class Log:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, o: Outcome) -> None:
        with self.lock:
            self.outcomes.append(o)


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def body(task: str, prompt: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": task,
        "messages": [{"role": "user", "content": PROMPTS[prompt]}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
    }


def ask(client: Any, url: str, task: str, prompt: int, stream: bool) -> Outcome:
    import httpx

    o = Outcome("stream" if stream else "chat", task, prompt, time.time())
    try:
        if stream:
            with client.stream(
                "POST", url + "/v1/chat/completions", json=body(task, prompt, True)
            ) as r:
                o.status, o.ref = r.status_code, r.headers.get("x-whetstone-record")
                parts = []
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        parts.append(choices[0].get("delta", {}).get("content") or "")
                o.answer = "".join(parts) if r.status_code == 200 else None
        else:
            r = client.post(url + "/v1/chat/completions", json=body(task, prompt))
            o.status, o.ref = r.status_code, r.headers.get("x-whetstone-record")
            if r.status_code == 200:
                o.answer = r.json()["choices"][0]["message"]["content"]
            else:
                o.error = r.text[:200]
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        o.status, o.ref, o.error = 0, None, f"{type(e).__name__}: {e}"[:200]
    o.done = time.time()
    return o


def client_loop(url: str, tasks: list[str], seed: int, stop: threading.Event, log: Log) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(headers=headers(), timeout=60) as client:
        while not stop.is_set():
            o = ask(client, url, rng.choice(tasks), rng.randrange(len(PROMPTS)), rng.random() < 0.2)
            log.add(o)
            if o.status == 0:
                time.sleep(0.2)  # the server is down (the planned kill): do not spin


# ---- faults -------------------------------------------------------------------------------
def poison(url: str, log: Log) -> None:
    import httpx

    chat = url + "/v1/chat/completions"
    bodies = {
        "nul": json.dumps(body("t0", 0) | {"messages": [{"role": "user", "content": "a\u0000b"}]}),
        "surrogate": '{"model": "t0", "messages": [{"role": "user", "content": "x\\ud800"}]}',
        "deep_json": "[" * 100_000 + "]" * 100_000,
    }
    h = headers() | {"Content-Type": "application/json"}
    for what, text in bodies.items():
        o = Outcome(f"poison:{what}", "t0", 0, time.time())
        r = httpx.post(chat, content=text.encode("utf-8", "surrogatepass"), headers=h, timeout=30)
        o.status, o.ref, o.done, o.error = (
            r.status_code,
            r.headers.get("x-whetstone-record"),
            time.time(),
            r.text[:200],
        )
        log.add(o)
    o = Outcome("poison:huge_record_id", "t0", 0, time.time())
    r = httpx.post(
        url + "/v1/feedback", json={"record_id": 2**64, "rating": "down"}, headers=h, timeout=30
    )
    o.status, o.done, o.error = r.status_code, time.time(), r.text[:200]
    log.add(o)


def disconnects(url: str, tasks: list[str], log: Log, n: int = 4) -> None:
    """Streams dropped by the client after their first chunk: their record must still be
    stored (marked incomplete), since the response already named it."""
    import httpx

    for i in range(n):
        task = tasks[i % len(tasks)]
        o = Outcome("dropped_stream", task, i % len(PROMPTS), time.time())
        with httpx.Client(headers=headers(), timeout=30) as client:
            payload = body(task, o.prompt, True) | {"max_tokens": 64}
            with client.stream("POST", url + "/v1/chat/completions", json=payload) as r:
                o.status, o.ref = r.status_code, r.headers.get("x-whetstone-record")
                next(r.iter_lines(), None)
        o.done = time.time()
        log.add(o)


def unload(url: str, events: list[dict[str, Any]]) -> None:
    import httpx

    loaded = httpx.get(url + "/admin/adapters", headers=headers(), timeout=30).json()["loaded"]
    for ref in loaded:
        r = httpx.post(
            url + "/admin/adapters/unload", json={"model": ref}, headers=headers(), timeout=60
        )
        events.append({"t": time.time(), "event": f"unload {ref}", "status": r.status_code})


def last_flush(url: str, timeout: float = 60.0) -> float | None:
    """The send time of a health check that found the capture queue empty and the store
    healthy: every answer acknowledged before it was in the store. None if that never
    happened within `timeout` (capture is stuck: the account then shows what it cost)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = time.time()
        h = httpx.get(url + "/healthz", timeout=10).json()
        if h["capture_pending"] == 0 and h["store_ok"]:
            return sent
        time.sleep(0.02)
    print(f"the capture queue did not empty in {timeout:.0f} s", flush=True)
    return None


def monitor(url: str, stop: threading.Event, downs: list[float]) -> None:
    """Times at which /healthz did not answer 200 (the server was down)."""
    import httpx

    while not stop.is_set():
        t = time.time()
        try:
            ok = httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            downs.append(t)
        stop.wait(0.5)


# ---- the run ------------------------------------------------------------------------------
def references(url: str, tasks: list[str]) -> dict[tuple[str, int], str]:
    """Every (task, prompt) answered alone, one request at a time."""
    import httpx

    refs = {}
    with httpx.Client(headers=headers(), timeout=120) as client:
        for task in tasks:
            for i in range(len(PROMPTS)):
                o = ask(client, url, task, i, stream=False)
                if o.status != 200 or o.answer is None:
                    raise RuntimeError(f"reference answer {task}/{i} failed: {o.error}")
                refs[(task, i)] = o.answer
    return refs


def stored_refs(home: Path) -> tuple[set[str], dict[str, list[str]]]:
    import whetstone

    p = whetstone.open(home)
    try:
        keys: set[str] = set()
        tags: dict[str, list[str]] = {}
        for t in p.store.list_tasks():
            for r in p.records(t.name):
                if r.source_key:
                    keys.add(str(r.source_key))
                    tags[str(r.source_key)] = list(r.tags)
        return keys, tags
    finally:
        p.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from whetstone.serve.background import free_port

    tmp = Path(tempfile.mkdtemp(prefix="whetstone-soak-"))
    pg("stop")  # a cluster of its own, from empty
    db = pg("start")
    home, tasks = make_project(tmp, db, args.adapters)
    server = Server(home, free_port(), args.max_adapters, tmp / "server.log")
    try:
        return soak(args, server, home, tasks)
    finally:
        server.close()


def soak(args: argparse.Namespace, server: Server, home: Path, tasks: list[str]) -> dict[str, Any]:
    server.start()
    t0 = time.time()
    refs = references(server.url, tasks)
    print(f"references: {len(refs)} answers taken alone in {time.time() - t0:.0f} s", flush=True)

    log, events, downs = Log(), [], []
    stop, stop_monitor = threading.Event(), threading.Event()
    clients = [
        threading.Thread(target=client_loop, args=(server.url, tasks, s, stop, log), daemon=True)
        for s in range(args.clients)
    ]
    watch = threading.Thread(target=monitor, args=(server.url, stop_monitor, downs), daemon=True)
    start = time.time()
    for c in clients:
        c.start()
    watch.start()
    duration = args.minutes * 60
    flush_at = kill_at = up_at = None
    for frac, fault in SCHEDULE:
        time.sleep(max(0.0, start + frac * duration - time.time()))
        print(f"{time.time() - start:7.0f} s  fault: {fault}", flush=True)
        events.append({"t": time.time(), "event": fault})
        if fault == "poison":
            poison(server.url, log)
        elif fault == "disconnects":
            disconnects(server.url, tasks, log)
        elif fault == "pg_outage":
            pg("pause")
            time.sleep(args.outage_s)
            pg("start")
            events.append({"t": time.time(), "event": "pg back"})
        elif fault == "unload":
            unload(server.url, events)
        elif fault == "kill":
            flush_at = last_flush(server.url)
            server.kill()
            kill_at = time.time()
            time.sleep(1.0)
            server.start()
            up_at = time.time()
            events.append({"t": up_at, "event": "server back"})
    time.sleep(max(0.0, start + duration - time.time()))
    stop.set()
    for c in clients:
        c.join(120)
    last_flush(server.url, timeout=args.drain_s)
    stop_monitor.set()
    watch.join(10)
    code = server.stop()
    keys, tags = stored_refs(home)
    return account(
        args, log, refs, keys, tags, events, downs, (flush_at, kill_at, up_at), code, home
    )


def account(
    args: argparse.Namespace,
    log: Log,
    refs: dict[tuple[str, int], str],
    keys: set[str],
    tags: dict[str, list[str]],
    events: list[dict[str, Any]],
    downs: list[float],
    kill: tuple[float | None, float | None, float | None],
    exit_code: int,
    home: Path,
) -> dict[str, Any]:
    flush_at, kill_at, up_at = kill
    rows: dict[str, Counter[str]] = {}
    lost_reasons: Counter[str] = Counter()
    wrong: list[dict[str, Any]] = []
    for o in log.outcomes:
        c = rows.setdefault(o.kind, Counter())
        c["sent"] += 1
        c[f"http {o.status}" if o.status else "no answer"] += 1
        if o.status == 200:
            c["answered"] += 1
            if o.kind in ("chat", "stream") and o.answer != refs[(o.task, o.prompt)]:
                wrong.append(asdict(o) | {"expected": refs[(o.task, o.prompt)]})
        if o.ref is None:
            continue
        c["acknowledged"] += 1
        if o.ref in keys:
            c["stored"] += 1
            if "incomplete" in tags.get(o.ref, []):
                c["stored incomplete"] += 1
            continue
        c["lost"] += 1
        if flush_at is not None and kill_at is not None and flush_at < o.done <= kill_at:
            why = "acknowledged after the last flush, in memory at SIGKILL (allowed)"
        elif o.kind == "dropped_stream":
            why = "stream dropped by the client; its record was never stored"
        else:
            why = "LOST: acknowledged before the last fault-free flush"
        lost_reasons[why] += 1
    planned = (kill_at or 0) - 1, (up_at or 0) + 1
    unplanned_down = [t for t in downs if not planned[0] <= t <= planned[1]]
    from whetstone.serve.capture import SPOOL_DIR, poison_files

    poisoned = sorted(map(str, poison_files(home / ".whetstone" / SPOOL_DIR)))
    server_log = (home.parent / "server.log").read_text(errors="replace")
    unexpected = sum(n for why, n in lost_reasons.items() if why.startswith("LOST"))
    return {
        "settings": vars(args),
        "by_kind": {k: dict(v) for k, v in sorted(rows.items())},
        "lost_reasons": dict(lost_reasons),
        "lost_unexpected": unexpected,
        "wrong_answers": len(wrong),
        "wrong_examples": wrong[:5],
        "server_down_unplanned_checks": len(unplanned_down),
        "server_down_planned_s": round((up_at or 0) - (kill_at or 0), 1),
        "server_exit_code": exit_code,
        "poison_files": poisoned,
        "server_log_tracebacks": server_log.count("Traceback"),
        "events": events,
        "verdict": "pass"
        if unexpected == 0 and not wrong and not unplanned_down and exit_code in CLEAN_EXIT
        else "fail",
    }


def show(result: dict[str, Any]) -> None:
    cols = ["requests", "sent", "answered", "acknowledged", "stored", "stored incomplete", "lost"]
    rows = [[k] + [v.get(c, 0) for c in cols[1:]] for k, v in result["by_kind"].items()]
    print_table("soak: requests and records", cols, rows)
    status_cols = sorted({s for v in result["by_kind"].values() for s in v if s.startswith("http")})
    print_table(
        "soak: answers by HTTP status",
        ["requests", *status_cols, "no answer"],
        [
            [k] + [v.get(c, 0) for c in [*status_cols, "no answer"]]
            for k, v in result["by_kind"].items()
        ],
    )
    print_table(
        "soak: lost records by reason",
        ["reason", "records"],
        [[k, v] for k, v in result["lost_reasons"].items()] or [["none", 0]],
    )
    print(
        f"wrong answers: {result['wrong_answers']}; unplanned down checks: "
        f"{result['server_down_unplanned_checks']}; planned downtime "
        f"{result['server_down_planned_s']} s; server exit code {result['server_exit_code']}; "
        f"poison files: {len(result['poison_files'])}; tracebacks in the server log: "
        f"{result['server_log_tracebacks']}; verdict: {result['verdict']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--max-adapters", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=12.0)
    parser.add_argument("--drain-s", type=float, default=180.0, help="Wait for capture at the end.")
    parser.add_argument("--keep-pg", action="store_true", help="Leave the soak's cluster up.")
    args = parser.parse_args()
    try:
        result = run(args)
    finally:
        if not args.keep_pg:
            pg("stop")
    show(result)
    print(f"wrote {write_result('soak', result)}")
    sys.exit(0 if result["verdict"] == "pass" else 1)


if __name__ == "__main__":
    main()
