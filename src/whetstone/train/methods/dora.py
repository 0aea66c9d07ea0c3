"""DoRA: LoRA with the weight split into magnitude and direction (peft's use_dora)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from whetstone.models import artefacts
from whetstone.train.methods import lora

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


class DoraConfig(lora.LoraConfig):
    """LoRA's options, a warm start included."""

    method: Literal["dora"] = "dora"  # type: ignore[assignment]
    default_lr: ClassVar[float] = 1e-3


CONFIG = DoraConfig


def prepare(model: PreTrainedModel, cfg: DoraConfig) -> PeftModel:
    from peft import get_peft_model

    return get_peft_model(model, lora.lora_config(model, cfg, dora=True))


def save(model: CausalLM, folder: Path) -> None:
    artefacts.save_peft(model, folder)
