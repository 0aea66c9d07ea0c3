"""Exports never delete what Whetstone did not write (issue 14, item 1): `-o` must be a new or
empty folder, or one an earlier export wrote (its `.whetstone-export` marker) and `--force`;
the project, the current folder and unrelated files are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import whetstone
from serve_helpers import register_lora
from whetstone import formats, registry
from whetstone.cli import common
from whetstone.cli import curate as curate_cmds
from whetstone.cli import data as data_cmds
from whetstone.cli import registry as registry_cmds
from whetstone.cli import serve as serve_cmds
from whetstone.errors import InvalidInput
from whetstone.util import EXPORT_MARKER, Replace, atomic_dir


@pytest.fixture
def proj(tiny_base_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("a", "generate")
    register_lora(p, "a", tiny_base_dir, 1, tmp_path)
    p.capture("a", "x", reference="y")
    yield p
    p.close()


def cli(proj: Any, *args: str) -> Any:
    """Run one command of the real CLI against `proj`; returns typer's Result."""
    app = typer.Typer()
    for module in (serve_cmds, data_cmds, registry_cmds, curate_cmds):
        module.register(app)
    common.state.project = str(proj.root)
    return CliRunner().invoke(app, list(args))


def refused(result: Any, path: Path | str, *words: str) -> str:
    """The command failed with one InvalidInput line naming `path` (and `words`)."""
    assert isinstance(result.exception, InvalidInput), result.output
    message = str(result.exception)
    assert "\n" not in message and str(path) in message, message
    for w in words:
        assert w in message, message
    return message


def user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub").mkdir()
    (path / "sub" / "thesis.tex").write_text("years of work")
    return snapshot(path)


def snapshot(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): f.read_text() for f in sorted(path.rglob("*")) if f.is_file()}


# ---------------------------------------------------------------- the helper


def test_atomic_dir_never_removes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "target"
    before = user_folder(target)
    modes: tuple[Replace, ...] = ("never", "marked")
    for replace in modes:
        with (
            pytest.raises(InvalidInput, match="did not write"),
            atomic_dir(target, replace=replace),
        ):
            raise AssertionError("refused before the work starts")
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temp folder left


def test_atomic_dir_writes_new_and_empty_folders_and_replaces_only_its_own(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (empty / "a.txt").read_text() == "1"

    out = tmp_path / "out"
    with atomic_dir(out, written_by="test export") as tmp:
        (tmp / "old.txt").write_text("old")
    assert json.loads((out / EXPORT_MARKER).read_text())["written_by"] == "test export"
    with pytest.raises(InvalidInput, match="--force"), atomic_dir(out, written_by="test export"):
        pass
    with atomic_dir(out, replace="marked", written_by="test export") as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MARKER, "new.txt"]

    # A project someone put inside an export folder is never removed with it.
    (out / "inner").mkdir()
    (out / "inner" / "whetstone.yaml").write_text("base_model: x\n")
    with pytest.raises(InvalidInput, match="project"), atomic_dir(out, replace="marked"):
        pass
    assert (out / "inner" / "whetstone.yaml").exists()


def test_owned_folders_are_still_replaced(tmp_path: Path) -> None:
    """Checkpoints and caches inside .whetstone/ are Whetstone's: no marker needed."""
    ckpt = tmp_path / "runs" / "r" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_text("old")
    with atomic_dir(ckpt, replace="owned") as tmp:
        (tmp / "state.pt").write_text("new")
    assert (ckpt / "state.pt").read_text() == "new"


# ---------------------------------------------------------------- export-model


def test_export_model_refuses_a_folder_with_user_files(proj: Any, tmp_path: Path) -> None:
    target = tmp_path / "some" / "folder"
    before = user_folder(target)
    for extra in ([], ["--force"]):
        r = cli(proj, "export-model", "a@1", "-o", str(target), *extra)
        refused(r, target, "--force")
        assert snapshot(target) == before


