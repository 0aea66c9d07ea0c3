"""LoRA: low-rank updates on the blocks' linear layers, saved in standard PEFT format (vLLM
and LoRAX load the folder as it is)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from whetstone.models import artefacts
from whetstone.train.config import LoopConfig
from whetstone.train.methods import block_linear_names

if TYPE_CHECKING:
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


class LoraOptions(LoopConfig):
    """The LoRA options, shared by every method that trains LoRA weights (lora, dora, topk)."""

    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="default: every linear layer of the blocks"
    )

    @property
    def uses_lora(self) -> bool:
        return True


class LoraConfig(LoraOptions):
    method: Literal["lora"] = "lora"
    default_lr: ClassVar[float] = 1e-3
    tuned_by_default: ClassVar[bool] = True

    init_from: str | None = Field(
        None,
        description="start from this adapter's weights (T@N, or 'production' for the task's "
        "production adapter, if any) instead of from zero: a warm start",
    )


CONFIG = LoraConfig


def lora_config(
    model: CausalLM, cfg: LoraOptions, *, dora: bool = False, layers: list[int] | None = None
) -> PeftLoraConfig:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
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


def prepare(model: PreTrainedModel, cfg: LoraOptions) -> PeftModel:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, cfg))


def save(model: CausalLM, folder: Path) -> None:
    artefacts.save_peft(model, folder)
