"""Full fine-tuning: every weight trains (low learning rate); the artefact is a whole model
folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whetstone.train.config import TrainConfig


def prepare(model: Any, cfg: TrainConfig) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def load(model: Any, folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    # The saved folder is a complete model: the freshly loaded base only gives the dtype/device.
    p = next(model.parameters())
    return AutoModelForCausalLM.from_pretrained(folder, dtype=p.dtype).to(p.device)
