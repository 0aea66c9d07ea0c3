"""Training methods, one small module each with the same three functions:

    prepare(model, cfg) -> model     set what trains (and wrap it, e.g. with PEFT)
    save(model, folder)              write the artefact: only what the method changed
    load(model, folder) -> model     put a saved artefact onto a freshly loaded base model

`head` on a classify task is different enough (a label head on cached features, no language
model loss) that it has its own trainer in `whetstone.train.label_head`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from whetstone.errors import InvalidInput


def get(method: str) -> ModuleType:
    from whetstone.train.methods import dora, full, head, lora, topk

    table = {"lora": lora, "dora": dora, "full": full, "head": head, "topk": topk}
    if method not in table:
        raise InvalidInput(f"unknown method {method!r} (choose from {', '.join(table)})")
    return table[method]


def causal_lm(model: Any) -> Any:
    """The transformers *ForCausalLM under any PEFT wrapping."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: Any) -> Any:
    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    if not hasattr(body, "layers"):
        raise InvalidInput(f"{type(lm).__name__} has no `layers` list of transformer blocks")
    return body.layers


def block_linear_names(model: Any) -> list[str]:
    """Names of the linear layers inside the transformer blocks (q/k/v/o, gate/up/down...)."""
    import torch

    names = {
        n.rsplit(".", 1)[-1]
        for n, m in decoder_layers(model).named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    return sorted(names)


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise InvalidInput(f"checkpoint has weights this model lacks: {sorted(missing)[:3]}")
    import torch

    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
