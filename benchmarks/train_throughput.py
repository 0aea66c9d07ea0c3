"""Training speed: Whetstone's engine against TRL's SFTTrainer + PEFT, same LoRA, same tokens.

Both train the bundled SmolLM2-135M-Instruct on the same demo address records for exactly
one epoch (records = steps x batch size, so each sees every record once and the token
counts match), with the same LoRA (rank, alpha, every linear layer of the blocks), learning
rate, schedule (cosine, 5% warmup), batch size and seed, and loss on the answer tokens only
(TRL is handed Whetstone's own tokenized examples, prompt masked with completion_mask and
completion_only_loss, so both learn the same answer text). Each case runs in its own process,
so its peak RSS is its own. The final metric is field F1 on the same validation records,
with the same greedy generation (whetstone.models.generate, same token budget) for both.
`topk` and `head` run on the same records with their own default settings.

Tokens/s counts non-padding tokens over the optimizer steps' time (Whetstone: the loop's
own step timer; TRL: Trainer's train_runtime). The fraction of peak uses
    model FLOPs = 2*N_body*T                 forward through the blocks' linear layers
                + 2*N_body*T * (k/L)         activation gradients back to the lowest trainable
                                             block (k = L for LoRA, the top k for topk, 0 for head)
                + 2*N_tr*T                   weight gradients of trainable block weights
                + (2 + 2*g)*V*d*T_ans        the vocabulary projection on answer tokens only,
                                             g = 1 when its input gradient is needed, plus
                                             2*V*d*T_ans for its weight gradient under head
    (LoRA adapters' own FLOPs, 6*r*(in+out) per token and layer, are added; attention score
    FLOPs, embedding lookups and optimizer updates are left out, so it is a lower bound)
against the best of several 2048x2048 fp32 matmuls measured in the same run.

Run:  python benchmarks/train_throughput.py [--records 32] [--batch-size 8] [--validation 16]
Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

CASES = ("whetstone-lora", "trl-lora", "whetstone-topk", "whetstone-head")


# ---------------------------------------------------------------- shared by every worker


def demo_task_and_records(
    project: Any, n_train: int, n_val: int
) -> tuple[Any, list[Any], list[Any]]:
    from whetstone.demo_data import load_demo_data

    task, _ = load_demo_data(project, limit=n_train + n_val)
    recs = sorted(project.records("addresses"), key=lambda r: r.id)
    return task, recs[:n_train], recs[n_train : n_train + n_val]


def encoded(task: Any, recs: list[Any], max_length: int) -> tuple[list[Any], Any]:
    """The records as Whetstone's training encodes them, answers ending at the bundled model's
    decoder's stop ids (its tokenizer's and its generation config's EOS, as `train` takes them
    from the loaded model)."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from whetstone.models import base
    from whetstone.models.decoding import Decoder
    from whetstone.train.data import encode_records

    resolved = base.resolve(None)
    tok = base.load_tokenizer(resolved)
    config = SimpleNamespace(generation_config=GenerationConfig.from_pretrained(resolved.path))
    stop_ids = Decoder.of(config, tok).stop_ids  # Decoder.of reads only the generation config
    return encode_records(tok, task, recs, stop_ids=stop_ids, max_length=max_length, policy="left")


def epoch_tokens(project: Any, train: list[Any], max_length: int) -> dict[str, int]:
    """Tokens and answer tokens of one epoch, as this worker's project encodes them."""
    examples, _ = encoded(project.task("addresses"), train, max_length)
    return {
        "epoch_tokens": sum(len(e) for e in examples),
        "epoch_answer_tokens": sum(len(e) - e.n_prompt for e in examples),
    }


# ---------------------------------------------------------------- workers (one process each)


