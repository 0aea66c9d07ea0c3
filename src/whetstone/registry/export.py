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
    """The adapter's PEFT folder, made to describe itself (`describe`): the base named by a
    portable id in `adapter_config.json`, the task's instruction in `whetstone.json` and as
    the default system prompt of the tokenizer's chat template, a model card README.md.
    `out` must be new or empty; `force` replaces a folder an earlier export wrote, nothing
    else."""
    av = registry.get(project, ref)
    warnings = compatibility(av)
    about = describe(project, av)
    with atomic_dir(
        out, replace=user_target(force), written_by="export-model --format peft"
    ) as tmp:
        shutil.copytree(av.path, tmp, dirs_exist_ok=True)
        _write_description(av, about, tmp)
    return Export(out, warnings)


DESCRIPTION = "whetstone.json"


def portable_base(av: AdapterVersion) -> dict[str, Any]:
    """How another machine finds the base model of `av`: `id` (a hub id where there is one,
    else the local folder, `local` true), `revision` (the hub commit, when known) and
    `local_path`, this machine's copy, only a hint."""
    from whetstone.models import base as base_models

    name = base_models.ALIASES.get(av.base_model, av.base_model)
    if name in base_models.BUNDLED:
        return {
            "id": base_models.HUB_IDS[name],
            "revision": None,
            "local": False,
            "local_path": base_models.resolve(name).path,
            "note": (
                "Whetstone trained this adapter on its bundled copy of this model, a Q4_1 "
                "GGUF build dequantized to fp32: close to the hub weights, not identical, so "
                "answers on the hub weights may differ slightly from Whetstone's (the merged "
                "export carries the exact weights)."
            ),
        }
    if Path(av.base_model).expanduser().exists():
        path = str(Path(av.base_model).expanduser().resolve())
        note = (
            "The base model is a local folder with no hub id: another machine needs that "
            "folder at the same path, or base_model_name_or_path edited to its copy."
        )
        return {"id": path, "revision": None, "local": True, "local_path": path, "note": note}
    # A hub id: its hash is the hub commit Whetstone resolved when it trained.
    return {
        "id": av.base_model,
        "revision": av.base_hash,
        "local": False,
        "local_path": None,
        "note": None,
    }


def describe(project: Project, av: AdapterVersion) -> dict[str, Any]:
    """What an exported adapter says about itself (`whetstone.json`, the model card)."""
    from whetstone.prompts import instruction
    from whetstone.util import VERSION

    task = project.task(av.task)
    return {
        "whetstone_version": VERSION,
        "adapter": av.name,
        "method": av.method,
        "task": {"name": task.name, "kind": task.kind.value},
        "instruction": instruction(task),
        "labels": task.labels,
        "schema": task.schema_,
        "metric": av.info.get("metric") or task.main_metric,
        "best_validation": av.info.get("best_metric"),
        "evaluation": _evaluation(project, av),
        "snapshot": _snapshot(project, av),
        "training": av.info.get("config") or {},
        "base_model": portable_base(av),
    }


def _evaluation(project: Project, av: AdapterVersion) -> dict[str, Any] | None:
    """The adapter's newest stored evaluation (on its own snapshot's test split if it has
    one): the main metric with its interval."""
    from whetstone.store import evaluations as stored_evals

    rows = [
        r
        for r in stored_evals.evaluation_summaries(project.store, av.task)
        if r["model"] == av.name
    ]
    rows.sort(
        key=lambda r: (r["snapshot_id"] == av.snapshot_id and r["split"] == "test", r["created_at"])
    )
    if not rows:
        return None
    row = rows[-1]
    infos = stored_evals.evaluation_infos(project.store, av.task, av.name, row["split"])
    info = next((i for eid, i in infos if eid == row["id"]), {})
    metric = info.get("main_metric") or av.info.get("metric") or project.task(av.task).main_metric
    value = row["metrics"].get(metric, {})
    return {
        "id": row["id"],
        "metric": metric,
        "value": value.get("value"),
        "low": value.get("low"),
        "high": value.get("high"),
        "split": row["split"],
        "snapshot": row["snapshot_id"],
        "n": info.get("n"),
    }


def _snapshot(project: Project, av: AdapterVersion) -> dict[str, Any] | None:
    from whetstone.store import snapshots as stored_snaps

    if not av.snapshot_id:
        return None
    try:
        _, members = stored_snaps.snapshot_row(project.store, av.snapshot_id)
    except NotFound:
        return {"id": av.snapshot_id, "counts": {}}
    counts: dict[str, int] = {}
    for _, split, _ in members:
        counts[split] = counts.get(split, 0) + 1
    return {"id": av.snapshot_id, "counts": counts}


def _write_description(av: AdapterVersion, about: dict[str, Any], folder: Path) -> None:
    """Into an exported PEFT folder: the portable base id, `whetstone.json`, the tokenizer
    with the instruction as its default system prompt, and the model card."""
    from whetstone import pages

    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = about["base_model"]["id"]
    config["revision"] = about["base_model"]["revision"]
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    _save_tokenizer(av, about["instruction"], folder)
    atomic_write_text(folder / DESCRIPTION, json.dumps(about, indent=2, default=str) + "\n")
    # A fence the instruction cannot close early.
    fence = "~~~~~" if "```" in about["instruction"] else "```"
    card = pages.render(
        "model_card.md",
        adapter=av.name,
        method=av.method,
        version=about["whetstone_version"],
        task=about["task"],
        labels=about["labels"],
        schema=json.dumps(about["schema"]) if about["schema"] else None,
        instruction=about["instruction"],
        fence=fence,
        metric=about["metric"],
        evaluation=_rounded(about["evaluation"]),
        validation=_round(about["best_validation"]),
        snapshot=about["snapshot"],
        config={
            k: json.dumps(v) if isinstance(v, (dict, list)) else v
            for k, v in about["training"].items()
        },
        base=about["base_model"],
    )
    atomic_write_text(folder / "README.md", card)


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _rounded(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: _round(v) for k, v in evaluation.items()} if evaluation else None


