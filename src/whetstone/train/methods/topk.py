"""Top-K blocks: only the top `topk_layers` transformer blocks (and the final norm) train, in
full or, with `topk_lora`, through LoRA on those blocks only.

The frozen lower blocks run under torch.no_grad() and their output is detached before the
lowest trainable block, so autograd records nothing below it: the backward pass is short and
the lower blocks keep no activations. That makes this the fastest method per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from whetstone.errors import InvalidInput
from whetstone.models import artefacts
from whetstone.train.methods import causal_lm, decoder_layers, lora

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM


class TopkConfig(lora.LoraOptions):
    """The LoRA options apply with `topk_lora` only."""

    method: Literal["topk"] = "topk"
    default_lr: ClassVar[float] = 1e-4
    tuned_by_default: ClassVar[bool] = True

    topk_layers: int = Field(4, ge=1, description="how many of the top blocks train")
    topk_lora: bool = Field(
        False, description="LoRA on the top blocks instead of all their weights"
    )

    @property
    def learning_rate(self) -> float:
        if self.lr is None and self.topk_lora:
            return lora.LoraConfig.default_lr  # LoRA weights learn at LoRA's rate
        return super().learning_rate

    @property
    def uses_lora(self) -> bool:
        return self.topk_lora


CONFIG = TopkConfig


def top_indices(model: CausalLM, k: int) -> list[int]:
    n = len(decoder_layers(model))
    if k > n:
        raise InvalidInput(f"topk_layers={k} but the model has only {n} blocks")
    return list(range(n - k, n))


def stop_grad_below(model: CausalLM, lowest: int) -> None:
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


def prepare(model: PreTrainedModel, cfg: TopkConfig) -> CausalLM:
    top = top_indices(model, cfg.topk_layers)
    prepared: CausalLM = model
    if cfg.topk_lora:
        from peft import get_peft_model

        prepared = get_peft_model(model, lora.lora_config(model, cfg, layers=top))
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        for i in top:
            for p in decoder_layers(model)[i].parameters():
                p.requires_grad_(True)
        body = getattr(causal_lm(model), causal_lm(model).base_model_prefix)
        if hasattr(body, "norm"):
            body.norm.weight.requires_grad_(True)
    stop_grad_below(prepared, top[0])
    return prepared


def save(model: CausalLM, folder: Path) -> None:
    if hasattr(model, "peft_config"):
        artefacts.save_peft(model, folder)
    else:
        artefacts.save_trainable(model, folder)
