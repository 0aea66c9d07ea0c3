"""Artefact folders: what a finished run registers, and how inference loads it back.

Every artefact folder holds `whetstone_adapter.json` (method, task kind, labels) beside the
method's own files: a standard PEFT folder for lora/dora (and topk with LoRA), a full model
folder for `full`, just the trained weights for `head` and `topk`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.util import atomic_write_text

META = "whetstone_adapter.json"


def write_meta(folder: Path, **meta: Any) -> None:
    atomic_write_text(folder / META, json.dumps(meta, indent=2, default=str))


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not path.exists():
        if (folder / "adapter_config.json").exists():
            return {"method": "lora"}  # a plain PEFT folder from elsewhere
        raise NotFound(f"{folder} is not a Whetstone artefact (no {META})")
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as e:
        raise InvalidInput(f"{path}: not valid JSON ({e})") from None


def save_artefact(model: Any, tok: Any, folder: Path, *, method: str, **meta: Any) -> None:
    """Write the method's files, the tokenizer and the meta file into `folder` (which the
    caller builds under a temp name with `atomic_dir`)."""
    from whetstone.train import methods

    methods.get(method).save(model, folder)
    tok.save_pretrained(folder)
    write_meta(folder, method=method, **meta)


def load_for_inference(path: Path, base: Any) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the base model `base` (a resolved BaseModel) with the
    artefact at `path` applied. The caller has checked that `base` is the one it was trained on."""
    from whetstone.models import base as base_models
    from whetstone.train import methods

    path = Path(path)
    meta = read_meta(path)
    model, tok = base_models.load(base)
    if meta.get("labels_head"):
        from whetstone.train.label_head import load as load_label_head

        model = load_label_head(model, tok, path)
    else:
        model = methods.get(str(meta["method"])).load(model, path)
    model.eval()
    return model, tok
