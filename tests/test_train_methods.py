"""Training methods (issue 15): one config class per method, registered once; an option of
another method is refused in one line (Python, train.yaml, command line); the classify label
head is the method `label_head`; runs stored with the old flat config still resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from test_train import SCHEMA, add_city_records
from whetstone.errors import InvalidInput
from whetstone.evaluate.metrics import main_score


def cli(*args: str) -> Any:
    from whetstone.cli import main, train

    if not any(c.name == "train" for c in main.app.registered_commands):
        train.register(main.app)
    return CliRunner().invoke(main.app, list(args))


# ---------------------------------------------------------------- one config per method


def test_the_registry_is_the_one_list_of_methods() -> None:
    from whetstone.train import methods
    from whetstone.train.config import config_class

    assert methods.names() == ["lora", "dora", "full", "head", "topk", "label_head"]
    for name in methods.names():
        assert config_class(name)().method == name
    with pytest.raises(InvalidInput, match=r"unknown method 'qlora'.*label_head"):
        methods.get("qlora")


@pytest.mark.parametrize(
    ("method", "own"),
    [
        ("lora", {"lora_r": 8, "lora_dropout": 0.1, "init_from": "production"}),
        ("dora", {"lora_r": 8, "target_modules": ["q_proj"], "init_from": "cities@1"}),
        ("full", {"grad_accum": 2, "packing": False}),
        ("head", {"scheduler": "linear", "pack_length": 256}),
        ("topk", {"topk_layers": 2, "topk_lora": True, "lora_r": 4}),
        ("label_head", {"patience": 5, "weight_decay": 0.1}),
    ],
)
def test_each_method_accepts_its_own_options(method: str, own: dict[str, Any]) -> None:
    from whetstone.train import train_config
    from whetstone.train.config import build

    cfg = train_config(method=method, epochs=2, **own)
    assert cfg.method == method and cfg.epochs == 2
    assert {k: getattr(cfg, k) for k in own} == own
    assert build(("train.yaml", {"method": method, "epochs": 2, **own})) == cfg
    assert set(cfg.effective()) == set(type(cfg).model_fields)


@pytest.mark.parametrize(
    ("method", "key", "owners"),
    [
        ("full", "lora_r", "lora, dora or topk"),
        ("head", "init_from", "lora or dora"),
        ("topk", "init_from", "lora or dora"),
        ("lora", "topk_layers", "topk"),
        ("label_head", "packing", "lora, dora, full, head or topk"),
        ("label_head", "batch_size", "lora, dora, full, head or topk"),
    ],
)
def test_another_methods_option_is_refused_from_python(method: str, key: str, owners: str) -> None:
    from whetstone.train import train_config
    from whetstone.train.config import config_class

    line = f"{key} (--{key.replace('_', '-')}) is an option of {owners}, not of method {method}"
    with pytest.raises(InvalidInput) as e:
        train_config(method=method, **{key: 1})
    assert str(e.value) == f"train_config: {line}"
    with pytest.raises(ValidationError, match=re.escape(line)):
        config_class(method)(**{key: 1})  # the method's own class refuses it too


def test_another_methods_option_is_refused_on_the_command_line() -> None:
    res = cli("train", "--print-config", "--method", "full", "--lora-r", "64")
    assert res.exit_code != 0
    assert str(res.exception) == (
        "command line: lora_r (--lora-r) is an option of lora, dora or topk, not of method full"
    )


def test_another_methods_option_is_refused_in_train_yaml(tmp_path: Path) -> None:
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("lora-r: 64\nepochs: 2\n")
    res = cli("train", "--print-config", "--config", str(cfg_file), "--method", "full")
    # The error names the file the option came from, though the method came from a flag.
    assert str(res.exception) == (
        f"{cfg_file}: lora_r (--lora-r) is an option of lora, dora or topk, not of method full"
    )
    cfg_file.write_text("method: full\ntopk-layers: 2\n")
    res = cli("train", "--print-config", "--config", str(cfg_file))
    assert str(res.exception).endswith(
        "topk_layers (--topk-layers) is an option of topk, not of method full"
    )


def test_print_config_shows_the_chosen_methods_options_only() -> None:
    from whetstone.train.config import config_class

    for method in ("full", "topk", "label_head"):
        res = cli("train", "--print-config", "--method", method)
        assert res.exit_code == 0, res.output
        assert set(yaml.safe_load(res.stdout)) == set(config_class(method).model_fields)
    full = yaml.safe_load(cli("train", "--print-config", "--method", "full").stdout)
    assert "lora_r" not in full and "topk_layers" not in full and full["lr"] == 2e-5


def test_tune_gives_each_trial_the_base_options_of_its_method() -> None:
    from whetstone.train.config import options_of
    from whetstone.train.tune import check_base, default_methods

    assert default_methods("extract") == ["lora", "dora", "topk"]
    assert default_methods("classify") == ["lora", "dora", "topk", "label_head"]
    base = {"init_from": "production", "batch_size": 4, "topk_layers": 1}
    check_base(base, ["lora", "full"])  # a pool: each trial takes its method's options
    assert options_of("topk", base) == {"batch_size": 4, "topk_layers": 1}
    assert options_of("full", base) == {"batch_size": 4}
    with pytest.raises(InvalidInput, match="tune base config: batch_size: Input should be"):
        check_base({"batch_size": 0}, ["topk"])
    with pytest.raises(InvalidInput, match="unknown training setting 'lora_rank'"):
        check_base({"lora_rank": 4}, ["lora"])


# ---------------------------------------------------------------- stored run configs


OLD_FLAT = {  # what `config.yaml` of a run held before configs were per method
    "method": "lora", "base_model": None, "epochs": 3, "max_steps": 2, "lr": 0.001,
    "batch_size": 4, "grad_accum": 1, "max_length": 512, "truncation": "left", "seed": 0,
    "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": None,
    "topk_layers": 4, "topk_lora": False, "eval_every": 2, "eval_max_records": 2, "patience": 3,
    "warmup": 0.05, "weight_decay": 0.0, "scheduler": "cosine", "max_grad_norm": 1.0,
    "packing": True, "pack_length": 1024, "save_every": 2, "init_from": None,
}  # fmt: skip


def test_an_old_flat_config_reads_as_the_method_it_trained() -> None:
    from whetstone.train.config import from_stored

    cfg = from_stored(OLD_FLAT, "config.yaml", "extract")
    assert type(cfg).__name__ == "LoraConfig" and (cfg.lora_r, cfg.max_steps) == (8, 2)
    full = from_stored({**OLD_FLAT, "method": "full", "lr": 2e-5}, "config.yaml", "extract")
    assert full.method == "full" and "lora_r" not in full.effective()
    # `head` then meant the label head on a classify task, the output layer elsewhere.
    head = {**OLD_FLAT, "method": "head"}
    assert from_stored(head, "config.yaml", "classify").method == "label_head"
    assert from_stored(head, "config.yaml", "extract").method == "head"
    # A config written per method is read as it is: a stray option is still an error.
    with pytest.raises(InvalidInput, match=r"config\.yaml: unknown training setting 'lora_rank'"):
        from_stored({"method": "lora", "lora_rank": 4}, "config.yaml", "extract")


def test_a_run_stored_with_the_old_flat_config_resumes(project: Any, tiny_base_dir: Path) -> None:
    from whetstone import registry
    from whetstone.train import train_config
    from whetstone.train.api import _start

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 12)
    run = _start(project, "cities", train_config(base_model=str(tiny_base_dir)), None, 1)
    run.config_path.write_text(
        yaml.safe_dump({**OLD_FLAT, "base_model": str(tiny_base_dir)}, sort_keys=False)
    )
    res = cli("--project", str(project.root), "train", "--resume", run.id, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    av = registry.get(project, out["adapter"])
    assert (out["run_id"], out["steps"], av.method) == (run.id, 2, "lora")
    assert av.info["config"]["lora_r"] == 8 and "topk_layers" not in av.info["config"]


# ---------------------------------------------------------------- the label head


def mood_project(project: Any) -> Any:
    project.create_task("mood", "classify", labels=["happy", "sad"])
    for i in range(40):
        word = ["great", "awful"][i % 2]
        project.capture(
            "mood", f"day {i} was {word} {word}", reference=["happy", "sad"][i % 2], source="import"
        )
    return project


def test_the_label_head_trains_only_classify_tasks(project: Any, tiny_base_dir: Path) -> None:
    from whetstone.train import train_config, train_task

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 12)
    cfg = train_config(method="label_head", base_model=str(tiny_base_dir))
    with pytest.raises(
        InvalidInput, match="method label_head trains classify tasks; task 'cities' is extract"
    ):
        train_task(project, "cities", cfg, progress=False, metric=main_score)


def test_an_old_label_head_registered_as_head_still_loads_and_is_not_served(
    project: Any, tiny_base_dir: Path
) -> None:
    """Label heads registered before the method had its name carry method `head`: the
    artefact's `labels_head` field marks them, so prediction and the server's refusal hold."""
    from whetstone import registry
    from whetstone.models.artefacts import META
    from whetstone.predict import load_predictor
    from whetstone.serve.adapters import check_servable
    from whetstone.serve.errors import APIError
    from whetstone.train import train_config, train_task

    mood_project(project)
    cfg = train_config(
        method="label_head", base_model=str(tiny_base_dir), max_steps=60, eval_every=20
    )
    new = registry.get(
        project, train_task(project, "mood", cfg, progress=False, metric=main_score).adapter
    )
    old_folder = project.root / "old_head"
    shutil.copytree(new.path, old_folder)
    meta = json.loads((old_folder / META).read_text())
    (old_folder / META).write_text(json.dumps({**meta, "method": "head"}))
    old = registry.register(
        project, "mood", old_folder, method="head", base_model=new.base_model,
        base_hash=new.base_hash, info={"config": {"method": "head", "lora_r": 16}},
    )  # fmt: skip
    texts = ["day 99 was great great", "day 98 was awful awful"]
    for av in (new, old):
        assert [g.text for g in load_predictor(project, "mood", av.name)(texts)] == [
            "happy",
            "sad",
        ]
        with pytest.raises(APIError, match="is not a PEFT adapter"):
            check_servable(av, av.base_hash)
