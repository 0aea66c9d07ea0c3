"""LoRA: low-rank updates on the blocks' linear layers, saved in standard PEFT format (vLLM
and LoRAX load the folder as it is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whetstone.train.config import TrainConfig
from whetstone.train.methods import block_linear_names


def lora_config(
    model: Any, cfg: TrainConfig, *, dora: bool = False, layers: list[int] | None = None
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules or block_linear_names(model),
        use_dora=dora,
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare(model: Any, cfg: TrainConfig) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg))


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load(model: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder)