def test_export_model_into_the_project_folder_is_refused(
    proj: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(proj.root)
    (proj.root / "sub").mkdir()
    before = sorted(p.name for p in proj.root.iterdir())
    for out, extra in ((".", []), (".", ["--force"]), (str(proj.root), ["--force"])):
        refused(cli(proj, "export-model", "a@1", "-o", out, *extra), out, "project")
    monkeypatch.chdir(proj.root / "sub")
    refused(cli(proj, "export-model", "a@1", "-o", "..", "--force"), "..")
    assert sorted(p.name for p in proj.root.iterdir()) == before
    assert (proj.root / "whetstone.yaml").is_file()
    assert [av.name for av in registry.list_versions(proj, "a")] == ["a@1"]


def test_export_model_refuses_the_current_folder(
    proj: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    before = user_folder(work)
    (work / EXPORT_MARKER).write_text("{}")  # even one that looks like an export
    before = snapshot(work)
    monkeypatch.chdir(work / "sub")
    refused(cli(proj, "export-model", "a@1", "-o", "..", "--force"), "..", "current folder")
    assert snapshot(work) == before


def test_a_second_export_needs_force_and_then_replaces_it(proj: Any, tmp_path: Path) -> None:
    out = tmp_path / "x"
    assert cli(proj, "export-model", "a@1", "-o", str(out)).exit_code == 0
    assert (out / "adapter_config.json").exists() and (out / EXPORT_MARKER).exists()
    (out / "stale.bin").write_text("from before")
    refused(cli(proj, "export-model", "a@1", "-o", str(out)), out, "--force")
    assert (out / "stale.bin").exists()
    r = cli(proj, "export-model", "a@1", "-o", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert (out / "adapter_config.json").exists() and not (out / "stale.bin").exists()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["written_by"] == "export-model --format peft"


def test_export_model_refuses_an_existing_file(proj: Any, tmp_path: Path) -> None:
    out = tmp_path / "model.bin"
    out.write_text("keep")
    refused(cli(proj, "export-model", "a@1", "-o", str(out), "--force"), out, "not a folder")
    assert out.read_text() == "keep"


# ---------------------------------------------------------------- export (records)


def test_export_hf_follows_the_same_rule(proj: Any, tmp_path: Path) -> None:
    target = tmp_path / "ds"
    before = user_folder(target)
    for extra in ([], ["--force"]):
        refused(cli(proj, "export", "-t", "a", "-f", "hf", "-o", str(target), *extra), target)
    assert snapshot(target) == before

    out = tmp_path / "hf"
    assert cli(proj, "export", "-t", "a", "-f", "hf", "-o", str(out)).exit_code == 0
    assert (out / EXPORT_MARKER).exists()
    refused(cli(proj, "export", "-t", "a", "-f", "hf", "-o", str(out)), out, "--force")
    r = cli(proj, "export", "-t", "a", "-f", "hf", "-o", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert formats.detect(out) == "hf"


def test_file_exports_replace_a_file_only_with_force(proj: Any, tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    out.write_text("someone's data\n")
    refused(cli(proj, "export", "-t", "a", "-f", "jsonl", "-o", str(out)), out, "--force")
    assert out.read_text() == "someone's data\n"
    r = cli(proj, "export", "-t", "a", "-f", "jsonl", "-o", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["reference"] == "y"

    folder = tmp_path / "a-folder"
    before = user_folder(folder)
    refused(cli(proj, "export", "-t", "a", "-f", "csv", "-o", str(folder), "--force"), folder)
    assert snapshot(folder) == before
    config = proj.root / "whetstone.yaml"
    text = config.read_text()
    refused(cli(proj, "export", "-t", "a", "-f", "jsonl", "-o", str(config), "--force"), config)
    assert config.read_text() == text


# ---------------------------------------------------------------- report


def test_report_refuses_an_existing_unrelated_file(proj: Any, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text("<p>my page</p>")
    refused(cli(proj, "report", "a@1", "-o", str(page)), page, "--force")
    assert page.read_text() == "<p>my page</p>"

    # The PNGs a report saves beside its page count too.
    other = tmp_path / "elsewhere" / "r.html"
    other.parent.mkdir()
    png = other.parent / "a-1-curves.png"
    png.write_bytes(b"my picture")
    refused(cli(proj, "report", "a@1", "-o", str(other)), png)
    assert png.read_bytes() == b"my picture" and not other.exists()


def test_curate_next_output_refuses_an_existing_file(proj: Any, tmp_path: Path) -> None:
    queue = tmp_path / "queue.jsonl"
    queue.write_text("my queue\n")
    refused(cli(proj, "curate", "next", "--task", "a", "-o", str(queue)), queue, "--force")
    assert queue.read_text() == "my queue\n"
