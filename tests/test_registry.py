"""The registry's store work: versions numbered in one transaction even when several processes
register at once, and the reads serving depends on never waiting for a writer."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import whetstone
from whetstone import registry
from whetstone.project import Project
from whetstone.serve.review_queue import error_categories, review_queue

REGISTRARS = 4


def _artefact(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\0" * 4096)
    return folder


def _register(root: str, src: str, start: Any) -> None:
    project = Project(Path(root))
    start.wait()  # every process is ready: the registrations overlap
    registry.register(
        project, "qa", Path(src), method="lora", base_model="tiny", base_hash="0" * 64
    )
    project.close()


@pytest.mark.timeout(300)
def test_processes_registering_at_once_get_versions_one_to_four(
    store_url: str, tmp_path: Path
) -> None:
    p = whetstone.init(tmp_path / "proj", db=store_url)
    p.create_task("qa", "generate")
    src = _artefact(tmp_path / "art")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(REGISTRARS)
    procs = [
        ctx.Process(target=_register, args=(str(p.root), str(src), start))
        for _ in range(REGISTRARS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    assert [proc.exitcode for proc in procs] == [0] * REGISTRARS  # tracebacks are in stderr
    versions = registry.list_versions(p, "qa")
    assert [av.version for av in versions] == list(range(1, REGISTRARS + 1))
    for av in versions:  # each row names its own, whole folder
        assert av.path == p.home / "adapters" / "qa" / str(av.version)
        assert (av.path / "weights.bin").stat().st_size == 4096
    assert sorted(e["version"] for e in registry.history(p, "qa")) == [1, 2, 3, 4]
    leftovers = [d.name for d in (p.home / "adapters" / "qa").iterdir()]
    assert sorted(leftovers) == ["1", "2", "3", "4"]  # no staging folder left behind
    p.close()


@pytest.mark.timeout(30)  # a read that waited for the lock would sit out the 60 s busy timeout
def test_serving_reads_go_on_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    p = whetstone.init(tmp_path / "proj")
    p.create_task("qa", "generate")
    registry.register(
        p, "qa", _artefact(tmp_path / "art"), method="lora", base_model="t", base_hash="0" * 64
    )
    registry.set_stage(p, "qa@1", "production", action="promote")
    rid = p.store.capture("qa", "hello", "hi")
    p.store.review(rid, "rejected", error_category="rude")
    writer = sqlite3.connect(p.home / "whetstone.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
    try:
        # What /v1/models, the route refresh and the review page read.
        assert [av.name for av in registry.list_versions(p)] == ["qa@1"]
        assert registry.production_versions(p) == {"qa": 1}
        assert registry.get(p, "qa").version == 1
        assert review_queue(p.store, status=None).total == 1
        assert error_categories(p.store) == ["rude"]
        assert [e["action"] for e in registry.history(p, "qa")] == ["register", "promote"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    p.close()