def run_whetstone(args: argparse.Namespace, method: str) -> dict[str, Any]:
    import whetstone
    from whetstone import snapshots
    from whetstone.evaluate.metrics import main_score
    from whetstone.train import train_config, train_task

    project = whetstone.init(Path(tempfile.mkdtemp(prefix="whetstone-throughput-")) / "p")
    _, train, val = demo_task_and_records(project, args.records, args.validation)
    assignment = {r.id: "train" for r in train} | {r.id: "validation" for r in val}
    snap = snapshots.freeze(project, "addresses", assignment)
    lora = {"lr": args.lr, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r}
    cfg = train_config(
        method=method,
        epochs=1,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=0,
        eval_every=args.steps,  # one validation, at the end: the final metric
        eval_max_records=args.validation,
        save_every=args.steps,
        **(lora if method == "lora" else {}),
    )
    res = train_task(
        project, "addresses", cfg, snapshot_id=snap.id, progress=False, metric=main_score
    )
    return {
        **epoch_tokens(project, train, args.max_length),
        "tokens": round(res.tokens_per_s * res.timings["train_s"]),
        "train_s": res.timings["train_s"],
        "tokens_per_s": res.tokens_per_s,
        "steps": res.steps,
        "metric": res.best_metric,
        "config": cfg.effective(),
    }


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import whetstone
    from whetstone.evaluate.metrics import main_score
    from whetstone.models import base
    from whetstone.models.generate import generate
    from whetstone.prompts import chat, normalise_answer
    from whetstone.train.api import set_threads
    from whetstone.train.methods import block_linear_names

    project = whetstone.init(Path(tempfile.mkdtemp(prefix="whetstone-throughput-")) / "p")
    task, train, val = demo_task_and_records(project, args.records, args.validation)
    set_threads()  # the same threads Whetstone uses
    torch.manual_seed(0)
    model, tok = base.load(base.resolve(None), dtype=torch.float32, for_training=True)
    # TRL trains on exactly the token sequences Whetstone trains on (same chat template, same
    # answer text with the keys in input order, same end-of-turn stop, same truncation),
    # handed over pre-tokenized; completion_mask gives it the same answer-only loss.
    examples, report = encoded(task, train, args.max_length)
    rows = [
        {"input_ids": e.ids, "completion_mask": [0] * e.n_prompt + [1] * (len(e) - e.n_prompt)}
        for e in examples
    ]
    out = tempfile.mkdtemp(prefix="trl-")
    cfg = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=round(0.05 * args.steps),  # what Whetstone's warmup=0.05 gives
        weight_decay=0.0,
        max_grad_norm=1.0,
        completion_only_loss=True,
        max_length=args.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    peft_cfg = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules=block_linear_names(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_cfg,
    )
    counted = {"tokens": 0, "loss_tokens": 0}
    collate = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> Any:
        batch = collate(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        counted["loss_tokens"] += int((batch["labels"] != -100).sum())
        return batch

    trainer.data_collator = counting
    t0 = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - t0
    train_s = float(output.metrics["train_runtime"])
    # The final metric exactly as Whetstone's validation computes it.
    lm = trainer.model
    lm.eval()
    gens = generate(
        lm,
        tok,
        [chat(task, r.input) for r in val],
        max_new_tokens=min(1024, report.answer_tokens + 16),
        batch_size=16,
        max_prompt_tokens=args.max_length,
    )
    preds = [normalise_answer(task, g.text) for g in gens]
    metric = float(main_score(task, preds, [str(r.reference) for r in val]))
    return {
        **epoch_tokens(project, train, args.max_length),
        "tokens": counted["tokens"],
        "loss_tokens": counted["loss_tokens"],
        "train_s": round(train_s, 2),
        "train_wall_s": round(wall, 2),
        "tokens_per_s": counted["tokens"] / train_s,
        "steps": int(output.global_step),
        "metric": metric,
        "trl": __import__("trl").__version__,
    }


def worker(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    case = args.worker
    res = run_trl(args) if case == "trl-lora" else run_whetstone(args, case.split("-", 1)[1])
    res |= {
        "process_wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": common.peak_rss_mib(),
    }
    Path(args.out).write_text(json.dumps(res, default=str))


# ---------------------------------------------------------------- the parent


def matmul_peak_gflops(n: int = 2048, repeats: int = 8) -> float:
    import torch

    from whetstone.train.api import set_threads

    set_threads()
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def model_shape() -> dict[str, int]:
    from transformers import AutoConfig

    from whetstone.models import base

    c = AutoConfig.from_pretrained(base.resolve(None).path)
    d, ff, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    # (in, out) of each linear layer of one block: q, k, v, o, gate, up, down.
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, ff), (d, ff), (ff, d)]
    return {
        "d": d,
        "layers": L,
        "vocab": c.vocab_size,
        "block_linear": sum(i * o for i, o in shapes),
        "block_lora_per_rank": sum(i + o for i, o in shapes),
        "block_all": sum(i * o for i, o in shapes) + 2 * d,  # + the two RMSNorm weights
    }


