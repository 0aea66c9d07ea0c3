"""The engine's continuous batching, driven step by step on a tiny random-weight base model
with tiny random LoRA and DoRA adapters: jobs that join a running batch get exactly what
they get alone, start before earlier long jobs finish, and DoRA rows never share a pass."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import register_lora
from whetstone.serve.engine import Delta, Done, Engine, Event, Failed, Job
from whetstone.serve.metrics import Metrics
from whetstone.serve.settings import Settings

# Prompts of very different lengths, so that joining pads the running cache in one case and
# the newcomers' cache in another.
PROMPTS = [
    "hello",
    "Where is my parcel? It was due on Monday and I have heard nothing since then at all.",
    "Why was I charged twice?",
    "Can I change my delivery address, and if so how long before the delivery do I have to "
    "tell you, and does it cost anything extra, and can I do it on the website or by phone?",
    "ok thanks",
]


@pytest.fixture(scope="module")
def adapters(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("engine")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    found = {
        "lora1": register_lora(p, "t", tiny_base_dir, 1, tmp),
        "lora2": register_lora(p, "t", tiny_base_dir, 2, tmp),
        "dora": register_lora(p, "t", tiny_base_dir, 3, tmp, dora=True),
        "base": None,
    }
    yield found
    p.close()


@pytest.fixture
def make_engine(tiny_base_dir: Path) -> Callable[..., Engine]:
    from whetstone.models import base

    def make(**settings: Any) -> Engine:
        b = base.resolve(str(tiny_base_dir))
        model, tok = base.load(b)
        return Engine(model, tok, b.hash, Settings(**settings), Metrics())

    return make


class Log:
    """Every event of every job, in the order the engine emitted them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    def job(self, engine: Engine, tag: str, prompt: str, adapter: Any, n: int, **kw: Any) -> Job:
        ids = engine.tok(prompt, add_special_tokens=False)["input_ids"]
        return Job(
            prompt_ids=list(ids),
            adapter=adapter,
            max_tokens=n,
            emit=lambda e: self.events.append((tag, e)),
            **kw,
        )

    def index(self, tag: str, kind: type) -> int:
        return next(i for i, (t, e) in enumerate(self.events) if t == tag and isinstance(e, kind))

    def done(self, tag: str) -> Done:
        return self.events[self.index(tag, Done)][1]  # type: ignore[return-value]


def drive(engine: Engine, schedule: dict[int, list[Job]], check: Callable[[], None]) -> None:
    """Submit `schedule[k]` just before step k; step until every job has finished."""
    last = max(schedule)
    k = 0
    while k <= last or engine.depth or engine.batch is not None:
        for job in schedule.get(k, []):
            engine.submit(job)
        engine.step()
        check()
        k += 1
        assert k < 1000, "the engine never finished"


def alone(engine: Engine, spec: tuple[str, str, str, int], adapters: dict[str, Any]) -> Job:
    tag, prompt, adapter, n = spec
    job = Log().job(engine, tag, prompt, adapters[adapter], n)
    drive(engine, {0: [job]}, lambda: None)
    assert job.finished
    return job


