"""Progress on stderr and the quiet default for other libraries' noise (issue 21): a plain,
periodic line with an ETA when stderr is not a terminal, and no third-party warnings from a
model-loading command unless `--verbose`."""

from __future__ import annotations

import gc
import io
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from whetstone import progress as pg


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stderr as a log file: not a terminal."""
    buf = io.StringIO()
    monkeypatch.setattr(pg, "console", Console(file=buf, force_terminal=False, width=40))
    return buf


def test_plain_lines_are_periodic_with_an_eta_and_close_with_a_final_line(log: io.StringIO) -> None:
    clock = FakeClock()
    with pg.progress(get_time=clock) as bar:
        tid = bar.add_task("eval base:smollm2", total=300, info="")
        for _ in range(300):
            clock.now += 0.5  # 2 records a second: 150 s in all
            bar.advance(tid)
    lines = log.getvalue().splitlines()
    # One line per LINE_EVERY seconds of work, and the closing one; none wrapped at 40 columns.
    assert len(lines) == int(150 // pg.LINE_EVERY) + 1
    first = lines[0]
    n = int(pg.LINE_EVERY * 2)
    assert first == (
        f"eval base:smollm2: {n}/300 ({100 * n / 300:.0f}%) · 0:12 elapsed · "
        f"eta {pg.clock((300 - n) / 2)}"
    )
    assert lines[-1] == "eval base:smollm2: 300/300 (100%) · 2:30 elapsed"


def test_a_quick_job_prints_nothing_and_a_resumed_one_counts_only_new_steps(
    log: io.StringIO,
) -> None:
    clock = FakeClock()
    with pg.progress(get_time=clock) as bar:
        tid = bar.add_task("predict", total=10, info="")
        for _ in range(10):
            clock.now += 0.1
            bar.advance(tid)
    assert log.getvalue() == ""
    # Resumed at step 90 of 100: 10 s a step since the resume, whatever came before.
    with pg.progress(get_time=clock) as bar:
        tid = bar.add_task("train", total=100, completed=90, info="")
        for _ in range(5):
            clock.now += 10
            bar.update(tid, advance=1, info="loss 0.5")
    assert log.getvalue().splitlines() == [
        "train: 92/100 (92%) · 0:20 elapsed · eta 1:20 · loss 0.5",
        "train: 94/100 (94%) · 0:40 elapsed · eta 1:00 · loss 0.5",
        "train: 95/100 (95%) · 0:50 elapsed · eta 0:50 · loss 0.5",
    ]


def test_track_counts_a_list_without_being_told_its_length(
    log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    real = pg.progress
    monkeypatch.setattr(pg, "progress", lambda: real(get_time=clock))

    def slow(n: int) -> Any:
        for item in pg.track(list(range(n)), "embed"):
            clock.now += 1
            yield item

    assert list(slow(30)) == list(range(30))
    assert log.getvalue().splitlines() == [
        "embed: 12/30 (40%) · 0:12 elapsed · eta 0:18",
        "embed: 24/30 (80%) · 0:24 elapsed · eta 0:06",
        "embed: 30/30 (100%) · 0:30 elapsed",
    ]


def test_clock() -> None:
    assert (pg.clock(62), pg.clock(3723), pg.clock(-1)) == ("1:02", "1:02:03", "0:00")


# ---------------------------------------------------------------- third-party noise


@pytest.fixture
def restore_quiet(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI sets environment variables and library log levels for the whole process."""
    from transformers.utils import logging as hf_logging

    from whetstone.cli import common

    for key in common._QUIET_ENV:
        monkeypatch.setenv(key, os.environ.get(key, ""))
        monkeypatch.delenv(key)
    level = hf_logging.get_verbosity()
    yield
    hf_logging.set_verbosity(level)


def _train(args: list[str]) -> tuple[Any, list[warnings.WarningMessage]]:
    from typer.testing import CliRunner

    from whetstone.cli import main, train

    if not any(c.name == "train" for c in main.app.registered_commands):
        train.register(main.app)
    # An earlier test's leaked socket, collected while this one records, would warn from
    # site-packages: finalise what is already garbage first.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a user's terminal would show, every time
        # ...except ResourceWarning, which Python's default filters hide from every user.
        warnings.simplefilter("ignore", ResourceWarning)
        res = CliRunner().invoke(main.app, args)
    return res, caught


def test_model_loading_is_quiet_by_default_and_verbose_shows_the_libraries(
    tiny_base_dir: Path, project: Any, restore_quiet: Any
) -> None:
    project.create_task("cities", "generate")
    words = ["harbour", "meadow", "granite", "lantern", "orchard", "velvet", "compass", "thistle"]
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            project.capture("cities", f"Say {a} then {b}.", reference=f"{a} {b}", source="import")
    common = ["--project", str(project.root)]
    train = ["train", "--task", "cities", "--base-model", str(tiny_base_dir), "--max-steps", "1"]
    res, caught = _train([*common, *train])
    assert res.exit_code == 0, res.output
    third_party = [w for w in caught if "site-packages" in w.filename]
    assert third_party == [], [str(w.message) for w in third_party]
    assert "FutureWarning" not in res.stderr and "warn" not in res.stderr.lower()
    # The same command with --verbose: the libraries speak (peft asks transformers whether
    # gradient checkpointing is on, which transformers deprecates), so the test above can fail.
    res, caught = _train(["--verbose", *common, *train])
    assert res.exit_code == 0, res.output
    assert any(
        issubclass(w.category, FutureWarning) for w in caught if "site-packages" in w.filename
    )