def model_flops(case: str, cfg: dict[str, Any], shape: dict[str, int], T: int, T_ans: int) -> float:
    """Useful training FLOPs of one pass over T tokens (T_ans of them answer tokens), by the
    formula in the module docstring."""
    L, Vd = shape["layers"], shape["vocab"] * shape["d"]
    n_body = L * shape["block_linear"]
    fwd = 2 * n_body * T
    method = case.split("-", 1)[1]
    if method == "lora":
        lora = L * cfg["lora_r"] * shape["block_lora_per_rank"]
        return fwd + 2 * n_body * T + 6 * lora * T + 4 * Vd * T_ans
    if method == "topk":
        k = cfg["topk_layers"]
        return fwd + 2 * n_body * T * k / L + 2 * k * shape["block_all"] * T + 4 * Vd * T_ans
    if method == "head":
        return fwd + 4 * Vd * T_ans  # head forward + its weight gradient, no input gradient
    raise ValueError(case)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=32, help="training records (one epoch)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--validation", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.records % args.batch_size:
        raise SystemExit("--records must be a multiple of --batch-size (one epoch, whole steps)")
    args.steps = args.records // args.batch_size
    if args.worker:
        worker(args)
        return

    peaks = [matmul_peak_gflops()]
    shape = model_shape()

    results: dict[str, Any] = {}
    passthrough = [
        f"--records={args.records}", f"--batch-size={args.batch_size}",
        f"--validation={args.validation}", f"--lr={args.lr}", f"--lora-r={args.lora_r}",
        f"--max-length={args.max_length}",
    ]  # fmt: skip
    for case in args.cases.split(","):
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        cmd = [sys.executable, __file__, f"--worker={case}", f"--out={out}", *passthrough]
        print(f"running {case} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{case} failed (exit {proc.returncode})")
        res = json.loads(out.read_text())
        cfg = res.get("config") or {"lora_r": args.lora_r}
        flops = model_flops(case, cfg, shape, res["epoch_tokens"], res["epoch_answer_tokens"])
        res["model_gflops"] = round(flops / 1e9, 1)
        res["achieved_gflops_per_s"] = round(flops / 1e9 / res["train_s"], 1)
        results[case] = res

    # Measured again after the cases: on a shared machine the best moment is the peak.
    peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    for res in results.values():
        res["fraction_of_matmul_peak"] = round(res["achieved_gflops_per_s"] / peak, 3)
    rows = []
    for case, r in results.items():
        rows.append([
            case, f"{r['tokens_per_s']:,.0f}", r["tokens"], f"{r['train_s']:.1f}",
            f"{r['process_wall_s']:.0f}", f"{r['peak_rss_mib']:,.0f}",
            f"{r['metric']:.3f}", f"{r['fraction_of_matmul_peak'] * 100:.0f}%",
        ])  # fmt: skip
    common.print_table(
        f"{args.records} demo records, {args.steps} steps of {args.batch_size}, LoRA r={args.lora_r} "
        f"(matmul peak {peak:.0f} GFLOP/s)",
        [
            "case",
            "tokens/s",
            "tokens",
            "train s",
            "process s",
            "peak RSS MiB",
            "val field F1",
            "of peak",
        ],
        rows,
    )
    summary: dict[str, Any] = {}
    if "whetstone-lora" in results and "trl-lora" in results:
        w, t = results["whetstone-lora"], results["trl-lora"]
        summary = {
            "speedup_vs_trl": round(w["tokens_per_s"] / t["tokens_per_s"], 2),
            "metric_delta_vs_trl": round(w["metric"] - t["metric"], 3),
            "target_speedup": 1.5,
            "target_fraction_of_peak": 0.5,
        }
        print(
            f"Whetstone/TRL tokens/s: {summary['speedup_vs_trl']}x (target 1.5x) · field F1 "
            f"{w['metric']:.3f} vs {t['metric']:.3f} · Whetstone at "
            f"{w['fraction_of_matmul_peak'] * 100:.0f}% of the matmul peak (target 50%)"
        )
    path = common.write_result(
        "train_throughput",
        {
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
            "matmul_peak_gflops": round(peak, 1),
            "matmul_peak_measurements": [round(p, 1) for p in peaks],
            "model_shape": shape,
            "flops_formula": __doc__.split("The fraction of peak uses")[1].split("Run:")[0].strip(),
            "results": results,
            "summary": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
