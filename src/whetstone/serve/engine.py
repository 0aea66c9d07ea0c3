"""The model and its batching worker: iteration-level (continuous) batching.

Requests become `Job`s on a queue. One background thread owns the model and runs one
*iteration* at a time: it admits waiting jobs into the running batch, then advances every row
of that batch by one token in a single forward pass, with a KV cache. Admission happens between
any two decode steps: the newcomers' prompts are prefilled together (left-padded, with their
own attention mask and position ids), each gets its first token from that prefill, and their
cache is merged into the running batch's (`Rows.merge`): the shorter cache is padded on the
left along the sequence axis, and masked there, so every row keeps its own positions. A row
leaves the batch (and its cache) the step it finishes, and cache columns that are padding for
every remaining row are trimmed, so the cache never grows past the longest live row. A job
arriving while others decode therefore starts at the next step instead of waiting for the
whole batch to finish. When the engine is idle, the first job waits up to `max_wait_ms` for
others (or until `max_batch_size`), so that a burst is prefilled in one pass.

Rows of one batch may use DIFFERENT adapters: PEFT's mixed adapter batches
(`adapter_names=[...]`, "__base__" for base rows) run them in one forward pass. DoRA adapters
cannot join a mixed batch (PEFT refuses), so a DoRA adapter's jobs run in a batch of their own:
only jobs of the running batch's group (that one DoRA adapter, or any mix of LoRA adapters and
base) are admitted. Admission into a running batch is strictly first come, first served: a job
that cannot join (another group, or one adapter too many) stops admission until the batch has
drained enough for it, so it never starves behind later arrivals.

Each row keeps its own sampling settings, so jobs never need grouping by them: greedy when
`temperature` is 0 or unset (the default: answers are reproducible and comparable across
versions), else temperature + nucleus (`top_p`) sampling; its own `max_tokens` and `stop`
strings; its own `seed` (a generator of its own, so a seeded answer never depends on its
batch-mates' draws); token log-probabilities kept only for rows that ask (`token_text`). Jobs
of one prompt admitted together (a request's `n` samples) share one prefill row. The latency
histograms (time to first token, inter-token latency) observe each row's tokens as they are
sampled. A row may be constrained to JSON of a schema (`models.constrain`, a grammar per row,
so constrained and free rows share a batch). A row ends, and its tokens become text, by
`models.decoding`: the stop rule that
evaluation and batch prediction use too. Loading and unloading adapters (the admin endpoints)
run on the engine thread between two steps; unloading an adapter that running rows use waits
until they finish, and no new job of that adapter is admitted meanwhile. A classify task's
answer by label likelihood (`score`) is such a chore too: its own forward passes, between two
steps, with the route's adapter made the active one. The batch histograms
(`whetstone_batch_size`, `whetstone_batch_adapters`) observe every forward pass: each prefill
and each decode step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from whetstone.models.constrain import Constraint, Grammar, advance_rows, mask_rows
from whetstone.models.decoding import Decoder
from whetstone.models.kv_cache import cache_arg, cache_out
from whetstone.models.label_scoring import LabelScores, score_labels
from whetstone.registry import AdapterVersion
from whetstone.serve.adapters import AdapterPool
from whetstone.serve.errors import APIError
from whetstone.serve.metrics import Metrics
from whetstone.serve.settings import Settings
from whetstone.serve.token_text import TokenLogprob, pieces

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer

log = logging.getLogger("whetstone.serve.engine")


@dataclass
class Delta:
    text: str
    # The tokens this text completes, where the job asked for token log-probabilities.
    logprobs: list[TokenLogprob] | None = None
    index: int = 0  # the choice it belongs to (`n` > 1), set by the request's side


@dataclass
class Done:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    confidence: float  # mean log-probability of the answer's tokens, as in models.generate
    logprobs: list[TokenLogprob] | None = None  # every token of `text`, where asked for
    index: int = 0


@dataclass
class Failed:
    error: APIError
    index: int = 0


Event = Delta | Done | Failed


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: AdapterVersion | None
    max_tokens: int
    emit: Callable[[Event], object]  # called from the engine thread; what it returns is unused
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    # Sampling draws from a generator of this seed (reproducible), else torch's global one.
    seed: int | None = None
    # Token log-probabilities with this many alternatives each (0: the chosen token's only);
    # None: none are kept.
    logprobs: int | None = None
    model: str = ""  # the label of the latency histograms (the route's model)
    # The answer is JSON this grammar allows (`models.constrain`): a request's
    # `response_format`, an extract task's schema. None: unconstrained.
    grammar: Grammar | None = None
    cancelled: bool = False
    # decoding state
    tokens: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    sent: int = 0
    finished: bool = False  # no more events: Done or Failed was emitted, or cancelled
    generator: Any = None  # torch.Generator of `seed`, made on the model's device
    scored: list[TokenLogprob] = field(default_factory=list)  # per token, where `logprobs`
    scored_sent: int = 0  # how many of `scored` went out with a Delta
    submitted: float = 0.0  # perf_counter() at submit
    last_token_at: float = 0.0  # perf_counter() at its newest token
    constraint: Constraint | None = None  # its place in `grammar`, from its first token on

    def constrained(self) -> Constraint | None:
        """The job's constraint (started at its first token), or None."""
        if self.grammar is not None and self.constraint is None:
            self.constraint = self.grammar.start()
        return self.constraint

    @property
    def key(self) -> str:
        return self.adapter.name if self.adapter else "__base__"

    def done(self, text: str, finish_reason: str) -> Done:
        """The job's end event with `text`, counting the tokens decoded so far."""
        n = len(self.tokens)
        return Done(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=n,
            confidence=self.logprob_sum / n if n else 0.0,
            logprobs=None if self.logprobs is None else self.scored[: self.scored_sent],
        )


