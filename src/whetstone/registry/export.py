"""Scale-out on existing engines: write an adapter version as a plain PEFT folder (what vLLM's
`--lora-modules` and LoRAX load as is), as a merged full model, or a vLLM launch script that
serves the base with every production adapter. On devices: as one GGUF file (llama.cpp, LM
Studio), a GGUF LoRA over the base model's GGUF, or an Ollama folder (`models.gguf`); each
GGUF export is handed to a check (the caller's, `evaluate.ondevice`) before it is called done.

vLLM's LoRA support refuses DoRA adapters and adapters with `modules_to_save` (trained
embedding or output layers); LoRAX shares the first limit. `compatibility` names such
problems; the `vllm` format refuses them, the `peft` format exports and warns.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone import registry
from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.registry import AdapterVersion
from whetstone.util import atomic_dir, atomic_write_text, check_target, user_target

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer

FORMATS = ("peft", "merged", "vllm", "gguf", "gguf-lora", "ollama")
GGUF_FORMATS = ("gguf", "gguf-lora", "ollama")
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
REPORT = "export-report.json"


@dataclass
class Export:
    path: Path
    warnings: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None  # a GGUF export's check


@dataclass
class Shipped:
    """What a GGUF export wrote, handed to its check while still under a temp name."""

    adapter: AdapterVersion
    model: Path  # the GGUF file a runtime loads (the base model's, for gguf-lora)
    lora: Path | None  # the GGUF LoRA applied over it
    quant: str
    merged: PreTrainedModel  # the adapter merged into its base, in PyTorch (fp32, CPU)
    tokenizer: Tokenizer


# A GGUF export's check: its report (a JSON-able dict); it raises to refuse the export.
Check = Callable[[Shipped], dict[str, Any]]


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


# ---------------------------------------------------------------- GGUF (llama.cpp, Ollama)


def gguf_refusal(av: AdapterVersion, fmt: str) -> str | None:
    """Why `av` cannot leave as `fmt` (one line), or None."""
    from whetstone.models.artefacts import read_meta

    if not av.path.is_dir():
        return f"the files of {av.name} are missing ({av.path})"
    if read_meta(av.path).get("labels_head"):
        return (
            f"{av.name} is a label head (method {av.method}): it answers by scoring its labels "
            "with a head of its own, which GGUF runtimes cannot run; train a LoRA to ship it"
        )
    if fmt != "gguf-lora":
        return None
    if not av.is_peft:
        return (
            f"{av.name} was trained with method {av.method!r}, which has no LoRA: use --format gguf"
        )
    cfg = _peft_config(av)
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        kind = "DoRA" if cfg.get("use_dora") else str(cfg.get("peft_type"))
        return (
            f"{av.name} is a {kind} adapter; llama.cpp applies plain LoRA only: use --format gguf"
        )
    if cfg.get("modules_to_save"):
        return f"{av.name} trains whole modules (modules_to_save), which a GGUF LoRA cannot hold: use --format gguf"
    return None


def _merged(av: AdapterVersion) -> tuple[PreTrainedModel, Tokenizer]:
    """The adapter put on its base and merged into plain weights, in fp32 on the CPU."""
    import torch

    from whetstone.models import base as base_models
    from whetstone.models.artefacts import load_weights

    base = base_models.resolve(av.base_model)
    if base.hash != av.base_hash:
        raise InvalidInput(
            f"{av.name} was trained on a base model whose weights changed since ({av.base_model})"
        )
    model, tok = base_models.load(base, dtype=torch.float32)
    adapted: Any = load_weights(base_models.to_device(model, "cpu"), av.path)
    merge = getattr(adapted, "merge_and_unload", None)  # PEFT's; the other formats are plain
    return (merge() if merge else adapted).eval(), tok


def _stem(av: AdapterVersion) -> str:
    return f"{av.task}-v{av.version}"


def export_gguf(
    project: Project,
    ref: str,
    out: Path,
    *,
    fmt: str = "gguf",
    quant: str = "f16",
    force: bool = False,
    check: Check | None = None,
) -> Export:
    """`fmt` gguf: the adapter merged into its base as one GGUF file (weights, tokenizer and
    chat template inside); gguf-lora: the LoRA alone as a GGUF LoRA plus the base model's
    GGUF (f16) it applies over; ollama: the merged GGUF with a Modelfile. `check` runs on the
    written files before they are put in place; its report is saved beside them."""
    from whetstone.models import gguf

    if fmt not in GGUF_FORMATS:
        raise InvalidInput(f"not a GGUF format: {fmt!r} ({', '.join(GGUF_FORMATS)})")
    if quant not in gguf.QUANTS:
        raise InvalidInput(f"unknown --quant {quant!r} (choose from {', '.join(gguf.QUANTS)})")
    replace = user_target(force)
    check_target(out, folder=True, replace=replace)  # before loading any model
    av = registry.get(project, ref)
    reason = gguf_refusal(av, fmt)
    if reason:
        raise InvalidInput(f"cannot export as {fmt}: {reason}")
    gguf.converters_dir()  # fails early, with the setup step to run
    merged, tok = _merged(av)
    report = None
    with (
        atomic_dir(out, replace=replace, written_by=f"export-model --format {fmt}") as tmp,
        tempfile.TemporaryDirectory(prefix="whetstone-gguf-") as work,
    ):
        shipped = _write_gguf(av, fmt, quant, Path(tmp), Path(work), merged, tok)
        if check is not None:
            report = check(shipped)
            atomic_write_text(tmp / REPORT, json.dumps(report, indent=2, default=str) + "\n")
        if fmt == "ollama":
            system = _instruction(project, av.task)
            fmt_ = gguf.chat_format(tok)
            eos = merged.generation_config.eos_token_id
            stops = gguf.stop_strings(tok, eos if isinstance(eos, list) else [eos], fmt_)
            text = gguf.modelfile(shipped.model.name, fmt_, stops, system)
            atomic_write_text(tmp / "Modelfile", text)
        readme = _readme(av, fmt, shipped, Path(out), checked=report is not None)
        atomic_write_text(tmp / "README.md", readme)
    return Export(out, report=report)


def _instruction(project: Project, task: str) -> str:
    from whetstone.prompts import instruction

    return instruction(project.task(task))


def _write_gguf(
    av: AdapterVersion,
    fmt: str,
    quant: str,
    folder: Path,
    work: Path,
    merged: PreTrainedModel,
    tok: Tokenizer,
) -> Shipped:
    """Write the export's GGUF files into `folder` (scratch files in `work`)."""
    from whetstone.models import gguf

    if fmt != "gguf-lora":
        hf = work / "merged"
        merged.save_pretrained(hf)
        tok.save_pretrained(hf)
        model = gguf.write_model(hf, folder / f"{_stem(av)}.{quant}.gguf", quant)
        return Shipped(av, model, None, quant, merged, tok)
    base = base_gguf(av, quant)
    model = folder / f"base.{quant}.gguf"
    _link_or_copy(base, model)
    lora = gguf.write_lora(av.path, Path(_base_path(av)), folder / f"{_stem(av)}.lora.gguf")
    return Shipped(av, model, lora, quant, merged, tok)


