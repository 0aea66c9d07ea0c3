"""README's quick start, followed as a user would with the real bundled model on part of the
bundled data: `init`, `demo-data`, `train`, `eval`, `promote`. It must end with the adapter
promoted by the gate (not forced): the default split keeps near-duplicates on one side, so the
leakage rule passes without `curate`; the adapter clearly beats the base model on held-out
records (this is also the proof that training learns); and `promote` reuses the evaluation
`eval` stored instead of running the candidate again. Slow: a few minutes on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from whetstone.cli import main

runner = CliRunner()


def cli(root: Path | None, *args: str) -> Any:
    argv = ["--project", str(root), *args] if root else list(args)
    result = runner.invoke(main.app, argv)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_quick_start_ends_in_a_promoted_specialist(tmp_path: Path, real_base: Any) -> None:
    import whetstone
    from whetstone.evaluate.runner import list_evaluations

    root = tmp_path / "shop"
    cli(None, "init", str(root))
    cli(root, "demo-data", "--limit", "300")
    trained = json.loads(
        cli(root, "train", "--task", "addresses", "--max-steps", "30", "--json").stdout
    )
    assert trained["adapter"] == "addresses@1"
    assert 0 < trained["timings"]["validation_share"] < 0.5

    ev = json.loads(
        cli(root, "eval", "--task", "addresses", "--model", "addresses@1", "--json").stdout
    )
    assert not ev["reused"] and ev["n"] > 40
    again = json.loads(
        cli(root, "eval", "--task", "addresses", "--model", "addresses@1", "--json").stdout
    )
    assert again["reused"] and again["id"] == ev["id"]  # no work done twice

    decision = json.loads(cli(root, "promote", "addresses@1", "--json").stdout)
    assert decision["promoted"] and not decision["forced"], decision
    rules = {r["name"]: r for r in decision["rules"]}
    assert rules["leakage"]["passed"], rules["leakage"]["message"]
    gain = rules["beats-baseline"]["numbers"]
    assert gain["diff"] >= 0.2, gain  # field F1, adapter over the base model
    assert decision["evaluations"]["candidate"] == ev["id"]  # reused, not run again

    p = whetstone.open(str(root))
    try:
        assert len(list_evaluations(p, "addresses")) == 2
        assert [t.name for t in p.store.list_tasks()] == ["addresses"]
    finally:
        p.close()
