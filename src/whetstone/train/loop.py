"""The training loop, to read top to bottom (nanoGPT / torchtune style): `train_loop` runs
epochs, `train_epoch` its steps, each a call to a named step (`train_step`, `log_step`,
`run_validation`, `save_progress`).

AdamW, warmup then cosine or linear decay, gradient accumulation and clipping. Every
`eval_every` steps a cheap validation (one forward pass over a bounded validation sample:
loss and teacher-forced token accuracy); the best by token accuracy (ties: lower loss) is
saved to `best/`, and `patience` validations without improvement stop the run. Generating
answers costs many forward passes per record, so the task's own metric on greedy generations
is computed once, at the end, to choose between the best validation's weights and the final
ones (`choose_checkpoint`). A resumable checkpoint is written every `save_every` steps and at
each validation.

The same loop runs on several processes (see `whetstone.train.distributed`): each takes its
share of every batch and of validation, and only the main process writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from whetstone.errors import WhetstoneError
from whetstone.records import Kind, Record, Task
from whetstone.train.config import LoopConfig
from whetstone.train.data import IGNORE, Batch, Example, make_batch, plan_epoch
from whetstone.train.distributed import Processes
from whetstone.train.methods import causal_lm, load_trainable_state, trainable_state
from whetstone.train.runs import Run, save_checkpoint, set_rng_state
from whetstone.util import atomic_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM, Tokenizer


@dataclass
class Progress:
    """Where the run is: everything besides weights/optimizer that a resume restores."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    best_score: float | None = None  # the cheap validation's token accuracy at best_step
    stopped_early: bool = False
    tokens: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    evals: list[dict[str, Any]] = field(default_factory=list)


# The task's main metric on 0..1 from (task, predictions, references). Evaluation owns the
# metrics (`whetstone.evaluate.metrics.main_score`); training is given it to pick its best step.
Metric = Callable[[Task, list[str], list[str]], float]


@dataclass
class Setup:
    """What the loop trains and on what, built by `whetstone.train.api`."""

    cfg: LoopConfig
    task: Task
    model: CausalLM
    tok: Tokenizer
    train: list[Example]
    val_examples: list[Example]
    val_records: list[Record]
    run: Run
    max_new_tokens: int
    train_prefix: list[int]  # prompt tokens every training example starts with (see data.py)
    val_prefix: list[int]
    artefact_meta: dict[str, Any]
    metric: Metric
    procs: Processes = field(default_factory=Processes)


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 mixed precision on CUDA cards that have bf16 (weights and optimizer stay fp32);
    fp32 elsewhere: CPU bf16 matmuls are slower here, and fp16 would need loss scaling."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def attention_mask(lm: PreTrainedModel, batch: Batch, device: str) -> torch.Tensor:
    """The batch's block-diagonal causal mask in the form the model's attention takes: boolean
    for SDPA/flex, additive float for eager attention."""
    import torch

    mask = batch.attention_mask(device)
    if getattr(lm.config, "_attn_implementation", "sdpa") == "eager":
        dtype = lm.get_output_embeddings().weight.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return mask


def answer_loss(model: CausalLM, batch: Batch, device: str) -> torch.Tensor:
    """Summed cross-entropy over the answer tokens of a batch, each weighted by its example's
    weight (a teacher's label may count less than a person's)."""
    losses = token_losses(model, batch, device)[0]
    return (losses * batch.answer_weights().to(losses.device)).sum()


def token_losses(model: CausalLM, batch: Batch, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every answer token of a batch, and the batch row each belongs to."""
    import torch.nn.functional as F

    logits, targets, rows = answer_logits(model, batch, device)
    return F.cross_entropy(logits.float(), targets, reduction="none"), rows


def answer_logits(
    model: CausalLM, batch: Batch, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits at every answer token of a batch, its target token, and the batch row it
    belongs to. The model body runs on every token, but the vocabulary projection only where a
    loss is taken: prompt positions never materialise their (tokens x vocab) logits."""
    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    targets = batch.targets.to(device)
    with autocast(device):
        hidden = body(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            attention_mask=attention_mask(lm, batch, device),
            use_cache=False,
        ).last_hidden_state
        where = targets != IGNORE
        logits = lm.get_output_embeddings()(hidden[where])
    return logits, targets[where], where.nonzero()[:, 0]


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)
    return (
        0.5 * (1 + math.cos(math.pi * min(1.0, done))) if kind == "cosine" else max(0.0, 1 - done)
    )


