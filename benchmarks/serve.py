"""Serving benchmark: output tokens/s and latency at 1, 8 and 32 concurrent clients for
(a) every request to one adapter, (b) requests spread over 8 adapters (mixed-adapter batches),
(c) a naive server that answers one request at a time, (d) every request to one adapter with
its answer constrained to a JSON schema (`response_format` json_schema, `models.constrain`):
its cost per output token against (a) is the overhead of constrained decoding; and memory
with 1 vs 50 adapters.

Runs the bundled base model (SmolLM2-135M-Instruct) on whatever device `whetstone` picks, with
random LoRA adapters (r=8 on q/k/v/o, small non-zero weights): no training is needed to time
serving. Writes benchmarks/results/serve.json and prints a table.

    python benchmarks/serve.py [--max-tokens 16] [--requests-per-client 2] [--threads N]
        [--modes single,constrained] [--skip-memory]
    python benchmarks/serve.py --mask-only     # the constraint's own cost per decode step
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common

QUESTIONS = [
    "Where is my parcel?",
    "How do I reset my password?",
    "Can I change my delivery address?",
    "Is the blue model waterproof?",
    "Why was I charged twice?",
    "Do you ship to Norway?",
    "How long does a refund take?",
    "Can I cancel my order?",
]
# The constrained mode's schema: an address-like object of free strings, as the extract
# tasks have, so most tokens are chosen inside strings, where a mask is cheapest, and the
# rest at keys and separators, where the grammar decides.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "street": {"type": "string"},
        "city": {"type": "string"},
        "postcode": {"type": "string"},
        "country": {"type": "string"},
    },
    "required": ["name", "street", "city"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "address", "schema": SCHEMA}}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_adapters(project: Any, base: Any, n: int, tmp: Path) -> list[str]:
    """One random LoRA adapter, then n variants of it (perturbed weights), registered."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from whetstone import registry
    from whetstone.models import base as base_models

    model, _ = base_models.load(base)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    seed_dir = tmp / "seed-adapter"
    get_peft_model(model.to("cpu"), cfg).save_pretrained(seed_dir)
    weights = load_file(seed_dir / "adapter_model.safetensors")
    names = []
    for i in range(n):
        task = f"t{i}"
        project.create_task(task, "generate", instruction="Answer the customer briefly.")
        folder = tmp / f"adapter-{i}"
        folder.mkdir()
        g = torch.Generator().manual_seed(i)
        save_file(
            {
                k: (v * 0.5 + 0.01 * torch.randn(v.shape, generator=g)).contiguous()
                for k, v in weights.items()
            },
            folder / "adapter_model.safetensors",
        )
        (folder / "adapter_config.json").write_text((seed_dir / "adapter_config.json").read_text())
        av = registry.register(
            project, task, folder, method="lora", base_model=base.name, base_hash=base.hash
        )
        registry.set_stage(project, av.name, "production", action="promote")
        names.append(task)
    del model
    return names


def run_load(
    url: str,
    models: list[str],
    clients: int,
    per_client: int,
    max_tokens: int,
    response_format: dict[str, Any] | None = None,
) -> dict:
    import httpx

    extra = {"response_format": response_format} if response_format else {}

    def client(c: int) -> list[tuple[float, int]]:
        out = []
        with httpx.Client(base_url=url, timeout=600) as h:
            for k in range(per_client):
                i = c * per_client + k
                t0 = time.perf_counter()
                r = h.post(
                    "/v1/chat/completions",
                    json={
                        "model": models[i % len(models)],
                        "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                        **extra,
                    },
                )
                r.raise_for_status()
                out.append((time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]))
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        done = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - t0
    lat = sorted(d[0] for d in done)
    tokens = sum(d[1] for d in done)
    return {
        "requests": len(done),
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
        "ms_per_token": round(1000 * wall / max(tokens, 1), 2),
    }


