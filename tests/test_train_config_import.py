"""`whetstone train --config` reads Axolotl and LLaMA-Factory YAML for the keys that map,
names every key it ignored, and refuses in one line what it cannot honour (a quantised base)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from whetstone.errors import InvalidInput
from whetstone.train.config import project_config, read_yaml
from whetstone.train.foreign import AXOLOTL, LLAMA_FACTORY, dialect

AXOLOTL_YAML = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
model_type: AutoModelForCausalLM
load_in_8bit: false
load_in_4bit: false
datasets:
  - path: data.jsonl
    type: alpaca
val_set_size: 0.05
output_dir: ./outputs/lora-out
sequence_len: 1024
sample_packing: false
adapter: lora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
  - q_proj
  - v_proj
gradient_accumulation_steps: 2
micro_batch_size: 4
num_epochs: 2
optimizer: adamw_torch
lr_scheduler: cosine
learning_rate: 2e-4
warmup_steps: 10
weight_decay: 0.01
bf16: auto
seed: 7
"""

LLAMA_FACTORY_YAML = """\
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_alpha: 32
lora_target: q_proj,k_proj,v_proj
dataset: alpaca_en_demo
template: qwen
cutoff_len: 768
output_dir: saves/qwen/lora/sft
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: linear
warmup_ratio: 0.1
max_steps: 50
val_size: 0.1
"""


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_axolotl_keys_map_and_the_rest_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, AXOLOTL_YAML)
    cfg, notes = project_config(None, path, {})
    assert dialect(yaml.safe_load(AXOLOTL_YAML)) == AXOLOTL
    assert cfg.method == "lora"
    got = cfg.effective()
    assert got["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (got["lora_r"], got["lora_alpha"], got["lora_dropout"]) == (8, 16, 0.05)
    assert got["target_modules"] == ["q_proj", "v_proj"]
    assert (got["batch_size"], got["grad_accum"], got["epochs"]) == (4, 2, 2)
    assert (got["max_length"], got["packing"], got["seed"]) == (1024, False, 7)
    assert (got["lr"], got["warmup"], got["scheduler"]) == (2e-4, 10, "cosine")
    assert got["weight_decay"] == 0.01
    [note] = notes
    assert str(path) in note and "Axolotl" in note and "\n" not in note
    ignored = note.split("ignored keys: ")[1]
    for key in ("model_type", "datasets", "val_set_size", "output_dir", "optimizer", "bf16"):
        assert key in ignored
    # Mapped keys are not reported as ignored.
    for key in ("lora_r", "micro_batch_size", "learning_rate", "sequence_len", "adapter"):
        assert f"{key}," not in ignored + "," and f"{key} (" not in ignored


def test_llama_factory_keys_map_and_the_rest_are_named(tmp_path: Path) -> None:
    read = read_yaml(_write(tmp_path, LLAMA_FACTORY_YAML))
    assert read.note and LLAMA_FACTORY in read.note
    cfg, _ = project_config(None, tmp_path / "cfg.yaml", {})
    got = cfg.effective()
    assert (cfg.method, got["base_model"]) == ("lora", "Qwen/Qwen2.5-0.5B-Instruct")
    assert (got["lora_r"], got["lora_alpha"]) == (16, 32)
    assert got["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert (got["batch_size"], got["grad_accum"], got["epochs"], got["max_steps"]) == (2, 8, 3, 50)
    assert (got["max_length"], got["lr"], got["warmup"], got["scheduler"]) == (
        768,
        1e-4,
        0.1,
        "linear",
    )
    ignored = read.note.split("ignored keys: ")[1]
    for key in ("do_train", "dataset", "template", "output_dir", "val_size"):
        assert key in ignored


def test_llama_factory_dora_all_targets_and_full(tmp_path: Path) -> None:
    dora = _write(
        tmp_path, "finetuning_type: lora\nuse_dora: true\nlora_target: all\nlora_rank: 4\n"
    )
    cfg, _ = project_config(None, dora, {})
    assert cfg.method == "dora" and cfg.effective()["target_modules"] is None
    full = _write(tmp_path, "finetuning_type: full\nnum_train_epochs: 1\n", "full.yaml")
    assert project_config(None, full, {})[0].method == "full"


def test_axolotl_without_adapter_fully_fine_tunes_and_names_the_lora_keys(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, "micro_batch_size: 2\nlora_r: 8\nnum_epochs: 1\n")
    cfg, [note] = project_config(None, path, {})
    assert cfg.method == "full" and "lora_r (no adapter: full fine-tuning)" in note


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("adapter: qlora\nlora_r: 8\n", ["adapter", "QLoRA"]),
        ("adapter: lora\nload_in_4bit: true\n", ["load_in_4bit", "QLoRA"]),
        ("finetuning_type: lora\nquantization_bit: 4\n", ["quantization_bit", "QLoRA"]),
        ("stage: dpo\nfinetuning_type: lora\n", ["stage", "sft"]),
        ("adapter: lora\nlr_scheduler: cosine_with_restarts\n", ["lr_scheduler"]),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_one_line(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInput) as e:
        project_config(None, path, {})
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for w in words:
        assert w in message


def test_a_whetstone_train_yaml_is_read_as_it_is(tmp_path: Path) -> None:
    read = read_yaml(_write(tmp_path, "lora-r: 4\nepochs: 2\nlearning_rate: 0.1\n"))
    assert read.note is None and read.values["lora_r"] == 4
    with pytest.raises(InvalidInput, match="learning_rate"):
        project_config(None, tmp_path / "cfg.yaml", {})


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from whetstone.cli import main, train

    if not any(c.name == "train" for c in main.app.registered_commands):
        train.register(main.app)
    return CliRunner().invoke(main.app, list(args))


def test_cli_prints_the_ignored_keys_and_flags_win(tmp_path: Path) -> None:
    path = _write(tmp_path, AXOLOTL_YAML)
    res = _cli(
        "--project",
        str(tmp_path / "none"),
        "train",
        "--print-config",
        "--config",
        str(path),
        "--learning-rate",
        "0.003",
        "--lora-r",
        "2",
    )
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.stdout)
    assert (cfg["lr"], cfg["lora_r"], cfg["lora_alpha"]) == (0.003, 2, 16)
    assert "note:" in res.stderr and "output_dir" in res.stderr and "Axolotl" in res.stderr


def test_learning_rate_is_an_alias_of_lr(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "none")  # no project: its train: section must not apply
    res = _cli("--project", nowhere, "train", "--print-config", "--learning-rate", "0.02")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["lr"] == 0.02
    qlora = str(_write(tmp_path, "adapter: qlora\n"))
    refused = _cli("--project", nowhere, "train", "--print-config", "--config", qlora)
    assert refused.exit_code != 0 and "QLoRA" in str(refused.exception)