def total_steps(cfg: LoopConfig, n_examples: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps)."""
    micro = -(-n_examples // cfg.batch_size)
    per_epoch = -(-micro // cfg.grad_accum)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def validate(s: Setup, device: str, pad_id: int) -> dict[str, Any]:
    """The cheap validation run every `eval_every` steps: loss and teacher-forced token
    accuracy (the share of answer tokens the model would predict next) on the validation
    sample, one forward pass and no generation. Each process takes its share of the examples;
    the sums are gathered."""
    import torch
    import torch.nn.functional as F

    s.model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    mine = s.procs.share(list(range(len(s.val_examples))))
    with torch.no_grad():
        for start in range(0, len(mine), s.cfg.batch_size):
            idx = mine[start : start + s.cfg.batch_size]
            batch = make_batch(
                s.val_examples,
                idx,
                packing=s.cfg.packing,
                capacity=max(s.cfg.pack_length, s.cfg.max_length),
                pad_id=pad_id,
                prefix=s.val_prefix,
            )
            logits, targets, _ = answer_logits(s.model, batch, device)
            loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            n += batch.target_tokens
    total_loss, hits, targets_n = s.procs.sum([loss_sum, correct, n])  # over all processes
    s.model.train()
    return {
        "val_loss": total_loss / max(targets_n, 1),
        "token_accuracy": hits / max(targets_n, 1),
        "metric": None,
    }


def generation_metric(s: Setup) -> float:
    """The task's own metric on the validation sample's answers, greedy generations (a
    classify task's: by label likelihood, as evaluation answers it): what the checkpoint
    choice at the end of a run is made by. Each process answers its share."""
    from whetstone.prompts import chat, normalise_answer

    s.model.eval()
    recs = s.procs.share(list(enumerate(s.val_records)))
    chats = [chat(s.task, r.input) for _, r in recs]
    texts = answer_texts(s, chats) if chats else []
    answers = [(i, normalise_answer(s.task, t)) for (i, _), t in zip(recs, texts, strict=True)]
    by_index = dict(s.procs.gather(answers))
    preds = [by_index[i] for i in range(len(s.val_records))]
    s.model.train()
    return float(s.metric(s.task, preds, [str(r.reference) for r in s.val_records]))


def answer_texts(s: Setup, chats: list[list[dict[str, str]]]) -> list[str]:
    """The model's answers to `chats`: the most likely label for a classify task with labels,
    else its greedy generation within the run's answer budget."""
    labels = list(s.task.labels or []) if s.task.kind == Kind.classify else []
    if labels:
        from whetstone.models.label_scoring import score_labels

        return [
            x.label
            for x in score_labels(s.model, s.tok, chats, labels, max_prompt_tokens=s.cfg.max_length)
        ]
    from whetstone.models.generate import generate

    gens = generate(
        s.model, s.tok, chats, max_new_tokens=s.max_new_tokens, max_prompt_tokens=s.cfg.max_length
    )
    return [g.text for g in gens]


def save_best(s: Setup) -> None:
    from whetstone.models.artefacts import save_artefact
    from whetstone.train import methods

    save_weights = methods.get(s.cfg.method).save
    try:
        with atomic_dir(s.run.best_dir, replace="owned") as tmp:  # the run's own best/
            save_artefact(
                s.model,
                s.tok,
                tmp,
                save_weights=save_weights,
                method=s.cfg.method,
                **s.artefact_meta,
            )
    except OSError as e:
        raise WhetstoneError(f"could not save the best adapter to {s.run.best_dir}: {e}") from None


def checkpoint(s: Setup, opt: Any, sched: Any, p: Progress, best: dict[str, Any] | None) -> None:
    try:
        save_checkpoint(
            s.run,
            {
                "trainable": trainable_state(s.model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                # The best validation's weights, when they are not the current ones: a resumed
                # run makes the same choice at its end as one never stopped.
                "best": best if p.best_step != p.step else None,
            },
            p.__dict__,
        )
    except OSError as e:
        raise WhetstoneError(
            f"could not save the checkpoint in {s.run.checkpoint_dir}: {e}"
        ) from None


@contextlib.contextmanager
def live(show: bool, total: int, start: int) -> Iterator[Any]:
    from whetstone.progress import console, progress

    if not show:
        yield lambda **_: None, lambda _msg: None
        return
    with progress() as bar:
        tid = bar.add_task("train", total=total, completed=start, info="")

        def update(advance: int = 0, info: str = "") -> None:
            bar.update(tid, advance=advance, info=info)

        def note(msg: str) -> None:
            # On a terminal the bar shows it; in a log file a line per validation is enough.
            if not console.is_terminal:
                console.print(msg)

        yield update, note


@dataclass
class Training:
    """What one run of the loop works with, besides the `Setup` it was given."""

    s: Setup
    device: str
    pad_id: int
    params: list[Any]  # the trainable ones: the optimizer's and gradient clipping's
    opt: Any
    sched: Any
    total: int  # optimizer steps of the whole run
    eval_every: int
    loss_of: Callable[[Batch], Any]
    p: Progress
    best_state: dict[str, Any] | None = None  # the trainable weights at p.best_step


# Validation's share of the compute at default settings: cheap validations take at most about
# this fraction of the training compute (a forward pass costs about a third of a training
# step's forward and backward per token), at most `MAX_VALIDATIONS` of them.
VALIDATION_SHARE = 0.1
MAX_VALIDATIONS = 4


def default_eval_every(s: Setup, total: int) -> int:
    """Steps between validations when the config leaves it open: up to `MAX_VALIDATIONS` a
    run, fewer when the validation sample is large beside the training a run does (a run of
    ten steps validates once, at its end). Counted in tokens, so the schedule is the same on
    any machine."""
    val_tokens = sum(len(e) for e in s.val_examples)
    if not val_tokens or not s.train:
        return total
    step_tokens = sum(len(e) for e in s.train) / len(s.train) * s.cfg.batch_size * s.cfg.grad_accum
    affordable = int(VALIDATION_SHARE * 3 * total * step_tokens / val_tokens)
    return math.ceil(total / max(1, min(MAX_VALIDATIONS, affordable)))


def start(s: Setup, resume: dict[str, Any] | None) -> Training:
    """Optimizer, schedule and progress: fresh, or restored from a resumable checkpoint."""
    import torch

    from whetstone.models.base import device as best_device

    cfg, model = s.cfg, s.model
    device = best_device()
    pad_id = s.tok.pad_token_id if s.tok.pad_token_id is not None else s.tok.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    _, total = total_steps(cfg, len(s.train))
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda st: lr_factor(st, total, warmup, cfg.scheduler)
    )
    p = Progress()
    best = None
    if resume is not None:
        load_trainable_state(model, resume["trainable"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        p = Progress(**resume["progress"])
        set_rng_state(resume["rng"])
        best = resume.get("best")
        if best is None and p.best_step == p.step:
            best = resume["trainable"]
    model.train()
    return Training(
        s=s,
        device=device,
        pad_id=pad_id,
        params=params,
        opt=opt,
        sched=sched,
        total=total,
        eval_every=cfg.eval_every or default_eval_every(s, total),
        loss_of=s.procs.loss_function(model, lambda m, b: answer_loss(m, b, device)),
        p=p,
        best_state=best,
    )


def micro_batches(t: Training, micro: list[list[int]]) -> tuple[list[Batch], list[float]]:
    """This process's batches of one optimizer step, and the weight each counts with.

    Each process takes its share of every micro-batch: together they see the batch one
    process would. One left without examples still runs one with no weight, since DDP needs
    every process in every backward pass."""
    s, cfg = t.s, t.s.cfg
    shares = [s.procs.share(idx) for idx in micro]
    group = [
        make_batch(
            s.train,
            mine or idx[:1],
            packing=cfg.packing,
            capacity=max(cfg.pack_length, cfg.max_length),
            pad_id=t.pad_id,
            prefix=s.train_prefix,
        )
        for mine, idx in zip(shares, micro, strict=True)
    ]
    return group, [1.0 if mine else 0.0 for mine in shares]


def train_step(t: Training, micro: list[list[int]]) -> float:
    """One optimizer step over the micro-batches `micro`; returns the batch's mean loss."""
    import torch

    procs, p = t.s.procs, t.p
    group, weights = micro_batches(t, micro)
    t0 = time.perf_counter()
    # The mean over the answer tokens of the whole batch, on every process.
    (n_targets,) = procs.sum(
        [sum(b.target_tokens * w for b, w in zip(group, weights, strict=True))]
    )
    loss_sum, tokens = 0.0, 0
    for b, w in zip(group, weights, strict=True):
        loss = t.loss_of(b) * w / n_targets
        procs.backward(loss)
        loss_sum += loss.item()
        tokens += b.tokens if w else 0
    loss_sum, all_tokens = procs.sum([loss_sum, tokens])  # over all processes
    torch.nn.utils.clip_grad_norm_(t.params, t.s.cfg.max_grad_norm)
    t.opt.step()
    t.sched.step()
    t.opt.zero_grad(set_to_none=True)
    p.train_seconds += time.perf_counter() - t0
    p.step += 1
    p.micro += len(group)
    p.tokens += int(all_tokens)
    return loss_sum


def log_step(t: Training, loss: float, update: Callable[..., None]) -> None:
    """The step's row in metrics.jsonl (main process) and the progress bar's line."""
    p = t.p
    tps = p.tokens / max(p.train_seconds, 1e-9)
    if t.s.procs.is_main:
        t.s.run.log(
            {
                "kind": "train",
                "step": p.step,
                "epoch": p.epoch,
                "loss": loss,
                "lr": t.sched.get_last_lr()[0],
                "tokens_per_s": round(tps, 1),
            }
        )
    score = p.evals[-1].get("token_accuracy") if p.evals else None
    last = f" · val acc {score:.3f}" if score is not None else ""
    update(advance=1, info=f"loss {loss:.4f}{last} · {tps:,.0f} tok/s")


def improves(p: Progress, row: dict[str, Any]) -> bool:
    """Whether a validation beats the best so far: a higher token accuracy, or the same at a
    lower loss. The first one, and any without a score (no validation split), count as best."""
    score = row.get("token_accuracy")
    return (
        p.best_step is None
        or score is None
        or p.best_score is None
        or score > p.best_score
        or (score == p.best_score and row["val_loss"] < p.best_val_loss)
    )


def run_validation(t: Training) -> None:
    """Validate now, count it towards early stopping, and (main process) log it and save the
    weights to `best/` when they are the best yet."""
    s, p = t.s, t.p
    t0 = time.perf_counter()
    # Without a validation split the latest weights are kept, judged by nothing.
    row = validate(s, t.device, t.pad_id) if s.val_records else {"val_loss": None, "metric": None}
    p.eval_seconds += time.perf_counter() - t0
    row = {"kind": "validation", "step": p.step, "epoch": p.epoch, **row}
    better = improves(p, row)
    if better:
        p.best_score, p.best_val_loss, p.best_step, p.bad_evals = (
            row.get("token_accuracy"),
            row["val_loss"],
            p.step,
            0,
        )
        # Kept (and checkpointed) for the choice at the end, `choose_checkpoint`.
        t.best_state = trainable_state(s.model) if s.val_records else None
    else:
        p.bad_evals += 1
    p.evals.append(row)

    def write() -> None:
        s.run.log(row)
        if better:
            save_best(s)
        s.run.plot(s.task.main_metric)

    s.procs.on_main(write)


def choose_checkpoint(t: Training) -> None:
    """The one generation pass of a run: the task's metric on the validation sample for the
    weights the cheap validations chose (best/) and, when they differ, for the final weights;
    the better of the two ends in best/ and gives the run its `best_metric`."""
    s, p = t.s, t.p
    if not s.val_records:
        return
    t0 = time.perf_counter()
    scores = {p.step: generation_metric(s)}
    if p.best_step is not None and p.best_step != p.step and t.best_state is not None:
        latest = trainable_state(s.model)
        load_trainable_state(s.model, t.best_state)
        scores[p.best_step] = generation_metric(s)
        load_trainable_state(s.model, latest)
    # Only a checkpoint from before this version lacks the best weights: best/ stands then.
    known_best = p.best_step in scores
    chosen = max(scores, key=lambda step: (scores[step], step == p.best_step))
    if known_best and chosen != p.best_step:  # the final weights: the last validation's row
        last = p.evals[-1]
        p.best_step, p.best_score, p.best_val_loss = (
            chosen,
            last["token_accuracy"],
            last["val_loss"],
        )
        s.procs.on_main(lambda: save_best(s))
    p.best_metric = scores[chosen] if known_best else None
    p.eval_seconds += time.perf_counter() - t0
    row = {
        "kind": "checkpoint_choice",
        "step": p.step,
        "metric_by_step": {str(k): v for k, v in scores.items()},
        "chosen_step": p.best_step,
        "metric": p.best_metric,
    }
    p.evals.append(row)
    s.procs.on_main(lambda: s.run.log(row))


def validation_line(t: Training, loss: float) -> str:
    """The line a log file gets for the latest validation."""
    ev = t.p.evals[-1]
    val_loss = ev["val_loss"] if ev["val_loss"] is None else round(ev["val_loss"], 4)
    return (
        f"step {t.p.step}/{t.total} · loss {loss:.4f} · val loss {val_loss} · "
        f"val token accuracy {ev.get('token_accuracy')}"
    )


def save_progress(t: Training) -> None:
    """The resumable checkpoint, written by the main process."""
    t.s.procs.on_main(lambda: checkpoint(t.s, t.opt, t.sched, t.p, t.best_state))


def train_epoch(
    t: Training, update: Callable[..., None], note: Callable[[str], None], lengths: list[int]
) -> None:
    """The optimizer steps of the current epoch that are still to run (all of it, or the rest
    of a resumed one), validating, checkpointing and stopping early on the way."""
    cfg, p = t.s.cfg, t.p
    plan = plan_epoch(lengths, cfg.batch_size, seed=cfg.seed, epoch=p.epoch, packing=cfg.packing)
    while p.micro < len(plan) and p.step < t.total:
        loss = train_step(t, plan[p.micro : p.micro + cfg.grad_accum])
        log_step(t, loss, update)
        evaluated = p.step % t.eval_every == 0 or p.step == t.total
        if evaluated:
            run_validation(t)
            note(validation_line(t, loss))
            if p.bad_evals >= cfg.patience:
                p.stopped_early = True
        if evaluated or p.step % cfg.save_every == 0:
            save_progress(t)
        if p.stopped_early:
            break
    if p.micro >= len(plan):
        p.epoch += 1
        p.micro = 0


def train_loop(s: Setup, *, resume: dict[str, Any] | None = None, show: bool = True) -> Progress:
    """Train `s.model` to the end of its epochs or steps, or until validation stops improving;
    `resume` is a checkpoint (see `whetstone.train.runs`) to carry on from."""
    t = start(s, resume)
    p = t.p
    lengths = [len(e) for e in s.train]
    with live(show and s.procs.is_main, t.total, p.step) as (update, note):
        while p.epoch < s.cfg.epochs and p.step < t.total and not p.stopped_early:
            train_epoch(t, update, note, lengths)
        if p.best_step is None:  # stopped before any validation (e.g. resumed a finished run)
            run_validation(t)
            save_progress(t)
        note("choosing the checkpoint by the task's metric on generations")
        choose_checkpoint(t)
    return p
