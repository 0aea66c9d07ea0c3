"""The model and its batching worker.

Requests become `Job`s on a queue. One background thread owns the model: it waits for a job,
gathers more for up to `max_wait_ms` (or until `max_batch_size`), and decodes them together,
token by token, with a KV cache. Rows of one batch may use DIFFERENT adapters: PEFT's mixed
adapter batches (`adapter_names=[...]`, "__base__" for base rows) run them in one forward pass.
DoRA adapters cannot join a mixed batch (PEFT refuses), so a DoRA adapter's jobs run in a
batch of their own.

Each row keeps its own sampling settings, so jobs never need grouping by them: greedy when
`temperature` is 0 or unset (the default: answers are reproducible and comparable across
versions), else temperature + nucleus (`top_p`) sampling; its own `max_tokens` and `stop`
strings; rows that finish leave the batch (and its cache) at once. The batch is fixed once
decoding starts: a job arriving meanwhile waits for the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from whetstone.registry import AdapterVersion
from whetstone.serve.adapters import AdapterPool
from whetstone.serve.errors import APIError
from whetstone.serve.metrics import Metrics
from whetstone.serve.settings import Settings

log = logging.getLogger("whetstone.serve.engine")


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    confidence: float  # mean log-probability of the answer's tokens, as in models.generate


@dataclass
class Failed:
    error: APIError


Event = Delta | Done | Failed


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: AdapterVersion | None
    max_tokens: int
    emit: Callable[[Event], None]  # called from the engine thread
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    cancelled: bool = False
    # decoding state
    tokens: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    sent: int = 0

    @property
    def key(self) -> str:
        return self.adapter.name if self.adapter else "__base__"


class Engine:
    def __init__(self, model: Any, tok: Any, base_hash: str, settings: Settings, metrics: Metrics):
        self.tok = tok
        self.settings = settings
        self.metrics = metrics
        self.pool = AdapterPool(model, base_hash, settings.max_adapters, metrics)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        eos = model.generation_config.eos_token_id
        self.eos = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.lock = threading.RLock()  # the model: batches and admin loads take turns
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._dora: dict[str, bool] = {}

    # ---- outside API ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="whetstone-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(30)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def load(self, av: AdapterVersion) -> None:
        with self.lock:
            self.pool.get(av)

    def unload(self, ref: str) -> bool:
        with self.lock:
            return self.pool.unload(ref)

    # ---- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            if jobs:
                self._run_batch(jobs)

    def _collect(self) -> list[Job] | None:
        s = self.settings
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            deadline = time.monotonic() + s.max_wait_ms / 1000
            while len(self._queue) < s.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._plan()

    def _is_dora(self, job: Job) -> bool:
        av = job.adapter
        if av is None:
            return False
        if av.name not in self._dora:
            import json

            try:
                cfg = json.loads((av.path / "adapter_config.json").read_text())
                self._dora[av.name] = bool(cfg.get("use_dora"))
            except (OSError, ValueError):
                return False  # loading it will fail with a clear message
        return self._dora[av.name]

    def _plan(self) -> list[Job]:
        """Take the next batch off the queue (FIFO): jobs of a DoRA adapter alone, any mix of
        LoRA adapters and base otherwise, never more distinct adapters than can be loaded."""
        s = self.settings
        first = self._queue[0]
        dora = self._is_dora(first)
        batch: list[Job] = []
        keys: set[str] = set()
        rest: deque[Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            fits = len(batch) < s.max_batch_size and (
                (job.key == first.key) if dora else not self._is_dora(job)
            )
            if fits and job.adapter is not None and job.key not in keys:
                fits = len(keys - {"__base__"}) < s.max_adapters
            if fits:
                batch.append(job)
                keys.add(job.key)
            else:
                rest.append(job)
        self._queue.extend(rest)
        return batch

    def _run_batch(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if not j.cancelled]
        with self.lock:
            pinned = {j.key for j in jobs}
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
                    job.emit(Failed(e))
            if not ready:
                return
            self.metrics.batch_size.observe(len(ready))
            self.metrics.batch_adapters.observe(len(set(names)))
            try:
                self._decode(ready, names)
            except Exception as e:  # a bug or out of memory: fail this batch, keep serving
                log.exception("generation failed")
                for job in ready:
                    job.emit(Failed(APIError(500, f"generation failed: {e}", code="server_error")))

    def _decode(self, jobs: list[Job], names: list[str]) -> None:
        import torch
        from peft import PeftModel

        model = self.pool.model
        dev = next(model.parameters()).device
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Left padding: positions count real tokens only, as model.generate does.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        extra: dict[str, Any] = {}
        if isinstance(model, PeftModel):
            if self._is_dora(jobs[0]):
                model.set_adapter(names[0])
            else:
                extra["adapter_names"] = list(names)
        live = list(range(len(jobs)))  # rows still decoding, as indices into `jobs`
        with torch.inference_mode():
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra
            )
            while True:
                logits = out.logits[:, -1, :].float()
                nxt = self._choose(logits, [jobs[i] for i in live])
                logps = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0].tolist()
                keep = []
                for row, i in enumerate(live):
                    job = jobs[i]
                    tok_id = int(nxt[row])
                    job.tokens.append(tok_id)
                    job.logprob_sum += logps[row]
                    if not self._advance(job, tok_id):
                        keep.append(row)
                if not keep:
                    return
                cache = out.past_key_values
                if len(keep) < len(live):
                    sel = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(sel)
                    mask, pos, nxt = mask[sel], pos[sel], nxt[sel]
                    live = [live[r] for r in keep]
                    if "adapter_names" in extra:
                        extra["adapter_names"] = [names[i] for i in live]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                pos = pos[:, -1:] + 1
                out = model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                    **extra,
                )

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
            nxt[row] = torch.multinomial(probs / probs.sum(), 1)[0]
        return nxt

    def _advance(self, job: Job, tok_id: int) -> bool:
        """Stream the new text of `job`; True when it is finished."""
        if job.cancelled:
            return True
        finish = None
        answer = job.tokens
        if tok_id in self.eos:
            finish, answer = "stop", job.tokens[:-1]
        text = self.tok.decode(answer, skip_special_tokens=True)
        for s in job.stop:
            at = text.find(s)
            if at >= 0:
                text, finish = text[:at], "stop"
        if finish is None and len(job.tokens) >= job.max_tokens:
            finish = "length"
        # Hold back what might be the start of a stop string or half a character.
        safe = text
        if finish is None:
            hold = max((len(s) for s in job.stop), default=1) - 1
            safe = text[: len(text) - hold] if hold else text
            safe = safe.rstrip("\ufffd")
        if len(safe) > job.sent:
            job.emit(Delta(safe[job.sent :]))
            job.sent = len(safe)
        if finish is not None:
            n = len(job.tokens)
            job.emit(
                Done(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(job.prompt_ids),
                    completion_tokens=n,
                    confidence=job.logprob_sum / n if n else 0.0,
                )
            )
            return True
        return False
