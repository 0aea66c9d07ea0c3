"""`head` on a classify task: a linear label head on the frozen model's mean-pooled last hidden
state (the classic feature-extraction recipe). Features are computed once, so training the
head takes seconds.

For inference the head is wrapped in `LabelHeadModel`, whose `answer_greedy` gives what
`models.generate` gets from greedy decoding (the label's tokens, then end-of-turn), so
prediction and evaluation use it without knowing it is not a language model. The server
refuses it (it batches token by token).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch  # this module is only imported when a label head is trained or loaded

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.records import Record, Task
from whetstone.train.config import TrainConfig
from whetstone.train.runs import Run
from whetstone.util import atomic_dir

FILE = "label_head.safetensors"


def pooled_features(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Mean of the last hidden state over the real (non-padding) tokens."""
    import torch

    body = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        h = body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return ((h * m).sum(1) / m.sum(1).clamp(min=1)).float()


def record_features(
    model: Any, tok: Any, task: Task, records: list[Record], max_length: int
) -> Any:
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


class LabelHead:
    """Standardise the features, then one linear layer to the labels."""

    def __init__(self, weight: Any, bias: Any, mean: Any, std: Any, labels: list[str]):
        self.weight, self.bias, self.mean, self.std, self.labels = weight, bias, mean, std, labels

    def logits(self, feats: Any) -> Any:
        return ((feats - self.mean) / self.std) @ self.weight.T + self.bias


def train_label_head(
    model: Any,
    tok: Any,
    task: Task,
    train: list[Record],
    val: list[Record],
    cfg: TrainConfig,
    run: Run,
    meta: dict[str, Any],
    *,
    show: bool,
) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from whetstone.evaluate.metrics import main_score
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
            row["metric"] = main_score(task, [labels[i] for i in lv.argmax(-1).tolist()], refs)
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
    save(best["head"], tok, run.best_dir, meta)
    return p, {
        "train_records": len(train),
        "validation_records": len(val),
        "feature_seconds": round(feature_s, 2),
    }


def save(head: LabelHead, tok: Any, folder: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from whetstone.train.artefacts import write_meta

    try:
        with atomic_dir(folder, replace="owned") as tmp:  # the run's own best/
            save_file(
                {
                    "weight": head.weight.contiguous(),
                    "bias": head.bias.contiguous(),
                    "mean": head.mean.contiguous(),
                    "std": head.std.contiguous(),
                },
                str(tmp / FILE),
            )
            tok.save_pretrained(tmp)
            write_meta(tmp, method="head", labels_head=head.labels, **meta)
    except OSError as e:
        raise WhetstoneError(f"could not save the label head to {folder}: {e}") from None


def load(model: Any, tok: Any, folder: Path) -> Any:
    from safetensors.torch import load_file

    from whetstone.train.artefacts import read_meta

    t = load_file(str(folder / FILE))
    labels = list(read_meta(folder)["labels_head"])
    return LabelHeadModel(
        model, tok, LabelHead(t["weight"], t["bias"], t["mean"], t["std"], labels)
    )


class LabelHeadModel(torch.nn.Module):
    """A frozen causal LM plus a label head, answering `generate()` with a label."""

    def __init__(self, model: Any, tok: Any, head: LabelHead):
        super().__init__()
        self.lm = model
        self.head = head
        eos = tok.eos_token_id
        self.label_ids = [
            [*tok.encode(label, add_special_tokens=False), eos] for label in head.labels
        ]

    def answer_greedy(
        self, input_ids: Any, attention_mask: Any, max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        """What `models.generate` asks of a model that answers in its own way: per row, the
        label's tokens (end-of-turn included) and their log-probabilities (the whole label's
        log-probability spread over its tokens)."""
        import torch

        feats = pooled_features(self.lm, input_ids, attention_mask)
        logp = torch.log_softmax(self.head.logits(feats.cpu()), -1)
        out = []
        for row, b in enumerate(logp.argmax(-1).tolist()):
            ids = self.label_ids[b][:max_new_tokens]
            out.append((list(ids), [float(logp[row, b]) / len(self.label_ids[b])] * len(ids)))
        return out
