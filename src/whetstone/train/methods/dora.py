"""DoRA: LoRA with the weight split into magnitude and direction (peft's use_dora)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whetstone.train.config import TrainConfig
from whetstone.train.methods import lora


def prepare(model: Any, cfg: TrainConfig) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, lora.lora_config(model, cfg, dora=True))


def save(model: Any, folder: Path) -> None:
    lora.save(model, folder)


def load(model: Any, folder: Path) -> Any:
    return lora.load(model, folder)