def mask_cost(rows: int = 32, repeats: int = 5) -> dict[str, Any]:
    """The constraint's own cost, apart from the model: milliseconds per decode step for a
    batch of `rows` constrained answers (the allowed-token mask of every row, applied to the
    logits, and each row's matcher advanced), walking a valid answer to SCHEMA token by
    token. End-to-end rows differ by less than their own noise; this is the overhead itself."""
    import torch

    from whetstone.models import base as base_models
    from whetstone.models.constrain import advance_rows, compile_schema, mask_rows

    tok = base_models.load_tokenizer(base_models.resolve(None))
    stops = frozenset({int(tok.eos_token_id)})
    grammar = compile_schema(tok, stops, SCHEMA)
    answer = json.dumps(
        {"name": "Ada Lovelace", "street": "12 St James's Square", "city": "London"},
        separators=(",", ":"),
    )
    ids = tok.encode(answer, add_special_tokens=False)
    logits = torch.zeros((rows, len(tok)))
    steps, seconds = 0, 0.0
    for _ in range(repeats):
        constraints = [grammar.start() for _ in range(rows)]
        t0 = time.perf_counter()
        for t in ids:
            mask_rows(logits, constraints, stops)
            advance_rows(constraints, [t] * rows)
        seconds += time.perf_counter() - t0
        steps += len(ids)
    return {
        "rows": rows,
        "ms_per_step": round(seconds / steps * 1000, 3),
        "ms_per_row_token": round(seconds / steps / rows * 1000, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--modes", default="single,mixed,naive,constrained")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--mask-only",
        action="store_true",
        help="only the constraint's own cost per decode step (results/constraint_mask.json)",
    )
    ap.add_argument("--out", default="serve", help="results/<out>.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mask_only:
        cost = {str(r): mask_cost(r) for r in (1, 8, 32)}
        print(json.dumps(cost))
        print(f"wrote {common.write_result('constraint_mask', {'schema': SCHEMA, 'cost': cost})}")
        return
    import logging

    logging.getLogger("whetstone").setLevel(logging.ERROR)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import whetstone
    from serve_helpers import running
    from whetstone.models import base as base_models
    from whetstone.serve.app import create_app
    from whetstone.serve.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="whetstone-bench-"))
    base = base_models.resolve(None)
    project = whetstone.init(tmp / "proj", base_model=base.name)
    tasks = make_adapters(project, base, 50, tmp)
    eight = tasks[:8]
    concurrency = [int(c) for c in args.clients.split(",")]
    every = {
        "single": ("single adapter", Settings(max_batch_size=32, max_wait_ms=10), [eight[0]], None),
        "mixed": ("8 adapters, mixed", Settings(max_batch_size=32, max_wait_ms=10), eight, None),
        "naive": ("naive (one at a time)", Settings(max_batch_size=1, max_wait_ms=0), eight, None),
        "constrained": (
            "single adapter, JSON schema",
            Settings(max_batch_size=32, max_wait_ms=10),
            [eight[0]],
            RESPONSE_FORMAT,
        ),
    }
    modes = {
        name: (settings, models, fmt)
        for key, (name, settings, models, fmt) in every.items()
        if key in args.modes.split(",")
    }
    results: dict[str, Any] = {
        "device": base_models.device(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "base_model": base.name,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "throughput": {},
        "memory": {},
    }
    for mode, (settings, models, fmt) in modes.items():
        app = create_app(project, settings)
        with running(app) as url:
            # Warm up: load the adapters (and compile the schema).
            run_load(url, models, len(models), 1, 4, fmt)
            for c in concurrency:
                r = run_load(url, models, c, args.requests_per_client, args.max_tokens, fmt)
                results["throughput"].setdefault(mode, {})[str(c)] = r
                print(
                    f"{mode:24s} {c:3d} clients: {r['tokens_per_s']:8.1f} tok/s  "
                    f"p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
                    f"{r['ms_per_token']:6.2f} ms/token",
                    flush=True,
                )
        del app

    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    t = results["throughput"]
    if "single adapter" in t and "single adapter, JSON schema" in t:
        # The overhead of constrained decoding: extra milliseconds per output token.
        results["constrained_overhead_ms_per_token"] = {
            c: round(
                t["single adapter, JSON schema"][c]["ms_per_token"]
                - t["single adapter"][c]["ms_per_token"],
                2,
            )
            for c in t["single adapter"]
        }
        print("constrained overhead, ms/token:", results["constrained_overhead_ms_per_token"])
    if "constrained" in args.modes.split(","):
        results["constraint_mask_cost"] = {str(r): mask_cost(r) for r in (1, 8, 32)}
        print("constraint mask cost:", results["constraint_mask_cost"])
    if not args.skip_memory:
        memory_and_targets(results, project, tasks, list(modes), concurrency)
    path = common.write_result(args.out, results)
    print()
    print(
        "| mode | clients | output tok/s | p50 ms | p95 ms | ms/token |\n|---|---|---|---|---|---|"
    )
    for mode in modes:
        for c in concurrency:
            r = t[mode][str(c)]
            print(
                f"| {mode} | {c} | {r['tokens_per_s']} | {r['p50_ms']} | {r['p95_ms']} "
                f"| {r['ms_per_token']} |"
            )
    print(f"wrote {path}")


def memory_and_targets(
    results: dict[str, Any],
    project: Any,
    tasks: list[str],
    modes: list[str],
    concurrency: list[int],
) -> None:
    """Memory: one server process, the adapters loaded onto the one base; and the targets."""
    import gc

    import httpx

    from serve_helpers import running
    from whetstone.serve.app import create_app
    from whetstone.serve.settings import Settings

    gc.collect()
    app = create_app(project, Settings(max_adapters=64))
    base_bytes = sum(
        p.numel() * p.element_size() for p in app.state.services.engine.pool.model.parameters()
    )
    with running(app) as url:
        h = httpx.Client(base_url=url, timeout=600)
        h.post("/admin/adapters/load", json={"model": tasks[0]}).raise_for_status()
        gc.collect()
        one = rss_mb()
        for t in tasks[1:]:
            h.post("/admin/adapters/load", json={"model": t}).raise_for_status()
        gc.collect()
        fifty = rss_mb()
        loaded = len(h.get("/admin/adapters").json()["loaded"])
    results["memory"] = {
        "base_model_weights_mb": round(base_bytes / 2**20, 1),
        "rss_1_adapter_mb": round(one, 1),
        "rss_50_adapters_mb": round(fifty, 1),
        "adapters_loaded": loaded,
        "cost_of_49_more_mb": round(fifty - one, 1),
    }
    t = results["throughput"]
    top = str(max(concurrency))
    if all(m in t for m in ("single adapter", "8 adapters, mixed", "naive (one at a time)")):
        single, mixed, naive = (
            t[m][top]["tokens_per_s"]
            for m in ("single adapter", "8 adapters, mixed", "naive (one at a time)")
        )
        results["targets"] = {
            f"mixed_vs_single_at_{top}": round(mixed / single, 2),
            f"mixed_vs_naive_at_{top}": round(mixed / naive, 2),
            "fifty_adapters_below_base_memory": fifty - one < base_bytes / 2**20,
        }
        print("targets:", json.dumps(results["targets"]))
    m = results["memory"]
    print(
        f"\nmemory: base weights {m['base_model_weights_mb']} MB; RSS with 1 adapter "
        f"{m['rss_1_adapter_mb']} MB, with {m['adapters_loaded']} adapters "
        f"{m['rss_50_adapters_mb']} MB (+{m['cost_of_49_more_mb']} MB)"
    )


if __name__ == "__main__":
    main()
