"""Scale-out on existing engines: write an adapter version as a plain PEFT folder (what vLLM's
`--lora-modules` and LoRAX load as is), as a merged full model, or a vLLM launch script that
serves the base with every production adapter.

vLLM's LoRA support refuses DoRA adapters and adapters with `modules_to_save` (trained
embedding or output layers); LoRAX shares the first limit. `compatibility` names such
problems; the `vllm` format refuses them, the `peft` format exports and warns.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whetstone import registry
from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.registry import AdapterVersion
from whetstone.util import atomic_dir, atomic_write_text, check_target, user_target

FORMATS = ("peft", "merged", "vllm")
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class Export:
    path: Path
    warnings: list[str] = field(default_factory=list)


def _peft_config(av: AdapterVersion) -> dict[str, Any]:
    if not av.path.is_dir():
        raise NotFound(f"the files of {av.name} are missing ({av.path})")
    if not av.is_peft:
        raise InvalidInput(
            f"{av.name} was trained with method {av.method!r}, which is not a PEFT adapter; "
            "export it with --format merged"
        )
    return dict(json.loads((av.path / "adapter_config.json").read_text()))


def compatibility(av: AdapterVersion) -> list[str]:
    """Why vLLM (and LoRAX) would refuse this adapter; empty when they load it."""
    cfg = _peft_config(av)
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"{av.name} is a {cfg.get('peft_type')} adapter; vLLM serves LoRA only")
    if cfg.get("use_dora"):
        problems.append(f"{av.name} is a DoRA adapter, which vLLM refuses (use --format merged)")
    if cfg.get("modules_to_save"):
        problems.append(
            f"{av.name} trains whole modules ({', '.join(cfg['modules_to_save'])}: "
            "modules_to_save), which vLLM refuses (use --format merged)"
        )
    return problems


def export_peft(project: Project, ref: str, out: Path, *, force: bool = False) -> Export:
    """The adapter's PEFT folder, copied as is (plus Whetstone's own meta file). `out` must be
    new or empty; `force` replaces a folder an earlier export wrote, nothing else."""
    av = registry.get(project, ref)
    warnings = compatibility(av)
    with atomic_dir(
        out, replace=user_target(force), written_by="export-model --format peft"
    ) as tmp:
        shutil.copytree(av.path, tmp, dirs_exist_ok=True)
    return Export(out, warnings)


def export_merged(project: Project, ref: str, out: Path, *, force: bool = False) -> Export:
    """Base + adapter merged into one full Hugging Face model folder (any engine serves it)."""
    from whetstone.models import base as base_models

    replace = user_target(force)
    check_target(out, folder=True, replace=replace)  # before loading any model
    av = registry.get(project, ref)
    _peft_config(av)
    base = base_models.resolve(av.base_model)
    if base.hash != av.base_hash:
        raise InvalidInput(
            f"{av.name} was trained on a base model whose weights changed since ({av.base_model})"
        )
    from peft import PeftModel

    model, tok = base_models.load(base)
    on_cpu = base_models.to_device(model, "cpu")
    merged = PeftModel.from_pretrained(on_cpu, str(av.path)).merge_and_unload()
    with atomic_dir(out, replace=replace, written_by="export-model --format merged") as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Export(out)


def export_vllm(project: Project, refs: list[str], out: Path, *, force: bool = False) -> Export:
    """`out/adapters/<name>/` for each adapter (default: every production version, served
    under its task name) and `out/serve-vllm.sh` starting vLLM with all of them."""
    from whetstone.models import base as base_models

    replace = user_target(force)
    check_target(out, folder=True, replace=replace)
    if refs:
        chosen = [(ref, registry.get(project, ref)) for ref in refs]
    else:
        chosen = [
            (t.name, av)
            for t in project.store.list_tasks()
            if (av := registry.production(project, t.name)) is not None
        ]
    if not chosen:
        raise NotFound("no production adapters to export (promote one, or name versions)")
    problems = [p for _, av in chosen for p in compatibility(av)]
    if problems:
        raise InvalidInput("vLLM cannot serve these adapters: " + "; ".join(problems))
    bases = {av.base_hash for _, av in chosen}
    if len(bases) > 1:
        raise InvalidInput(
            "the adapters were trained on different base models; one vLLM "
            "server serves one base: export them separately"
        )
    base = base_models.resolve(chosen[0][1].base_model)
    rank = max(int(_peft_config(av).get("r", 8)) for _, av in chosen)
    max_rank = next((r for r in VLLM_RANKS if r >= rank), None)
    if max_rank is None:
        raise InvalidInput(f"LoRA rank {rank} is above what vLLM serves ({VLLM_RANKS[-1]})")
    with atomic_dir(out, replace=replace, written_by="export-model --format vllm") as tmp:
        modules = []
        for name, av in chosen:
            folder = name.replace("@", "-v")
            shutil.copytree(av.path, tmp / "adapters" / folder)
            modules.append(f"{name}=$HERE/adapters/{folder}")
        command = [
            "vllm",
            "serve",
            base.path,
            "--served-model-name",
            "base",
            "--enable-lora",
            "--max-lora-rank",
            str(max_rank),
            "--max-loras",
            str(len(chosen)),
        ]
        script = (
            "#!/bin/sh\n# Written by `whetstone export-model --format vllm`: the base model with "
            "every adapter below, on vLLM's OpenAI-compatible server.\n"
            'HERE="$(cd "$(dirname "$0")" && pwd)"\n'
            + " ".join(shlex.quote(c) for c in command)
            + " \\\n  --lora-modules "
            + " ".join(f'"{m}"' for m in modules)
            + ' "$@"\n'
        )
        atomic_write_text(tmp / "serve-vllm.sh", script)
        (tmp / "serve-vllm.sh").chmod(0o755)
    return Export(out)
