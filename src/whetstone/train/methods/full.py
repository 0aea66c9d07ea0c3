"""Full fine-tuning: every weight trains (low learning rate); the artefact is a whole model
folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from whetstone.models import artefacts
from whetstone.train.config import LoopConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


class FullConfig(LoopConfig):
    method: Literal["full"] = "full"
    default_lr: ClassVar[float] = 2e-5


CONFIG = FullConfig


def prepare(model: PreTrainedModel, cfg: FullConfig) -> PreTrainedModel:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model: CausalLM, folder: Path) -> None:
    artefacts.save_full_model(model, folder)
