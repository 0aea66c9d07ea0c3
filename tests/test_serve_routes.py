"""The server's routing table (`serve.routes.Router`) without a server: the watcher learns of
promotions, survives a store outage, and `base` never creates a task. On both stores."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import register_lora, wait_for
from whetstone import registry
from whetstone.errors import StoreError
from whetstone.serve.errors import APIError
from whetstone.serve.routes import Router


@pytest.fixture
def project(store_url: str, tiny_base_dir: Path, tmp_path: Path) -> Any:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir), db=store_url)
    p.create_task("t", "generate", instruction="Answer briefly.")
    yield p
    p.close()


def test_generation_changes_with_every_registry_event(
    project: Any, tiny_base_dir: Path, tmp_path: Path
) -> None:
    before = registry.generation(project)
    av = register_lora(project, "t", tiny_base_dir, 1, tmp_path)
    registered = registry.generation(project)
    registry.set_stage(project, av.name, "production", action="promote")
    promoted = registry.generation(project)
    assert before < registered < promoted
    assert registry.generation(project) == promoted  # reading changes nothing


def test_the_watcher_learns_of_a_promotion_and_survives_a_store_outage(
    project: Any,
    tiny_base_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(project, poll_s=0.02)
    assert router.resolve("t").model == "base"  # known from now on, no adapter yet
    down, polls = threading.Event(), []
    generation, list_tasks = registry.generation, project.store.list_tasks

    def flaky_generation(p: Any) -> int:
        polls.append(1)
        if down.is_set():
            raise StoreError("the store is unavailable")
        return generation(p)

    def broken_list_tasks() -> Any:
        if down.is_set():
            raise StoreError("the store is unavailable")
        return list_tasks()

    monkeypatch.setattr(registry, "generation", flaky_generation)
    monkeypatch.setattr(project.store, "list_tasks", broken_list_tasks)
    av = register_lora(project, "t", tiny_base_dir, 1, tmp_path)
    registry.set_stage(project, av.name, "production", action="promote")
    down.set()
    caplog.set_level(logging.INFO, logger="whetstone.serve")
    router.start()
    try:
        wait_for(lambda: len(polls) >= 5)
        # A known task is answered from the table while the store is down.
        assert router.resolve("t").model == "base"
        assert caplog.text.count("cannot read the registry") == 1  # logged once, not per poll
        down.clear()
        # Only the watcher re-reads the table: resolve() never does for a known task.
        wait_for(lambda: router.resolve("t").model == "t@1")
        assert "the registry answers again" in caplog.text
    finally:
        router.stop()
    assert router._watcher is None


def test_unknown_task_names_read_the_store_at_once(project: Any) -> None:
    router = Router(project, poll_s=60)  # no watcher: only a request can read the store
    router.resolve("t")
    project.create_task("later", "classify", labels=["a", "b"])
    route = router.resolve("later")
    assert route.task is not None and route.task.name == "later" and route.fallback
    with pytest.raises(APIError) as e:
        router.resolve("nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_base_never_creates_a_task(project: Any) -> None:
    router = Router(project, poll_s=60)
    before = [t.name for t in project.store.list_tasks()]
    route = router.resolve("base")
    assert route.task is None and route.adapter is None and route.model == "base"
    hinted = router.resolve("base", "t")
    assert hinted.task is not None and hinted.task.name == "t" and hinted.adapter is None
    with pytest.raises(APIError) as e:
        router.resolve("base", "nope")
    assert e.value.status == 404 and e.value.code == "task_not_found"
    assert [t.name for t in project.store.list_tasks()] == before