def test_jobs_joining_a_running_batch_decode_exactly_as_alone(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    specs = [  # tag, prompt, adapter, max_tokens
        ("a", PROMPTS[1], "base", 14),
        ("b", PROMPTS[0], "lora1", 6),
        ("c", PROMPTS[2], "lora2", 9),
        ("d", PROMPTS[3], "lora1", 7),  # the longest prompt joins last-but-one and leaves early
        ("e", PROMPTS[4], "base", 10),
        ("f", PROMPTS[2], "lora1", 8),
    ]
    engine = make_engine(max_batch_size=8)
    reference = {s[0]: alone(engine, s, adapters) for s in specs}
    # Different adapters give different answers, so a row decoded with a neighbour's adapter
    # (or cache) would show.
    assert len({tuple(reference[t].tokens) for t in "bcd"}) == 3

    log = Log()
    jobs = {t: log.job(engine, t, p, adapters[a], n) for t, p, a, n in specs}
    schedule = {
        0: [jobs["a"]],
        2: [jobs["b"], jobs["c"]],  # two at once, shorter prompts than the running row
        4: [jobs["d"]],  # a longer prompt than anything running: the batch is padded
        11: [jobs["e"]],  # after d has left: its padding columns were trimmed
        12: [jobs["f"]],
    }
    sizes: list[int] = []

    def check() -> None:
        rows = engine.batch
        if rows is None:
            return
        sizes.append(len(rows.jobs))
        # No cache column is padding for every row: the cache is as wide as its longest row.
        assert rows.width == int(rows.mask.sum(1).max())
        assert rows.mask.shape[0] == len(rows.jobs) == rows.cache.layers[0].keys.shape[0]
        assert rows.cache.layers[0].keys.shape[2] == rows.width

    drive(engine, schedule, check)
    assert max(sizes) >= 4, "the newcomers never joined the running batch"
    for tag, job in jobs.items():
        ref = reference[tag]
        assert job.tokens == ref.tokens, tag
        done = log.done(tag)
        assert done.completion_tokens == len(ref.tokens)
        assert done.confidence == pytest.approx(ref.logprob_sum / len(ref.tokens), abs=1e-4)


def test_a_job_submitted_during_a_long_one_finishes_first(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    """On the real engine thread: the short job is submitted from the long job's first event
    (so while it is surely decoding) and must be done before the long one is."""
    engine = make_engine(max_wait_ms=0)
    log = Log()
    finished = threading.Event()
    short = log.job(engine, "short", PROMPTS[2], adapters["lora2"], 3)
    long = log.job(engine, "long", PROMPTS[0], adapters["lora1"], 120)

    def emit(e: Event) -> None:
        log.events.append(("long", e))
        if len(log.events) == 1:
            engine.submit(short)
        if isinstance(e, (Done, Failed)):
            finished.set()

    long.emit = emit
    engine.start()
    try:
        engine.submit(long)
        assert finished.wait(120)
    finally:
        engine.stop()
    assert log.done("long").completion_tokens == 120
    assert log.done("short").completion_tokens == 3
    assert log.index("short", Done) < log.index("long", Done)
    first_short = next(i for i, (t, _) in enumerate(log.events) if t == "short")
    assert isinstance(log.events[first_short][1], Delta)


def test_dora_jobs_never_share_a_forward_pass_and_are_not_overtaken(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    specs = [
        ("d1", PROMPTS[1], "dora", 6),
        ("l1", PROMPTS[2], "lora1", 8),
        ("b1", PROMPTS[0], "base", 5),
        ("d2", PROMPTS[4], "dora", 4),
        ("l2", PROMPTS[3], "lora2", 4),
    ]
    engine = make_engine(max_batch_size=8)
    reference = {s[0]: alone(engine, s, adapters) for s in specs}
    passes: list[list[str]] = []
    forward = engine._forward

    def spy(jobs: list[Job], *args: Any) -> Any:
        passes.append([tags[id(j)] for j in jobs])
        return forward(jobs, *args)

    engine._forward = spy  # type: ignore[method-assign]
    log = Log()
    jobs = {t: log.job(engine, t, p, adapters[a], n) for t, p, a, n in specs}
    tags = {id(j): t for t, j in jobs.items()}
    drive(
        engine,
        {0: [jobs["d1"]], 1: [jobs["l1"], jobs["b1"], jobs["d2"]], 9: [jobs["l2"]]},
        lambda: None,
    )
    for rows in passes:
        dora = {t for t in rows if t.startswith("d")}
        assert not dora or dora == set(rows), rows
    assert ["l1", "b1"] in passes, "the LoRA and base jobs should have batched together"
    # d2 waited at the head of the queue while l1 and b1 ran: l2, arriving later, must not
    # join their batch ahead of it.
    first = {t: next(i for i, rows in enumerate(passes) if t in rows) for t in jobs}
    assert first["d1"] < first["l1"] < first["d2"] < first["l2"]
    for tag, job in jobs.items():
        assert job.tokens == reference[tag].tokens, tag


def test_cancelled_rows_leave_and_queued_ones_never_start(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    engine = make_engine()
    log = Log()
    a = log.job(engine, "a", PROMPTS[0], None, 20)
    b = log.job(engine, "b", PROMPTS[2], adapters["lora1"], 20)
    c = log.job(engine, "c", PROMPTS[4], None, 20)
    engine.submit(a)
    engine.submit(b)
    engine.step()
    assert engine.batch is not None and len(engine.batch.jobs) == 2
    b.cancelled = True
    c.cancelled = True
    engine.submit(c)
    engine.step()
    assert engine.batch is not None and engine.batch.jobs == [a]
    drive(engine, {0: []}, lambda: None)
    assert log.done("a").completion_tokens == 20
    assert not any(isinstance(e, Done) for t, e in log.events if t == "b")
    assert not any(t == "c" for t, _ in log.events)


def test_unloading_an_adapter_in_use_waits_for_its_rows(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    engine = make_engine(max_wait_ms=0)
    log = Log()
    started, finished = threading.Event(), threading.Event()
    job = log.job(engine, "a", PROMPTS[0], adapters["lora1"], 60)

    def emit(e: Event) -> None:
        log.events.append(("a", e))
        started.set()
        if isinstance(e, (Done, Failed)):
            finished.set()

    job.emit = emit
    engine.start()
    try:
        engine.submit(job)
        assert started.wait(60)
        assert engine.unload(adapters["lora1"].name)
        log.events.append(("unloaded", Delta("")))
        assert finished.wait(60)
    finally:
        engine.stop()
    assert log.done("a").completion_tokens == 60
    assert log.index("a", Done) < log.index("unloaded", Delta)
    assert engine.pool.loaded == []


def test_a_failing_forward_fails_its_rows_and_the_engine_keeps_serving(
    make_engine: Callable[..., Engine], adapters: dict[str, Any]
) -> None:
    engine = make_engine()
    log = Log()
    forward = engine._forward

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    engine._forward = broken  # type: ignore[method-assign]
    a = log.job(engine, "a", PROMPTS[0], None, 5)
    drive(engine, {0: [a]}, lambda: None)
    err = log.events[-1][1]
    assert isinstance(err, Failed) and "boom" in err.error.message and a.finished
    engine._forward = forward  # type: ignore[method-assign]
    b = log.job(engine, "b", PROMPTS[0], adapters["lora2"], 5)
    drive(engine, {0: [b]}, lambda: None)
    assert log.done("b").completion_tokens == 5
