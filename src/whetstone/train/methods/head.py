"""Output head only: the body stays frozen and only lm_head trains (on a classify task too:
the label head on pooled features is the method `label_head`).

Models like SmolLM2 tie lm_head to the input embeddings; training the tied matrix would also
change every input token's embedding, so the head is untied first and saved on its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from whetstone.models import artefacts
from whetstone.train.config import LoopConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


class HeadConfig(LoopConfig):
    method: Literal["head"] = "head"
    default_lr: ClassVar[float] = 1e-3


CONFIG = HeadConfig


def prepare(model: PreTrainedModel, cfg: HeadConfig) -> PreTrainedModel:
    artefacts.untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_output_embeddings().weight.requires_grad_(True)
    return model


def save(model: CausalLM, folder: Path) -> None:
    artefacts.save_lm_head(model, folder)
