"""Adapter eviction and unloading on a real server: cycling many more adapters than the pool
holds, under concurrent mixed traffic, and unloading the only loaded adapter, never break a
later request (base model included) nor change any answer (issue 14)."""

from __future__ import annotations

import concurrent.futures as cf
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

import whetstone
from serve_helpers import register_lora, running
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

PROMPTS = ["hello there", "Where is my parcel? It was due on Monday."]
# Adapters of one base may target different modules: then PEFT's own choice of a new active
# adapter, when the active one is deleted, differs from layer to layer (or is none at all).
TARGETS = [
    ("q_proj", "v_proj", "o_proj"),
    ("o_proj",),
    ("v_proj", "down_proj"),
    ("up_proj", "down_proj"),
    ("q_proj",),
    ("q_proj", "v_proj"),  # t@6 is a DoRA adapter: it runs in batches of its own
]
ADAPTERS = [f"t@{v}" for v in range(1, len(TARGETS) + 1)]
MODELS = ["base", *ADAPTERS]


@pytest.fixture(scope="module")
def project(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("eviction")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    for seed, targets in enumerate(TARGETS, start=1):
        dora = seed == len(TARGETS)
        register_lora(p, "t", tiny_base_dir, seed, tmp, targets=targets, dora=dora)
    yield p
    p.close()


def ask(h: httpx.Client, model: str, prompt: str) -> str:
    """The greedy answer of `model`; any status but 200 fails the test with the server's
    message."""
    r = h.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=60,
    )
    assert r.status_code == 200, (model, r.text)
    return str(r.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def references(project: Any) -> dict[tuple[str, str], str]:
    """Each model's answer to each prompt served alone, by a server whose pool holds them
    all (nothing is ever evicted)."""
    app = create_app(project, Settings(max_adapters=len(ADAPTERS), max_wait_ms=0))
    with running(app) as url, httpx.Client(base_url=url) as h:
        found = {(m, q): ask(h, m, q) for m in MODELS for q in PROMPTS}
    assert len({found[m, PROMPTS[0]] for m in MODELS}) >= 5, "adapters should change answers"
    return found


def test_cycling_many_adapters_through_a_small_pool_keeps_every_answer(
    project: Any, references: dict[tuple[str, str], str]
) -> None:
    app = create_app(project, Settings(max_adapters=2, max_wait_ms=5))
    rng = random.Random(14)
    plan = [(rng.choice(MODELS), rng.choice(PROMPTS)) for _ in range(72)]
    with running(app) as url, httpx.Client(base_url=url) as h:
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda mq: ask(h, *mq), plan))
        loaded = h.get("/admin/adapters").json()["loaded"]
    for (model, prompt), answer in zip(plan, answers, strict=True):
        assert answer == references[model, prompt], (model, prompt)
    assert len(loaded) <= 2
    evictions = app.state.services.metrics.adapter_evictions.collect()[0].samples
    assert next(s.value for s in evictions if s.name.endswith("_total")) >= 10, "no cycling"


def test_unloading_or_evicting_the_only_adapter_keeps_serving(
    project: Any, references: dict[tuple[str, str], str]
) -> None:
    app = create_app(project, Settings(max_adapters=1, max_wait_ms=0))
    q = PROMPTS[0]
    with running(app) as url, httpx.Client(base_url=url) as h:
        # Eviction of the only adapter by the next one (the pool holds one).
        assert ask(h, "t@1", q) == references["t@1", q]
        assert ask(h, "t@2", q) == references["t@2", q]
        assert ask(h, "base", q) == references["base", q]
        # Explicit unload of the only adapter, then base and adapter requests.
        r = h.post("/admin/adapters/unload", json={"model": "t@2"})
        assert r.status_code == 200 and r.json()["loaded"] == []
        assert ask(h, "base", q) == references["base", q]
        assert ask(h, "t@1", q) == references["t@1", q]
        # The same with the DoRA adapter, which runs with PEFT's active adapter.
        assert ask(h, "t@6", q) == references["t@6", q]
        r = h.post("/admin/adapters/unload", json={"model": "t@6"})
        assert r.status_code == 200 and r.json()["loaded"] == []
        assert ask(h, "base", q) == references["base", q]
        assert ask(h, "t@6", q) == references["t@6", q]
        assert ask(h, "t@2", q) == references["t@2", q]
