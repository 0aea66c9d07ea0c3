"""Output head only (generate/extract tasks): the body stays frozen and only lm_head trains.

Models like SmolLM2 tie lm_head to the input embeddings; training the tied matrix would also
change every input token's embedding, so the head is untied first and saved on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whetstone.train.config import TrainConfig

FILE = "lm_head.safetensors"


def untie(model: Any) -> Any:
    import torch

    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return model


def prepare(model: Any, cfg: TrainConfig) -> Any:
    untie(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_output_embeddings().weight.requires_grad_(True)
    return model


def save(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"weight": model.get_output_embeddings().weight.detach().contiguous()}, str(folder / FILE)
    )


def load(model: Any, folder: Path) -> Any:
    import torch
    from safetensors.torch import load_file

    untie(model)
    weight = load_file(str(folder / FILE))["weight"]
    with torch.no_grad():
        model.get_output_embeddings().weight.copy_(weight)
    return model