def _base_path(av: AdapterVersion) -> str:
    from whetstone.models import base as base_models

    return base_models.resolve(av.base_model).path


def base_gguf(av: AdapterVersion, quant: str) -> Path:
    """The base model of `av` as GGUF, written once into Whetstone's cache: every LoRA of
    that base is exported over the same file (a device keeps one base for many)."""
    from whetstone.models import gguf
    from whetstone.models.base import cache_root

    folder = cache_root() / "gguf" / f"{av.base_hash[:16]}-{quant}"
    path = folder / f"base.{quant}.gguf"
    if not path.exists():
        with atomic_dir(folder, replace="owned") as tmp:
            gguf.write_model(Path(_base_path(av)), tmp / path.name, quant)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _readme(av: AdapterVersion, fmt: str, shipped: Shipped, out: Path, checked: bool) -> str:
    name = _stem(av).lower()  # Ollama's model names are lower case
    model = shipped.model.name
    lines = [
        f"# {av.name} for on-device runtimes (`whetstone export-model --format {fmt}`)",
        "",
        f"Written from adapter {av.name} (method {av.method}, base {av.base_model}); "
        f"GGUF type {shipped.quant}."
        + (
            f" `{REPORT}` is the check it was put through before it was called done: which "
            "check ran, on which held-out records, and how it compared with the PyTorch adapter."
            if checked
            else ""
        ),
        "",
    ]
    if fmt == "ollama":
        lines += [
            "From the adapter to a running Ollama model, three commands:",
            "",
            "```sh",
            f"whetstone export-model {av.name} --format ollama --quant {shipped.quant} -o {out}",
            f"ollama create {name} -f {out}/Modelfile",
            f"ollama run {name} 'your input here'",
            "```",
        ]
    elif fmt == "gguf-lora":
        lora = shipped.lora.name if shipped.lora else ""
        lines += [
            f"`{lora}` is the LoRA alone; `{model}` the base model it applies over (one base "
            "file serves every LoRA of it):",
            "",
            "```sh",
            f"llama-cli -m {model} --lora {lora} -cnv --temp 0",
            "```",
        ]
    else:
        lines += ["```sh", f"llama-cli -m {model} -cnv --temp 0", "```"]
    return "\n".join(lines) + "\n"
