"""Curation throughput: how dedup and embedding cost grows with the corpus.

For each size, a fresh project gets N short synthetic records (address-like lines, 10% of them
exact or near copies of others), then `curate` runs validate → dedup → split twice: the first
run computes hashes, MinHashes and MiniLM embeddings; the second re-uses them from the store
(`record_features`), which is what curating again after new records arrive costs. Each size
runs in its own process so its peak memory (max RSS) is its own.

Run:  python benchmarks/curation_throughput.py [--sizes 10000,50000,100000]
Writes benchmarks/results/curation_throughput.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import tempfile
import time
from typing import Any

import common

STREETS = [
    "Main St",
    "Oak Ave",
    "Pine Rd",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Lake Blvd",
    "Hill Ct",
]
CITIES = ["Springfield", "Portland", "Austin", "Denver", "Madison", "Salem", "Dover", "Albany"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], int]:
    """The texts and how many of them are planted copies (exact or near) of an earlier one."""
    rng = random.Random(seed)
    texts = []
    planted = 0
    for i in range(n):
        if i > 10 and rng.random() < 0.1:
            base = texts[rng.randrange(len(texts))]
            texts.append(base if rng.random() < 0.5 else base.replace(",", "", 1) + " please")
            planted += 1
        else:
            texts.append(
                f"Ship order {rng.randrange(10**6)} to {rng.randrange(1, 9999)} "
                f"{rng.choice(STREETS)}, {rng.choice(CITIES)} {rng.randrange(10000, 99999)}"
            )
    return texts, planted


def one_size(n: int, queue: Any) -> None:
    import whetstone
    from whetstone.curate import curate
    from whetstone.models import embeddings
    from whetstone.records import Record, Source, Status
    from whetstone.train.scoring import reference_losses

    embed_seconds = [0.0]
    real = embeddings.embed

    def timed(texts: list[str], spec: str | None = None, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(texts, spec, **kw)
        finally:
            embed_seconds[0] += time.perf_counter() - t0

    embeddings.embed = timed
    embeddings.load(None)  # model load is a fixed cost, not throughput
    with tempfile.TemporaryDirectory() as d:
        p = whetstone.init(d + "/p")
        p.create_task("ship", "generate")
        texts, planted = corpus(n)
        recs = [
            Record(
                task="ship", input=t, reference="ok", source=Source.imported, status=Status.accepted
            )
            for t in texts
        ]
        for i in range(0, n, 5000):
            p.store.add_records(recs[i : i + 5000])
        cfg = {"steps": ["validate", "dedup", "split"], "card": False}
        runs = []
        for label in ("cold", "warm (features cached)"):
            embed_seconds[0] = 0.0
            t0 = time.perf_counter()
            res = curate(p, "ship", cfg, scorer=reference_losses)
            total = time.perf_counter() - t0
            steps = {s.name: s.seconds for s in res.steps}
            runs.append(
                {
                    "run": label,
                    "total_s": round(total, 2),
                    "embedding_s": round(embed_seconds[0], 2),
                    "dedup_s": round(steps["dedup"], 2),
                    "split_s": round(steps["split"], 2),
                    "removed_as_duplicates": next(
                        s.removed for s in res.steps if s.name == "dedup"
                    ),
                }
            )
        p.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {"records": n, "planted_copies": planted, "runs": runs, "peak_rss_mb": round(peak_mb)}
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,50000,100000")
    args = ap.parse_args()
    results = []
    ctx = mp.get_context("spawn")
    for n in [int(s) for s in args.sizes.split(",")]:
        q = ctx.Queue()
        proc = ctx.Process(target=one_size, args=(n, q))
        proc.start()
        row = q.get()
        proc.join()
        cold, warm = row["runs"]
        row["records_per_s_cold"] = round(n / cold["total_s"], 1)
        results.append(row)
        print(
            f"{n:>7} records: cold {cold['total_s']:>7.1f}s (embedding {cold['embedding_s']:.1f}s, "
            f"dedup {cold['dedup_s']:.1f}s, removed {cold['removed_as_duplicates']} of "
            f"{row['planted_copies']} planted copies) · warm {warm['total_s']:>6.1f}s · "
            f"peak {row['peak_rss_mb']} MB",
            flush=True,
        )
        # Written after every size, so a long run stopped early keeps what it measured.
        path = common.write_result(
            "curation_throughput",
            {
                "settings": {"sizes": args.sizes, "steps": "validate, dedup, split"},
                "results": results,
            },
        )
    common.print_table(
        "Curation throughput (validate -> dedup -> split; cold computes features, warm reuses them)",
        [
            "records",
            "cold s",
            "embedding s",
            "dedup s",
            "split s",
            "records/s cold",
            "warm s",
            "peak MB",
            "planted copies",
            "dedup removed",
        ],
        [
            [
                r["records"],
                r["runs"][0]["total_s"],
                r["runs"][0]["embedding_s"],
                r["runs"][0]["dedup_s"],
                r["runs"][0]["split_s"],
                r["records_per_s_cold"],
                r["runs"][1]["total_s"],
                r["peak_rss_mb"],
                r["planted_copies"],
                r["runs"][0]["removed_as_duplicates"],
            ]
            for r in results
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
