"""Adapter artefact folders: the files a finished training run registers, and how inference
puts them back onto a base model.

Every folder holds `whetstone_adapter.json` (method, task kind, labels) and the tokenizer
beside the weights, in one of these formats, each marked by its own file:

- PEFT (`adapter_config.json`): lora, dora, topk with LoRA; vLLM and LoRAX load it as it is
- output head only (`lm_head.safetensors`): method head
- top blocks' weights (`topk.safetensors`): topk
- a whole model folder (`config.json`): method full
- a label head (`label_head.safetensors`, labels in the meta file): `whetstone.models.label_head`

Training chooses a format per method (`whetstone.train.methods`); loading reads the format
from the folder, so inference needs no list of training methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.util import atomic_write_text

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

    from whetstone.models.base import BaseModel
    from whetstone.models.types import CausalLM, InferenceModel, Tokenizer

META = "whetstone_adapter.json"
PEFT_FILE = "adapter_config.json"
LM_HEAD_FILE = "lm_head.safetensors"
TOPK_FILE = "topk.safetensors"
FULL_MODEL_FILE = "config.json"


def write_meta(folder: Path, **meta: Any) -> None:
    atomic_write_text(folder / META, json.dumps(meta, indent=2, default=str))


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not path.exists():
        if (folder / PEFT_FILE).exists():
            return {"method": "lora"}  # a plain PEFT folder from elsewhere
        raise NotFound(f"{folder} is not a Whetstone artefact (no {META})")
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as e:
        raise InvalidInput(f"{path}: not valid JSON ({e})") from None


def save_artefact(
    model: CausalLM,
    tok: Tokenizer,
    folder: Path,
    *,
    save_weights: Callable[[CausalLM, Path], None],
    method: str,
    **meta: Any,
) -> None:
    """Write the weights (`save_weights`, the method's choice of format), the tokenizer and
    the meta file into `folder` (which the caller builds under a temp name with `atomic_dir`)."""
    save_weights(model, folder)
    tok.save_pretrained(folder)
    write_meta(folder, method=method, **meta)


def load_for_inference(path: Path, base: BaseModel) -> tuple[InferenceModel, Tokenizer]:
    """(model, tokenizer) in eval mode: the base model `base` (a resolved BaseModel) with the
    artefact at `path` applied. The caller has checked that `base` is the one it was trained on."""
    from whetstone.models import base as base_models

    path = Path(path)
    meta = read_meta(path)
    base_model, tok = base_models.load(base)
    model: InferenceModel
    if meta.get("labels_head"):
        from whetstone.models.label_head import load_label_head

        model = load_label_head(base_model, tok, path, list(meta["labels_head"]))
    else:
        model = load_weights(base_model, path)
    model.eval()
    return model, tok


def load_weights(model: PreTrainedModel, folder: Path) -> CausalLM:
    """Put the weights saved in `folder` onto a freshly loaded base model, by their format."""
    if (folder / PEFT_FILE).exists():
        return load_peft(model, folder)
    if (folder / LM_HEAD_FILE).exists():
        return load_lm_head(model, folder)
    if (folder / TOPK_FILE).exists():
        return load_trainable(model, folder)
    if (folder / FULL_MODEL_FILE).exists():
        return load_full_model(model, folder)
    raise InvalidInput(f"{folder} holds no adapter weights Whetstone can load")


# ---- PEFT (lora, dora, topk with LoRA) ---------------------------------------------------
def save_peft(model: CausalLM, folder: Path) -> None:
    model.save_pretrained(str(folder))


def load_peft(model: PreTrainedModel, folder: Path) -> PeftModel:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder)


# ---- a whole model folder (full) ---------------------------------------------------------
def save_full_model(model: CausalLM, folder: Path) -> None:
    model.save_pretrained(str(folder))


def load_full_model(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    from whetstone.models.base import to_device

    # The saved folder is a complete model: the freshly loaded base only gives the dtype/device.
    p = next(model.parameters())
    return to_device(AutoModelForCausalLM.from_pretrained(folder, dtype=p.dtype), p.device)


# ---- the output head alone (head) --------------------------------------------------------
def untie(model: PreTrainedModel) -> PreTrainedModel:
    """Give lm_head its own copy of the weights. Models like SmolLM2 tie lm_head to the input
    embeddings; training (or loading) the tied matrix would also change every input token's
    embedding."""
    import torch

    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return model


def save_lm_head(model: CausalLM, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"weight": model.get_output_embeddings().weight.detach().contiguous()},
        str(folder / LM_HEAD_FILE),
    )


def load_lm_head(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    import torch
    from safetensors.torch import load_file

    untie(model)
    weight = load_file(str(folder / LM_HEAD_FILE))["weight"]
    with torch.no_grad():
        model.get_output_embeddings().weight.copy_(weight)
    return model


# ---- the weights that trained, by name (topk) --------------------------------------------
def save_trainable(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(folder / TOPK_FILE))


def load_trainable(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    from safetensors.torch import load_file

    path = folder / TOPK_FILE
    copy_weights(model, load_file(str(path)), f"{path} has weights the base model lacks")
    return model


def copy_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], unknown: str) -> None:
    """Copy `state` into the model's parameters of the same names; a name the model lacks is
    an error (`unknown`, then the first few names)."""
    import torch

    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise InvalidInput(f"{unknown}: {sorted(missing)[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
