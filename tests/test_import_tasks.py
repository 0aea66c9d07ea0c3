"""Tasks as users bring them: an evals file's system prompt as the task instruction (and
differing ones reported), classify labels inferred from the references, CSV columns chosen
by flag with a label map (other values skipped and counted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from whetstone import formats
from whetstone.cli.main import app
from whetstone.errors import InvalidInput

SYSTEM = "Answer with the capital city only."


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evals_row(question: str, ideal: str, system: str | None = SYSTEM) -> dict[str, Any]:
    chat = [{"role": "user", "content": question}]
    if system is not None:
        chat.insert(0, {"role": "system", "content": system})
    return {"input": chat, "ideal": ideal}


def cli(p: Any, *args: str) -> Any:
    return CliRunner().invoke(app, ["--project", str(p.root), *args])


def test_evals_system_prompt_becomes_the_instruction(project: Any, tmp_path: Path) -> None:
    project.create_task("capitals", "generate")
    path = write_jsonl(
        tmp_path / "capitals.jsonl",
        [evals_row("France?", "Paris"), evals_row("Italy?", "Rome")],
    )
    report = formats.import_file(project, path, "capitals")
    assert report.added == 2
    assert project.task("capitals").instruction == SYSTEM
    assert any("instruction set from the file's system prompt" in n for n in report.notes)
    # The prompt lives on the task now, not in every record's input.
    assert sorted(r.input for r in project.records("capitals")) == ["France?", "Italy?"]


def test_a_differing_system_prompt_is_reported_and_kept(project: Any, tmp_path: Path) -> None:
    project.create_task("capitals", "generate")
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            evals_row("France?", "Paris"),
            evals_row("Spain?", "Madrid", system="Reply in French."),
            evals_row("Peru?", "Lima", system=None),
        ],
    )
    result = CliRunner().invoke(
        app, ["--project", str(project.root), "import", str(path), "--task", "capitals"]
    )
    assert result.exit_code == 0, result.output
    assert "3 added" in result.output
    assert "note: 1 row carries a system prompt that differs" in result.output
    assert '"Reply in French."' in result.output
    assert project.task("capitals").instruction == SYSTEM
    spain = next(r for r in project.records("capitals") if r.reference == "Madrid")
    assert isinstance(spain.input, list) and spain.input[0].content == "Reply in French."


def test_a_task_with_an_instruction_keeps_it(project: Any, tmp_path: Path) -> None:
    project.create_task("capitals", "generate", instruction="Be brief.")
    path = write_jsonl(tmp_path / "c.jsonl", [evals_row("France?", "Paris")])
    report = formats.import_file(project, path, "capitals")
    assert project.task("capitals").instruction == "Be brief."
    assert len(report.notes) == 1 and "differs from the task's instruction" in report.notes[0]


def test_classify_labels_inferred_from_references(project: Any, tmp_path: Path) -> None:
    project.create_task("sentiment", "classify")
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"input": "great film", "reference": "pos"},
            {"input": "dull", "reference": "neg "},
            {"input": "loved it", "reference": "pos"},
        ],
    )
    report = formats.import_file(project, path, "sentiment")
    assert project.task("sentiment").labels == ["neg", "pos"]
    assert report.notes == ["task labels set from the references: neg, pos"]
    # From now on the labels are enforced.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "meh", "reference": "mixed"}])
    with pytest.raises(InvalidInput, match=r"bad.jsonl:1: reference: label 'mixed' is not one"):
        formats.import_file(project, bad, "sentiment")


def test_csv_columns_and_label_map(project: Any, tmp_path: Path) -> None:
    project.create_task("reviews", "classify")
    path = tmp_path / "reviews.csv"
    path.write_text(
        "review,score,critic\n"
        "a triumph,1,ana\n"
        "a mess,0,bo\n"
        "fine I guess,maybe,cy\n"
        "superb,1,di\n"
        "awful,,ed\n"
    )
    result = cli(
        project,
        "import",
        str(path),
        "--task",
        "reviews",
        "--input-col",
        "review",
        "--label-col",
        "score",
        "--label-map",
        "fresh=1,rotten=0",
    )
    assert result.exit_code == 0, result.output
    assert "3 added" in result.output and "2 skipped (value not in --label-map)" in result.output
    assert "note: task labels set from the references: fresh, rotten" in result.output
    got = {r.input: r.reference for r in project.records("reviews")}
    assert got == {"a triumph": "fresh", "a mess": "rotten", "superb": "fresh"}
    assert project.task("reviews").labels == ["fresh", "rotten"]
    assert next(iter(project.records("reviews"))).meta == {"critic": "ana"}


def test_label_map_errors_name_the_flag_and_column(project: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"--label-map: 'fresh' is not LABEL=VALUE"):
        formats.parse_label_map("fresh,rotten=0")
    with pytest.raises(InvalidInput, match=r"value '1' maps to both 'a' and 'b'"):
        formats.parse_label_map("a=1,b=1")
    assert formats.parse_label_map("pos=1, pos=yes") == {"1": "pos", "yes": "pos"}
    project.create_task("reviews", "classify", labels=["fresh", "rotten"])
    path = tmp_path / "r.csv"
    path.write_text("review,stars\ngood,1\n")
    with pytest.raises(InvalidInput, match=r"r.csv:1: score: no such column"):
        formats.import_file(
            project,
            path,
            "reviews",
            input_col="review",
            reference_col="score",
            label_map={"1": "fresh"},
        )
    jl = write_jsonl(tmp_path / "r.jsonl", [{"input": "x", "reference": "fresh"}])
    with pytest.raises(InvalidInput, match="--label-map apply to csv, parquet and hf"):
        formats.import_file(project, jl, "reviews", label_map={"1": "fresh"})