def with_default_system(template: str, system: str) -> str:
    """A chat template that puts `system` first when a chat has no system message, then
    renders as `template` does: the instruction travels with the tokenizer."""
    # A JSON string is a Jinja string literal (non-ASCII kept as is, which Jinja's unescaping
    # round-trips), so any instruction text is safe inside it.
    literal = json.dumps(system, ensure_ascii=False)
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}" + template
    )


def _save_tokenizer(av: AdapterVersion, system: str, folder: Path) -> None:
    """The tokenizer Whetstone prompts the adapter with (its base model's), saved into the
    export with the instruction as the chat template's default system prompt."""
    from transformers import AutoTokenizer

    from whetstone.models import base as base_models

    name = base_models.ALIASES.get(av.base_model, av.base_model)
    source = base_models.resolve(name).path if name in base_models.BUNDLED else av.base_model
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if isinstance(tok.chat_template, str):
        tok.chat_template = with_default_system(tok.chat_template, system)
    tok.save_pretrained(folder)


def export_merged(project: Project, ref: str, out: Path, *, force: bool = False) -> Export:
    """Base + adapter merged into one full Hugging Face model folder (any engine serves it),
    with `whetstone.json` and the instruction as the chat template's default system prompt."""
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
    about = describe(project, av)
    if isinstance(tok.chat_template, str):
        # As in the peft export: the instruction travels as the default system prompt.
        tok.chat_template = with_default_system(tok.chat_template, about["instruction"])
    with atomic_dir(out, replace=replace, written_by="export-model --format merged") as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_text(tmp / DESCRIPTION, json.dumps(about, indent=2, default=str) + "\n")
    return Export(out)


def export_vllm(project: Project, refs: list[str], out: Path, *, force: bool = False) -> Export:
    """`out/adapters/<name>/` for each adapter (default: every production version, served
    under its task name) and `out/serve-vllm.sh` starting vLLM with all of them."""
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
    rank = max(int(_peft_config(av).get("r", 8)) for _, av in chosen)
    max_rank = next((r for r in VLLM_RANKS if r >= rank), None)
    if max_rank is None:
        raise InvalidInput(f"LoRA rank {rank} is above what vLLM serves ({VLLM_RANKS[-1]})")
    with atomic_dir(out, replace=replace, written_by="export-model --format vllm") as tmp:
        _write_vllm(project, chosen, max_rank, tmp)
    return Export(out)


def _write_vllm(
    project: Project, chosen: list[tuple[str, AdapterVersion]], max_rank: int, folder: Path
) -> None:
    """The adapters (each describing itself, as the peft export does), the launch script and
    its README into `folder`. The script names the base by its portable id and finds the
    adapters beside itself, so the folder runs on another machine."""
    modules, instructions = [], []
    for name, av in chosen:
        sub = name.replace("@", "-v")
        shutil.copytree(av.path, folder / "adapters" / sub)
        about = describe(project, av)
        _write_description(av, about, folder / "adapters" / sub)
        modules.append(f"{name}=$HERE/adapters/{sub}")
        instructions.append((name, sub, about["instruction"]))
    base = portable_base(chosen[0][1])
    command = ["vllm", "serve", base["id"], "--served-model-name", "base", "--enable-lora"]
    if base["revision"]:
        command += ["--revision", base["revision"]]
    command += ["--max-lora-rank", str(max_rank), "--max-loras", str(len(chosen))]
    script = (
        "#!/bin/sh\n# Written by `whetstone export-model --format vllm`: the base model with "
        "every adapter below, on vLLM's OpenAI-compatible server. Clients must send each "
        "adapter's instruction as the system message: see README.md.\n"
        'HERE="$(cd "$(dirname "$0")" && pwd)"\n'
        + " ".join(shlex.quote(c) for c in command)
        + " \\\n  --lora-modules "
        + " ".join(f'"{m}"' for m in modules)
        + ' "$@"\n'
    )
    atomic_write_text(folder / "serve-vllm.sh", script)
    (folder / "serve-vllm.sh").chmod(0o755)
    atomic_write_text(folder / "README.md", _vllm_readme(base, instructions))


def _vllm_readme(base: dict[str, Any], instructions: list[tuple[str, str, str]]) -> str:
    """One vLLM server applies one chat template to every adapter, so it cannot add each
    task's instruction itself: the README tells clients to send it."""
    lines = [
        "# Whetstone adapters on vLLM (`whetstone export-model --format vllm`)",
        "",
        f"`./serve-vllm.sh` serves the base model `{base['id']}` "
        + ("(a local folder)" if base["local"] else "(fetched from the Hugging Face hub by vLLM)")
        + " with every adapter under `adapters/`, found beside the script. "
        "Extra arguments go to `vllm serve`.",
        "",
        "**Clients must send the adapter's instruction as the first (system) message of every "
        "chat.** Each adapter was trained with it; without it the adapter answers another "
        "question (often it just echoes the input). The instructions (also in each adapter's "
        "`whetstone.json`):",
        "",
    ]
    for name, sub, text in instructions:
        fence = "~~~~~" if "```" in text else "```"
        lines += [f"- model `{name}` (`adapters/{sub}`):", "", fence, text, fence, ""]
    if base.get("note"):
        lines += [str(base["note"]), ""]
    return "\n".join(lines)


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
