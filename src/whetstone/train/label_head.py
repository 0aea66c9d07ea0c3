"""The `label_head` method (classify tasks): a linear label head on the frozen model's
mean-pooled last hidden state (the classic feature-extraction recipe). Features are computed
once, so training the head takes seconds.

The artefact (`LabelHead`, its save and load, and `LabelHeadModel` for inference) lives in
`whetstone.models.label_head`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput
from whetstone.models.label_head import LabelHead, pooled_features, save_label_head
from whetstone.records import Record, Task
from whetstone.train.config import TrainConfig
from whetstone.train.runs import Run

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer
    from whetstone.train.loop import Metric


def record_features(
    model: PreTrainedModel, tok: Tokenizer, task: Task, records: list[Record], max_length: int
) -> torch.Tensor:
    import torch

    from whetstone.models.generate import encode_prompts
    from whetstone.prompts import chat

    prompts = [p[-max_length:] for p in encode_prompts(tok, [chat(task, r.input) for r in records])]
    dev = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for start in range(0, len(prompts), 32):
        part = prompts[start : start + 32]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for i, p in enumerate(part):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out.append(pooled_features(model, ids.to(dev), mask.to(dev)).cpu())
    return torch.cat(out)


def train_label_head(
    model: PreTrainedModel,
    tok: Tokenizer,
    task: Task,
    train: list[Record],
    val: list[Record],
    cfg: TrainConfig,
    run: Run,
    meta: dict[str, Any],
    *,
    metric: Metric,
    show: bool,
) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from whetstone.progress import console
    from whetstone.train.loop import Progress

    labels = list(task.labels or [])
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(r.reference) for r in train if r.reference not in index})
    if unknown:
        raise InvalidInput(
            f"training references that are not labels of task {task.name!r}: {unknown[:3]}"
        )
    model.eval()
    t0 = time.perf_counter()
    x = record_features(model, tok, task, train, cfg.max_length)
    xv = record_features(model, tok, task, val, cfg.max_length) if val else None
    feature_s = time.perf_counter() - t0
    y = torch.tensor([index[str(r.reference)] for r in train])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4) if len(x) > 1 else torch.ones(x.shape[1])
    lin = torch.nn.Linear(x.shape[1], len(labels))
    opt = torch.optim.AdamW(
        lin.parameters(), lr=cfg.learning_rate * 10, weight_decay=cfg.weight_decay or 0.01
    )
    steps = cfg.max_steps or cfg.epochs * 100
    every = cfg.eval_every or max(1, steps // 10)
    p = Progress()
    best: dict[str, Any] | None = None
    xn = (x - mean) / std
    t1 = time.perf_counter()
    for step in range(1, steps + 1):
        loss = F.cross_entropy(lin(xn), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        p.step = step
        run.log({"kind": "train", "step": step, "loss": loss.item()})
        if step % every and step != steps:
            continue
        head = LabelHead(lin.weight.detach().clone(), lin.bias.detach().clone(), mean, std, labels)
        row: dict[str, Any] = {"kind": "validation", "step": step, "val_loss": None, "metric": None}
        if xv is not None:
            with torch.no_grad():
                lv = head.logits(xv)
            refs = [str(r.reference) for r in val]
            row["val_loss"] = float(
                F.cross_entropy(lv, torch.tensor([index.get(r, 0) for r in refs]))
            )
            row["metric"] = metric(task, [labels[i] for i in lv.argmax(-1).tolist()], refs)
        run.log(row)
        p.evals.append(row)
        if best is None or row["metric"] is None or row["metric"] > p.best_metric:
            best, p.best_metric, p.best_val_loss, p.best_step, p.bad_evals = (
                {"head": head},
                row["metric"],
                row["val_loss"],
                step,
                0,
            )
        else:
            p.bad_evals += 1
            if p.bad_evals >= cfg.patience:
                p.stopped_early = True
                break
    p.train_seconds = time.perf_counter() - t1 + feature_s
    p.tokens = 0
    assert best is not None
    if show:
        console.print(
            f"label head: {len(train)} examples, features {feature_s:.1f}s, best {p.best_metric}"
        )
    save_label_head(best["head"], tok, run.best_dir, {"method": "label_head", **meta})
    return p, {
        "train_records": len(train),
        "validation_records": len(val),
        "feature_seconds": round(feature_s, 2),
    }
