"""Training methods, one small module each: the method's config class (its own options, on
top of the shared ones of `TrainConfig`) and what it does to the model:

    CONFIG                           the method's config class; its `method` default is its name
    prepare(model, cfg) -> model     set what trains (and wrap it, e.g. with PEFT)
    save(model, folder)              write only what the method changed, in one of the
                                     artefact formats of `whetstone.models.artefacts`

Loading an artefact back is not the method's business: `whetstone.models.artefacts` reads the
format from the folder, so inference (a lower layer than training) needs no method list.

`label_head` (classify tasks) is different enough (a label head on cached features, no language
model loss) that it has its own trainer in `whetstone.train.label_head`; its module declares
only its config.

`registry()` is the one list of methods: the CLI, the config, `tune` and training read it.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, cast

from whetstone.errors import InvalidInput
from whetstone.models import artefacts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM

DEFAULT = "lora"


@cache
def registry() -> dict[str, ModuleType]:
    """Method name → its module. Imported here, not at the top: the modules import this
    package's helpers below."""
    from whetstone.train.methods import dora, full, head, label_head, lora, topk

    modules = (lora, dora, full, head, topk, label_head)
    return {m.CONFIG.model_fields["method"].default: m for m in modules}


def names() -> list[str]:
    return list(registry())


def get(method: str) -> ModuleType:
    table = registry()
    if method not in table:
        raise InvalidInput(f"unknown method {method!r} (choose from {', '.join(table)})")
    return table[method]


def causal_lm(model: CausalLM) -> PreTrainedModel:
    """The transformers *ForCausalLM under any PEFT wrapping."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        # peft types get_base_model() as any Module: under a PeftModel of a causal LM, the LM.
        return cast("PreTrainedModel", model.get_base_model())
    return model


def decoder_layers(model: CausalLM) -> torch.nn.ModuleList:
    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    if not hasattr(body, "layers"):
        raise InvalidInput(f"{type(lm).__name__} has no `layers` list of transformer blocks")
    return body.layers


def block_linear_names(model: CausalLM) -> list[str]:
    """Names of the linear layers inside the transformer blocks (q/k/v/o, gate/up/down...)."""
    import torch

    names = {
        n.rsplit(".", 1)[-1]
        for n, m in decoder_layers(model).named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    return sorted(names)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    artefacts.copy_weights(model, state, "checkpoint has weights this model lacks")