def _pad_left(t: Any, n: int, dim: int) -> Any:
    """`t` with `n` zero columns prepended along `dim` (negative, counted from the end)."""
    if n == 0:
        return t
    import torch.nn.functional as F

    # F.pad takes (left, right) pairs starting from the LAST dimension.
    return F.pad(t, (0, 0) * (-dim - 1) + (n, 0))


def _shared(jobs: list[Job], names: list[str]) -> tuple[list[Job], list[str], list[int]]:
    """The jobs to prefill, and for each of `jobs` the prefill row it takes: jobs of one
    prompt on one adapter (the `n` samples of a request, or equal requests arriving together)
    share one prefill, their cache row then repeated."""
    firsts: dict[tuple[str, tuple[int, ...]], int] = {}
    prefill: list[Job] = []
    prefill_names: list[str] = []
    row_of: list[int] = []
    for job, name in zip(jobs, names, strict=True):
        key = (name, tuple(job.prompt_ids))
        if key not in firsts:
            firsts[key] = len(prefill)
            prefill.append(job)
            prefill_names.append(name)
        row_of.append(firsts[key])
    return prefill, prefill_names, row_of


@dataclass
class Rows:
    """The running batch: its jobs and the decoding state they share.

    Every row's mask is zeros then ones (left padding only) and all rows end at the newest
    column. Rows need not agree on what column j means: attention only sees the columns the
    mask allows, and RoPE is applied to keys as they are cached, at the row's own position
    id, so where a key sits in the cache never changes what it contributes."""

    jobs: list[Job]
    names: list[str]  # PEFT adapter name per row ("__base__" for the base)
    group: str | None  # the DoRA adapter's key when its jobs run alone, else None
    cache: Any  # transformers DynamicCache: per layer, keys/values [rows, heads, width, dim]
    mask: Any  # [rows, width]: 1 where the cache column holds one of the row's tokens
    pos: Any  # [rows, 1]: position id of each row's next input token
    nxt: Any  # [rows]: each row's next input token (sampled, not yet in the cache)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def mergeable(self) -> bool:
        """Only plain growing caches can be padded and concatenated (a sliding-window or
        quantised layer keeps state that this does not know how to merge)."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def select(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the batch), in that order."""
        import torch

        sel = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.pos, self.nxt = self.mask[sel], self.pos[sel], self.nxt[sel]
        self.jobs = [self.jobs[r] for r in rows]
        self.names = [self.names[r] for r in rows]
        self.trim()

    def merge(self, other: Rows) -> None:
        """Append `other`'s rows. The narrower cache gets masked zero columns on its left, so
        both line up at their newest token (the column the next step writes after)."""
        import torch

        width = max(self.width, other.width)
        a, b = width - self.width, width - other.width
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, a, -2), _pad_left(theirs.keys, b, -2)])
            mine.values = torch.cat(
                [_pad_left(mine.values, a, -2), _pad_left(theirs.values, b, -2)]
            )
        self.mask = torch.cat([_pad_left(self.mask, a, -1), _pad_left(other.mask, b, -1)])
        self.pos = torch.cat([self.pos, other.pos])
        self.nxt = torch.cat([self.nxt, other.nxt])
        self.jobs += other.jobs
        self.names += other.names

    def trim(self) -> None:
        """Drop the leading cache columns that are padding for every row (left by a long
        prompt that has finished, or by merging): the cache stays as wide as the longest live
        row, however long the batch keeps running."""
        lead = int(self.mask.any(0).int().argmax())  # first column some row uses
        if lead == 0:
            return
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, lead:]
            layer.values = layer.values[:, :, lead:]
        self.mask = self.mask[:, lead:]


