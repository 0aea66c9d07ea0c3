"""The training config: one flat pydantic model whose keys are the YAML keys and, with `-` for
`_`, the CLI flags (`lora_r` ↔ `--lora-r`). Unknown keys are an error that names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from whetstone.errors import InvalidInput

METHODS = ("lora", "dora", "full", "head", "topk")
# Learning rates that learn fast without diverging on the bundled 135M model (measured on the
# demo address task): adapters tolerate a high rate, full fine-tuning needs a low one.
DEFAULT_LR = {"lora": 1e-3, "dora": 1e-3, "full": 2e-5, "head": 1e-3, "topk": 1e-4}
DEFAULT_LR_TOPK_LORA = 1e-3


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["lora", "dora", "full", "head", "topk"] = "lora"
    base_model: str | None = Field(None, description="default: the project's base model")
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    lr: float | None = Field(None, gt=0, description="default: by method")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="tokens per example, prompt + answer")
    truncation: Literal["left", "drop"] = Field(
        "left", description="over-long prompt: cut from the left (keeping the answer) or drop it"
    )
    seed: int = 0
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="default: every linear layer of the blocks"
    )
    topk_layers: int = Field(4, ge=1, description="topk: how many of the top blocks train")
    topk_lora: bool = Field(
        False, description="topk: LoRA on the top blocks instead of all their weights"
    )
    eval_every: int | None = Field(
        None, ge=1, description="steps between validations; default: 5 per run"
    )
    eval_max_records: int = Field(64, ge=1)
    patience: int = Field(3, ge=1, description="validations without improvement before stopping")
    warmup: float = Field(
        0.05, ge=0, description="fraction of steps (<1) or a number of steps (>=1)"
    )
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    packing: bool = Field(
        True, description="pack several examples per row (attention kept inside each)"
    )
    pack_length: int = Field(
        1024,
        ge=16,
        description="tokens per packed row (at least max_length): longer rows share the instruction more",
    )
    save_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    init_from: str | None = Field(
        None,
        description="lora/dora: start from this adapter's weights (T@N, or 'production' for the "
        "task's production adapter, if any) instead of from zero: a warm start",
    )

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.method == "topk" and self.topk_lora:
            return DEFAULT_LR_TOPK_LORA
        return DEFAULT_LR[self.method]

    def effective(self) -> dict[str, Any]:
        """Every key with its value as training will use it (lr resolved)."""
        d = self.model_dump()
        d["lr"] = self.learning_rate
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.effective(), sort_keys=False)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _first_error(e: ValidationError, where: str) -> InvalidInput:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(config)"
    if err["type"] == "extra_forbidden":
        known = ", ".join(TrainConfig.model_fields)
        return InvalidInput(f"{where}: unknown training setting {key!r} (known: {known})")
    if key == "method":
        return InvalidInput(
            f"{where}: unknown method {err.get('input')!r} (choose from {', '.join(METHODS)})"
        )
    return InvalidInput(f"{where}: {key}: {err['msg']}")


def build(*layers: tuple[str, dict[str, Any]]) -> TrainConfig:
    """Merge (where, settings) layers, later ones winning, and validate. `where` names the
    layer in errors, e.g. the YAML file or "command line"."""
    merged: dict[str, Any] = {}
    for where, values in layers:
        unknown = [k for k in values if k not in TrainConfig.model_fields]
        if unknown:
            known = ", ".join(TrainConfig.model_fields)
            raise InvalidInput(f"{where}: unknown training setting {unknown[0]!r} (known: {known})")
        merged.update({k: v for k, v in values.items() if v is not None})
        try:
            TrainConfig.model_validate(merged)
        except ValidationError as e:
            raise _first_error(e, where) from None
    return TrainConfig.model_validate(merged)


def read_yaml(path: str | Path) -> dict[str, Any]:
    from whetstone.util import read_yaml_mapping

    data = read_yaml_mapping(path, "training settings")
    # A train.yaml may use the flag spelling (lora-r) as well as the key (lora_r).
    return {str(k).replace("-", "_"): v for k, v in data.items()}
