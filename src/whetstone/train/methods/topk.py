"""Top-K blocks: only the top `topk_layers` transformer blocks (and the final norm) train, in
full or, with `topk_lora`, through LoRA on those blocks only.

The frozen lower blocks run under torch.no_grad() and their output is detached before the
lowest trainable block, so autograd records nothing below it: the backward pass is short and
the lower blocks keep no activations. That makes this the fastest method per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput
from whetstone.train.config import TrainConfig
from whetstone.train.methods import causal_lm, decoder_layers, lora

FILE = "topk.safetensors"


def top_indices(model: Any, k: int) -> list[int]:
    n = len(decoder_layers(model))
    if k > n:
        raise InvalidInput(f"topk_layers={k} but the model has only {n} blocks")
    return list(range(n - k, n))


def stop_grad_below(model: Any, lowest: int) -> None:
    """Run blocks [0, lowest) without autograd; detach what enters block `lowest`."""
    import torch

    layers = decoder_layers(model)
    saved: list[bool] = []

    def enter_frozen(module: Any, args: Any, kwargs: Any) -> None:
        saved.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def enter_trainable(module: Any, args: Any, kwargs: Any) -> Any:
        torch.set_grad_enabled(saved.pop() if saved else torch.is_grad_enabled())
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"].detach()
        return args, kwargs

    if lowest > 0:
        layers[0].register_forward_pre_hook(enter_frozen, with_kwargs=True)
        layers[lowest].register_forward_pre_hook(enter_trainable, with_kwargs=True)


def prepare(model: Any, cfg: TrainConfig) -> Any:
    top = top_indices(model, cfg.topk_layers)
    if cfg.topk_lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora.lora_config(model, cfg, layers=top))
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        for i in top:
            for p in decoder_layers(model)[i].parameters():
                p.requires_grad_(True)
        body = getattr(causal_lm(model), causal_lm(model).base_model_prefix)
        if hasattr(body, "norm"):
            body.norm.weight.requires_grad_(True)
    stop_grad_below(model, top[0])
    return model


def save(model: Any, folder: Path) -> None:
    if hasattr(model, "peft_config"):
        lora.save(model, folder)
        return
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(folder / FILE))


def load(model: Any, folder: Path) -> Any:
    if (folder / "adapter_config.json").exists():
        return lora.load(model, folder)
    import torch
    from safetensors.torch import load_file

    state = load_file(str(folder / FILE))
    params = dict(model.named_parameters())
    unknown = set(state) - set(params)
    if unknown:
        raise InvalidInput(
            f"{folder / FILE} has weights the base model lacks: {sorted(unknown)[:3]}"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    return model