@dataclass
class _Chore:
    """Admin work on the model, done by the engine thread between two steps."""

    run: Callable[[], Any]
    done: Future[Any]
    drains: str | None = None  # an adapter that must have no running row first


class Engine:
    def __init__(
        self,
        model: PreTrainedModel,
        tok: Tokenizer,
        base_hash: str,
        settings: Settings,
        metrics: Metrics,
    ):
        self.tok = tok
        self.settings = settings
        self.metrics = metrics
        self.pool = AdapterPool(model, base_hash, settings.max_adapters, metrics)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        # Where an answer ends and what its text is: the same rule as evaluation's.
        self.decoder = Decoder.of(model, tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.batch: Rows | None = None  # the running batch; only the engine thread touches it
        self._queue: deque[Job] = deque()
        self._chores: list[_Chore] = []
        self._cond = threading.Condition()  # guards the queue, the chores and the flags
        self._stopping = False
        self._serving = False  # the engine thread runs (else chores run in the caller)
        self._thread: threading.Thread | None = None
        self._dora: dict[str, bool] = {}

    # ---- outside API ---------------------------------------------------------------------
    def start(self) -> None:
        self._serving = True
        self._thread = threading.Thread(target=self._run, name="whetstone-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(30)

    def submit(self, job: Job) -> None:
        job.submitted = time.perf_counter()  # time to first token counts the queue too
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def load(self, av: AdapterVersion) -> None:
        # Running rows' adapters are pinned: loading another never evicts one in use.
        self._chore(lambda: self.pool.get(av, self._active()))

    def unload(self, ref: str) -> bool:
        return bool(self._chore(lambda: self.pool.unload(ref), drains=ref))

    def score(
        self,
        adapter: AdapterVersion | None,
        chat: list[dict[str, str]],
        labels: list[str],
        tokenizer_lock: contextlib.AbstractContextManager[Any],
    ) -> LabelScores:
        """A classify answer by label likelihood (`models.label_scoring`), run on the engine
        thread between two steps like load/unload, so it never races a decode step. The
        scoring tokenizes on this thread: `tokenizer_lock` is the one request threads hold."""
        from peft import PeftModel

        def run() -> LabelScores:
            # The scoring passes name no adapter per row, so PEFT runs its active adapter: make
            # it the route's (a loaded one, so the pool's invariant holds afterwards too; mixed
            # batches name theirs per row and a DoRA batch activates its own each pass), or
            # switch adapters off for the base. Running rows' adapters are pinned, as in `load`.
            name = self.pool.get(adapter, self._active()).name if adapter is not None else None
            if name is not None:
                self.pool.activate(name)
            model = self.pool.model
            off = (
                model.disable_adapter()
                if name is None and isinstance(model, PeftModel)
                else contextlib.nullcontext()
            )
            with off, tokenizer_lock:
                return score_labels(model, self.tok, [chat], labels)[0]

        scores: LabelScores = self._chore(run)
        return scores

    def _chore(self, run: Callable[[], Any], drains: str | None = None) -> Any:
        with self._cond:
            if self._serving:
                chore = _Chore(run, Future(), drains)
                self._chores.append(chore)
                self._cond.notify()
            else:
                chore = None
        if chore is None:  # no engine thread (tests that drive `step` themselves): no batch
            return run()
        return chore.done.result()

    # ---- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        while True:
            with self._cond:
                while not (self._queue or self._chores or self.batch):
                    if self._stopping:
                        self._serving = False
                        return
                    self._cond.wait(0.5)
                if self.batch is None and self._queue:
                    # Idle: give a burst up to max_wait_ms to arrive, to prefill it in one pass.
                    deadline = time.monotonic() + s.max_wait_ms / 1000
                    while len(self._queue) < s.max_batch_size and not self._stopping:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
            self.step()

    def step(self) -> None:
        """One iteration: pending admin chores, then admission of waiting jobs into the
        running batch, then one decode step for every row."""
        self._do_chores()
        with self._cond:
            newcomers = self._plan()
        try:
            if newcomers:
                self._admit(newcomers)
            if self.batch is not None:
                self._decode_step(self.batch)
        except Exception as e:  # a bug or out of memory: fail these rows, keep serving
            log.exception("generation failed")
            hit = newcomers + (self.batch.jobs if self.batch else [])
            self.batch = None
            for job in {id(j): j for j in hit if not j.finished}.values():
                self._fail(job, APIError(500, f"generation failed: {e}", code="server_error"))

    def _fail(self, job: Job, error: APIError) -> None:
        job.finished = True
        job.emit(Failed(error))

    def _active(self) -> set[str]:
        return {j.key for j in self.batch.jobs} if self.batch else set()

    def _do_chores(self) -> None:
        with self._cond:
            chores, self._chores = self._chores, []
        active = self._active()
        for chore in chores:
            if chore.drains is not None and chore.drains in active:
                with self._cond:
                    self._chores.append(chore)  # again after the next step
                continue
            try:
                chore.done.set_result(chore.run())
            except Exception as e:  # the caller gets it
                chore.done.set_exception(e)

    def _is_dora(self, job: Job) -> bool:
        av = job.adapter
        if av is None:
            return False
        if av.name not in self._dora:
            try:
                cfg = json.loads((av.path / "adapter_config.json").read_text())
                self._dora[av.name] = bool(cfg.get("use_dora"))
            except (OSError, ValueError):
                return False  # loading it will fail with a clear message
        return self._dora[av.name]

    def _group(self, job: Job) -> str | None:
        """Jobs may share a forward pass when their groups are equal: a DoRA adapter's key,
        or None for LoRA adapters and the base."""
        return job.key if self._is_dora(job) else None

    def _plan(self) -> list[Job]:
        """Take the jobs to admit now off the queue (the caller holds `_cond`).

        Into a running batch: in arrival order, as long as each fits (the batch's group,
        `max_batch_size`, `max_adapters`, not an adapter being unloaded); the first that does
        not fit stops admission, so later arrivals never overtake it. Into an idle engine: the
        first job sets the group and later jobs that do not fit are skipped, as a fresh batch
        need not wait for anything."""
        s = self.settings
        running = self.batch
        if running is not None and not running.mergeable:
            return []
        draining = {c.drains for c in self._chores}
        room = s.max_batch_size - (len(running.jobs) if running else 0)
        keys = self._active()
        group = running.group if running else None
        fresh = running is None
        taken: list[Job] = []
        skipped: deque[Job] = deque()
        while self._queue and len(taken) < room:
            job = self._queue.popleft()
            if job.cancelled:
                continue  # its client went away before it started
            if fresh and not taken:
                group = self._group(job)
            fits = self._group(job) == group and job.key not in draining
            if fits and job.adapter is not None and job.key not in keys:
                fits = len(keys - {"__base__"}) < s.max_adapters
            if fits:
                taken.append(job)
                keys.add(job.key)
            elif fresh:
                skipped.append(job)
            else:
                self._queue.appendleft(job)
                break
        self._queue.extendleft(reversed(skipped))
        return taken

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill `jobs`, give each its first token, and add those not yet finished to the
        running batch."""
        import torch

        pinned = self._active() | {j.key for j in jobs}
        names: list[str] = []
        ready: list[Job] = []
        for job in jobs:
            if job.adapter is None:
                names.append("__base__")
                ready.append(job)
                continue
            try:
                names.append(self.pool.get(job.adapter, pinned).name)
                ready.append(job)
            except APIError as e:
                self._fail(job, e)
        if not ready:
            return
        dev = next(self.pool.model.parameters()).device
        prefill, prefill_names, row_of = _shared(ready, names)
        width = max(len(j.prompt_ids) for j in prefill)
        ids = torch.full((len(prefill), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefill), width), dtype=torch.long)
        for row, job in enumerate(prefill):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Left padding: positions count real tokens only, as model.generate does.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        group = self._group(ready[0])
        out = self._forward(prefill, prefill_names, group, ids, mask, pos, None)
        cache, logits = cache_out(out), out.logits
        if len(prefill) < len(ready):  # repeat each shared prompt's row for its jobs
            sel = torch.tensor(row_of, device=dev)
            cache.batch_select_indices(sel)
            mask, pos, logits = mask[sel], pos[sel], logits[sel]
        rows = Rows(ready, names, group, cache, mask, pos[:, -1:] + 1, None)
        self._sample(rows, logits)
        if rows.jobs:
            if self.batch is None:
                self.batch = rows
            else:
                self.batch.merge(rows)

    def _decode_step(self, rows: Rows) -> None:
        import torch

        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows.jobs), 1))], dim=1)
        out = self._forward(
            rows.jobs, rows.names, rows.group, rows.nxt[:, None], rows.mask, rows.pos, rows.cache
        )
        rows.pos = rows.pos + 1
        self._sample(rows, out.logits)
        if not rows.jobs:
            self.batch = None

    def _forward(
        self,
        jobs: list[Job],
        names: list[str],
        group: str | None,
        ids: Any,
        mask: Any,
        pos: Any,
        cache: Any,
    ) -> Any:
        """One forward pass over `jobs` (their adapters named per row in `names`)."""
        import torch
        from peft import PeftModel

        model = self.pool.model  # may have become a PeftModel since the batch started
        extra: dict[str, Any] = {}
        if isinstance(model, PeftModel):
            if group is not None:  # a DoRA adapter's own batch: PEFT runs its active adapter
                self.pool.activate(names[0])
            else:
                extra["adapter_names"] = list(names)
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.batch_adapters.observe(len(set(names)))
        with torch.inference_mode():
            return model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                **cache_arg(cache),
                use_cache=True,
                **extra,
            )

    def _sample(self, rows: Rows, logits: Any) -> None:
        """Choose each row's next token from the last position's `logits`, stream it, and
        drop the rows that finished."""
        import torch

        last = logits[:, -1, :].float()
        # Each constrained row chooses among the tokens its grammar allows; log-probabilities
        # (confidence, `logprobs`) stay the model's own.
        constraints = [job.constrained() for job in rows.jobs]
        nxt = self._choose(mask_rows(last, constraints, self.decoder.stop_ids), rows.jobs)
        advance_rows(constraints, nxt.tolist())
        logp_all = torch.log_softmax(last, -1)
        logps = logp_all.gather(1, nxt[:, None])[:, 0].tolist()
        rows.nxt = nxt
        keep = []
        now = time.perf_counter()
        for row, job in enumerate(rows.jobs):
            tok_id = int(nxt[row])
            self._observe_latency(job, now)
            if job.logprobs is not None:
                self._score(job, tok_id, logps[row], logp_all[row])
            job.tokens.append(tok_id)
            job.logprob_sum += logps[row]
            if not self._advance(job):
                keep.append(row)
        if not keep:
            rows.jobs, rows.names = [], []
        elif len(keep) < len(rows.jobs):
            rows.select(keep)

    def _observe_latency(self, job: Job, now: float) -> None:
        """Time to the job's first token (from its submission, queueing included), then the
        time between each two of its tokens, as vLLM measures them."""
        model = job.model or job.key
        if not job.tokens:
            self.metrics.time_to_first_token.labels(model).observe(now - job.submitted)
        else:
            self.metrics.inter_token_latency.labels(model).observe(now - job.last_token_at)
        job.last_token_at = now

    def _score(self, job: Job, tok_id: int, logprob: float, logp: Any) -> None:
        """Keep the chosen token's log-probability (and the `job.logprobs` most likely
        alternatives), each with the text it adds to the answer (`token_text`)."""
        import torch

        top: list[tuple[int, float]] = []
        if job.logprobs:
            values, ids = torch.topk(logp, min(job.logprobs, int(logp.shape[-1])))
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        texts = pieces(self.tok, job.tokens, [tok_id, *(i for i, _ in top)])
        previous = job.scored[-1] if job.scored else None
        offset = previous.offset + len(previous.token) if previous else 0
        alternatives = [(t, lp) for t, (_, lp) in zip(texts[1:], top, strict=True)]
        job.scored.append(TokenLogprob(texts[0], logprob, offset, alternatives))

    def _choose(self, logits: Any, jobs: list[Job]) -> Any:
        import torch

        nxt = logits.argmax(-1)
        for row, job in enumerate(jobs):
            if not job.temperature:
                continue
            probs = torch.softmax(logits[row] / job.temperature, -1)
            if job.top_p is not None and job.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                # Keep the smallest set of tokens whose mass reaches top_p (the first always).
                cut = sorted_p.cumsum(-1) - sorted_p > job.top_p
                sorted_p[cut] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            if job.seed is not None and job.generator is None:
                job.generator = torch.Generator(device=probs.device).manual_seed(job.seed)
            nxt[row] = torch.multinomial(probs / probs.sum(), 1, generator=job.generator)[0]
        return nxt

    def _advance(self, job: Job) -> bool:
        """Stream the new text of `job`; True when it is finished."""
        if job.cancelled:
            job.finished = True  # nobody listens any more
            return True
        answer = self.decoder.answer(job.tokens, job.stop)
        text = answer.text
        finish = "stop" if answer.stopped else None
        if finish is None and len(job.tokens) >= job.max_tokens:
            finish = "length"
        # Hold back what might be the start of a stop string or half a character.
        safe = text
        if finish is None:
            hold = max((len(s) for s in job.stop), default=1) - 1
            safe = text[: len(text) - hold] if hold else text
            safe = safe.rstrip("\ufffd")
        covered = self._covered(job, safe, finish is not None)
        if len(safe) > job.sent or covered:
            job.emit(Delta(safe[job.sent :], covered))
            job.sent = len(safe)
        if finish is not None:
            job.finished = True
            job.emit(job.done(text, finish))
            return True
        return False

    def _covered(self, job: Job, text: str, final: bool) -> list[TokenLogprob] | None:
        """The scored tokens not yet sent whose text lies within `text` (the answer so far);
        once `final`, also one that a stop string cut through, and the last takes what
        decoding the whole answer shows for bytes that never made a character. Never a stop
        id (the end of the turn is no part of the answer)."""
        if job.logprobs is None:
            return None
        upto = len(text)
        start = end = job.scored_sent
        while end < len(job.scored) and job.tokens[end] not in self.decoder.stop_ids:
            tl = job.scored[end]
            if not (tl.offset + len(tl.token) <= upto or (final and tl.offset < upto)):
                break
            end += 1
        if final and end > start:
            last = job.scored[end - 1]
            last.token += text[last.offset + len(last.token) :]
        job.scored_sent = end
        return job.scored[start:end]
