"""The first commands a user types: init, task, records; and how the CLI reports bad input
(one line, non-zero exit, no traceback unless --debug)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import whetstone
from whetstone.cli import main
from whetstone.errors import InvalidInput, NotFound

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHETSTONE_PROJECT", raising=False)
    monkeypatch.delenv("WHETSTONE_DB", raising=False)
    monkeypatch.delenv("WHETSTONE_ANNOTATOR", raising=False)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project with a classify task and three captured records (ids 1, 2, 3)."""
    root = tmp_path / "proj"
    p = whetstone.init(str(root))
    p.create_task("tickets", "classify", labels=["billing", "shipping"])
    p.capture("tickets", "parcel lost", "billing", model="tickets@1", confidence=0.35)
    p.capture("tickets", "card declined", "billing", model="tickets@1")
    p.capture("tickets", "asdf", "shipping", tags=["web"])
    p.close()
    return root


def cli(root: Path | None, *args: str) -> tuple[int, str]:
    """Run the app in-process; return (exit code, stdout and stderr)."""
    argv = ["--project", str(root), *args] if root else list(args)
    result = runner.invoke(main.app, argv)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """Run the real entry point (`whetstone.cli.main:run`, what the `whetstone` script calls),
    which turns Whetstone errors into one line: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["whetstone", *args])
    with pytest.raises(SystemExit) as e:
        main.run()
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


# ---- init --------------------------------------------------------------------------------
def test_init(tmp_path: Path) -> None:
    code, out = cli(None, "init", str(tmp_path / "new"), "--base-model", "my/model")
    assert code == 0, out
    assert "Created a Whetstone project" in out and "base_model: my/model" in out
    assert (tmp_path / "new" / "whetstone.yaml").is_file()
    assert (tmp_path / "new" / ".whetstone" / "whetstone.db").is_file()
    with pytest.raises(InvalidInput, match="already a Whetstone project"):
        cli(None, "init", str(tmp_path / "new"))


def test_init_with_db(tmp_path: Path) -> None:
    db = tmp_path / "team.db"
    code, out = cli(None, "--db", f"sqlite:///{db}", "init", str(tmp_path / "p"))
    assert code == 0, out
    assert db.is_file()
    assert f"db: sqlite:///{db}" in (tmp_path / "p" / "whetstone.yaml").read_text()


def test_commands_find_the_project_from_the_environment(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(proj.parent)
    result = runner.invoke(
        main.app, ["task", "show", "tickets"], env={"WHETSTONE_PROJECT": str(proj)}
    )
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(proj / ".whetstone")  # and from a sub-folder
    result = runner.invoke(main.app, ["task", "show", "tickets"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["name"] == "tickets"


# ---- tasks -------------------------------------------------------------------------------
def test_task_create_list_show(proj: Path, tmp_path: Path) -> None:
    schema = tmp_path / "addr.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"zip": {"type": "string"}}}))
    code, out = cli(proj, "task", "create", "addr", "--kind", "extract", "--schema", str(schema))
    assert code == 0, out
    assert "Created task addr (extract, metric field_f1)" in out
    code, out = cli(
        proj, "task", "create", "summ", "--kind", "generate", "--instruction", "Be brief."
    )
    assert code == 0, out

    code, out = cli(proj, "task", "list", "--json")
    listed = {t["name"]: t for t in json.loads(out)}
    assert sorted(listed) == ["addr", "summ", "tickets"]
    assert (listed["tickets"]["records"], listed["tickets"]["with_reference"]) == (3, 0)
    code, out = cli(proj, "task", "list")
    assert code == 0 and "tickets" in out and "classify" in out

    code, out = cli(proj, "task", "show", "addr")
    shown = json.loads(out)
    assert shown["schema"]["properties"]["zip"] == {"type": "string"}
    assert json.loads(cli(proj, "task", "show", "summ")[1])["instruction"] == "Be brief."


def test_task_create_bad_input(proj: Path, tmp_path: Path) -> None:
    code, out = cli(proj, "task", "create", "c", "--kind", "classify")
    assert code == 0 and "no labels yet" in out
    with pytest.raises(InvalidInput, match="unknown task kind 'regression'"):
        cli(proj, "task", "create", "r", "--kind", "regression")
    with pytest.raises(InvalidInput, match="'tickets' already exists"):
        cli(proj, "task", "create", "tickets", "--kind", "generate")
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidInput, match=f"^{missing}: no such file$"):
        cli(proj, "task", "create", "e", "--kind", "extract", "--schema", str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "type": "object",\n  "properties": {,}\n}\n')
    with pytest.raises(InvalidInput, match=f"^{broken}:3: not valid JSON"):
        cli(proj, "task", "create", "e", "--kind", "extract", "--schema", str(broken))
    with pytest.raises(NotFound, match=r"unknown task 'ticket' \(known tasks: c, tickets\)"):
        cli(proj, "task", "show", "ticket")


# ---- records -----------------------------------------------------------------------------
def test_records_list_and_show(proj: Path) -> None:
    code, out = cli(proj, "records", "list", "--json")
    assert code == 0, out
    assert [r["id"] for r in json.loads(out)] == [3, 2, 1]  # newest first
    _, out = cli(proj, "records", "list", "--json", "--tag", "web")
    assert [r["id"] for r in json.loads(out)] == [3]
    _, out = cli(proj, "records", "list", "--json", "-t", "tickets", "-n", "1")
    assert [r["id"] for r in json.loads(out)] == [3]
    code, out = cli(proj, "records", "list")
    assert code == 0 and "tickets" in out and "unreviewed" in out and "production" in out
    code, out = cli(proj, "records", "show", "1")
    rec = json.loads(out)
    assert (rec["input"], rec["output"], rec["confidence"], rec["history"]) == (
        "parcel lost",
        "billing",
        0.35,
        [],
    )
    with pytest.raises(InvalidInput, match="unknown status 'done'"):
        cli(proj, "records", "list", "--status", "done")
    with pytest.raises(NotFound, match="unknown task 'nope'"):
        cli(proj, "records", "list", "--task", "nope")


def test_records_review(proj: Path) -> None:
    code, out = cli(
        proj, "records", "correct", "1", "-r", "shipping", "-e", "wrong_label", "--annotator", "ana"
    )
    assert code == 0 and "Record 1 corrected (1 review event(s)" in out
    code, out = cli(proj, "records", "correct", "1", "-r", "billing", "--comment", "on second look")
    assert "Record 1 corrected (2 review event(s)" in out
    code, out = cli(proj, "records", "accept", "2")
    assert code == 0 and "Record 2 accepted" in out
    code, out = cli(proj, "records", "reject", "3", "-e", "noise")
    assert code == 0 and "Record 3 rejected" in out

    p = whetstone.open(str(proj))
    one, two, three = (p.record(i) for i in (1, 2, 3))
    p.close()
    assert (one.output, one.reference, one.status.value) == ("billing", "billing", "corrected")
    assert [h.reference for h in one.history] == ["shipping", "billing"]
    assert one.history[0].annotator == "ana"
    assert (two.reference, two.status.value) == ("billing", "accepted")
    assert (three.reference, three.status.value, three.error_category) == (
        None,
        "rejected",
        "noise",
    )

    _, out = cli(proj, "records", "list", "--json", "--status", "corrected")
    assert [r["id"] for r in json.loads(out)] == [1]
    with pytest.raises(InvalidInput, match="record 2: reference: label 'refund' is not one of"):
        cli(proj, "records", "correct", "2", "-r", "refund")


# ---- errors as the user sees them --------------------------------------------------------
def test_an_error_is_one_line_without_traceback(
    proj: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_main(capsys, monkeypatch, "-P", str(proj), "records", "show", "999")
    assert code == 1
    assert err == "error: unknown record 999\n"
    assert out == ""
    code, _, err = run_main(capsys, monkeypatch, "-P", str(proj), "records", "show", "abc")
    assert code == 2  # bad input
    assert err == "error: record ids are numbers, not 'abc'\n"


def test_outside_a_project_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, monkeypatch, "task", "list")
    assert code == 1
    assert err.startswith("error: no Whetstone project in") and "whetstone init" in err
    assert err.count("\n") == 1


def test_debug_shows_the_traceback(
    proj: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With --debug the error escapes run(), so Python prints its traceback.
    with pytest.raises(NotFound, match="unknown record 999"):
        run_main(capsys, monkeypatch, "--debug", "-P", str(proj), "records", "show", "999")


# ---- the real program --------------------------------------------------------------------
def _whetstone(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("whetstone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHETSTONE_")}
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_installed_command(proj: Path) -> None:
    help_ = _whetstone("--help", cwd=proj)
    assert help_.returncode == 0, help_.stderr
    assert "init" in help_.stdout and "records" in help_.stdout

    bad = _whetstone("records", "show", "999", cwd=proj)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: unknown record 999"

    debug = _whetstone("--debug", "records", "show", "999", cwd=proj)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "whetstone.errors.NotFound: unknown record 999" in debug.stderr


def test_starting_the_cli_imports_no_heavy_library() -> None:
    code = (
        "import sys, whetstone.cli.main; "
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'datasets', 'peft') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "[]"


# ---- doctor ------------------------------------------------------------------------------
def _doctor_rows(out: str) -> dict[str, str]:
    """check name -> its mark (ok / warn / FAIL), from the first line of each table row."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 2 and cells[0] and cells[1] in ("ok", "warn", "FAIL"):
            rows[cells[0]] = cells[1]
    return rows


def test_doctor_passes_in_a_healthy_project(proj: Path) -> None:
    code, out = cli(proj, "doctor")
    assert code == 0, out
    rows = _doctor_rows(out)
    assert rows["store"] == "ok" and rows["project"] == "ok"
    assert rows["package torch"] == "ok" and rows["embedding model"] == "ok"
    assert "FAIL" not in rows.values()


def test_doctor_names_what_to_fix(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from whetstone.cli import doctor

    monkeypatch.setattr(doctor, "REQUIRED", [*doctor.REQUIRED, "no-such-pkg"])
    code, out = cli(proj, "--db", f"sqlite:///{proj}/no/such/dir/x.db", "doctor")
    assert code == 1, out
    rows = _doctor_rows(out)
    assert rows["package no-such-pkg"] == "FAIL" and rows["store"] == "FAIL"
    assert rows["package torch"] == "ok"
    assert "not installed" in out and "unable to open" in out
    assert "2 problem(s) to fix" in out
