"""Check a GGUF export before it is called done: the shipped file answers the task's
held-out records in llama.cpp, and its answers and task metric are compared with the PyTorch
adapter's on the same records. An export whose main metric falls by more than a tolerance is
refused. Without llama.cpp installed, the file is read back by transformers' GGUF reader and
its logits compared with the merged PyTorch model's instead; the report says which check ran.

`registry.export` writes the files and calls the check (`export_check`) while they are still
under a temp name, so a refused export leaves nothing at its path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from whetstone.errors import WhetstoneError
from whetstone.evaluate.compare import compare_evaluations
from whetstone.evaluate.runner import choose_snapshot, evaluate, records_to_score
from whetstone.project import Project
from whetstone.prompts import chat
from whetstone.records import Kind

if TYPE_CHECKING:
    from whetstone.registry.export import Check, Shipped

DEFAULT_RECORDS = 32
DEFAULT_TOLERANCE = 2.0  # points (hundredths) of the task's main metric
# Prompts whose logits the fallback compares: each gives one comparison per prompt token.
LOGIT_PROMPTS = 4


class ExportRefused(WhetstoneError):
    """A GGUF export answered worse than its adapter by more than the tolerance."""


def export_check(
    project: Project,
    *,
    records: int = DEFAULT_RECORDS,
    tolerance: float = DEFAULT_TOLERANCE,
    accept_drop: bool = False,
) -> Check:
    """The check `registry.export.export_gguf` runs on a written export: its report, or
    `ExportRefused` (unless `accept_drop`, which keeps the refusal in the report)."""

    def check(shipped: Shipped) -> dict[str, Any]:
        report = check_shipped(project, shipped, records=records, tolerance=tolerance)
        if not report["passed"]:
            if not accept_drop:
                raise ExportRefused(
                    f"export refused: {report['verdict']} (--accept-drop writes it)"
                )
            report["accepted_drop"] = True
        return report

    return check


def check_shipped(
    project: Project, shipped: Shipped, *, records: int, tolerance: float
) -> dict[str, Any]:
    """Answers in llama.cpp against the PyTorch adapter's where llama.cpp is installed and
    the task generates; else logits (`models.gguf.logits_check`)."""
    from whetstone.models import gguf

    av = shipped.adapter
    task = project.task(av.task)
    head = {
        "adapter": av.name,
        "file": shipped.model.name,
        "lora": shipped.lora.name if shipped.lora else None,
        "quant": shipped.quant,
        "size_bytes": shipped.model.stat().st_size,
        "tolerance_points": tolerance,
    }
    missing = gguf.runtime_missing()
    if missing is None and task.kind != Kind.classify:
        return {**head, **_answers(project, shipped, records, tolerance)}
    why = missing or (
        f"task {task.name!r} is a classify task, which Whetstone answers by label likelihood; "
        "a GGUF runtime generates, so answers are not compared"
    )
    return {**head, **_logits(project, shipped, tolerance, why)}


def _answers(project: Project, shipped: Shipped, records: int, tolerance: float) -> dict[str, Any]:
    from whetstone.models.gguf import LLAMA_CPP_PYTHON
    from whetstone.predict import load_gguf_predictor

    av = shipped.adapter
    torch_ev = evaluate(project, av.task, av.name, "test", limit=records)
    predictor = load_gguf_predictor(project, av.task, shipped.model, lora=shipped.lora)
    gguf_ev = evaluate(
        project,
        av.task,
        "base",
        "test",
        torch_ev.snapshot_id,
        limit=records,
        max_new_tokens=torch_ev.info.get("max_new_tokens"),
        predictor=predictor,
    )
    by_id = {p.record_id: p.prediction for p in torch_ev.predictions}
    differ = [p for p in gguf_ev.predictions if by_id.get(p.record_id) != p.prediction]
    paired = compare_evaluations(project, project.task(av.task), gguf_ev, torch_ev).main
    main = torch_ev.main_metric
    drop = 100.0 * (torch_ev.main["value"] - gguf_ev.main["value"])
    passed = drop <= tolerance
    verdict = (
        f"{len(differ)} of {gguf_ev.n} answers differ from {av.name}'s; {main} "
        f"{gguf_ev.main['value']:.3f} against {torch_ev.main['value']:.3f} "
        f"({-drop:+.1f} points; tolerance {tolerance:g})"
    )
    return {
        "check": f"answers: llama.cpp (llama-cpp-python {LLAMA_CPP_PYTHON}) against PyTorch",
        "snapshot": torch_ev.snapshot_id,
        "split": "test",
        "records": gguf_ev.n,
        "differ": len(differ),
        "metric": main,
        "pytorch": torch_ev.main,
        "gguf": gguf_ev.main,
        "drop_points": round(drop, 2),
        "paired_diff": {k: paired[k] for k in ("diff", "low", "high") if k in paired},
        "evaluations": {"pytorch": torch_ev.id, "gguf": gguf_ev.id},
        "examples": [
            {"record_id": p.record_id, "pytorch": by_id.get(p.record_id), "gguf": p.prediction}
            for p in differ[:3]
        ],
        "passed": passed,
        "verdict": verdict,
    }


def _logits(project: Project, shipped: Shipped, tolerance: float, why: str) -> dict[str, Any]:
    """Logits of the file against the merged PyTorch model's on a few held-out prompts: the
    greedy next token may differ at no more than `tolerance` percent of positions, and the
    file's tokenizer must give every prompt the same tokens."""
    from whetstone.models.gguf import logits_check, runtime_missing

    av = shipped.adapter
    task = project.task(av.task)
    snap = choose_snapshot(project, av.task, av.name, None)
    recs = records_to_score(project, snap, "test", LOGIT_PROMPTS)
    chats = [chat(task, r.input) for r in recs]
    if shipped.lora is not None and runtime_missing() is not None:
        return _lora_without_llama_cpp(project, shipped, chats, tolerance, why) | {
            "snapshot": snap.id
        }
    result = logits_check(
        shipped.model, shipped.merged, shipped.tokenizer, chats, lora=shipped.lora
    )
    reader = "llama.cpp" if runtime_missing() is None else "transformers' GGUF reader"
    passed = result.top1_differ_pct <= tolerance and result.same_tokens == result.prompts
    verdict = (
        f"next token differs at {result.positions - result.top1_agree} of {result.positions} "
        f"prompt positions ({result.top1_differ_pct:.1f}%; tolerance {tolerance:g}); largest "
        f"logit difference {result.max_abs_diff:.4f}; {result.same_tokens} of {result.prompts} "
        "prompts tokenized alike by the file's own tokenizer"
    )
    return {
        "check": f"logits: {reader} against the merged PyTorch model ({why})",
        "snapshot": snap.id,
        "split": "test",
        "records": result.prompts,
        "positions": result.positions,
        "top1_agree": result.top1_agree,
        "max_abs_logit_diff": result.max_abs_diff,
        "same_tokens": result.same_tokens,
        "passed": passed,
        "verdict": verdict,
    }


# A GGUF LoRA is written in f32: its updates read back as they were trained, to rounding.
LORA_REL_TOLERANCE = 1e-3


def _lora_without_llama_cpp(
    project: Project,
    shipped: Shipped,
    chats: list[list[dict[str, str]]],
    tolerance: float,
    why: str,
) -> dict[str, Any]:
    """Without llama.cpp nothing applies a GGUF LoRA, so its two files are checked apart:
    the base GGUF's logits against the base PyTorch model's, and the LoRA's tensors read back
    against the adapter's (`models.gguf.lora_check`)."""
    import torch

    from whetstone.models import base as base_models
    from whetstone.models.gguf import logits_check, lora_check

    av = shipped.adapter
    model, tok = base_models.load(base_models.resolve(av.base_model), dtype=torch.float32)
    base = logits_check(shipped.model, model, tok, chats)
    assert shipped.lora is not None
    lora = lora_check(shipped.lora, av.path)
    passed = (
        base.top1_differ_pct <= tolerance
        and base.same_tokens == base.prompts
        and lora.pairs == lora.expected
        and lora.max_rel_diff <= LORA_REL_TOLERANCE
    )
    verdict = (
        f"base file: next token differs at {base.positions - base.top1_agree} of "
        f"{base.positions} prompt positions; LoRA file: {lora.pairs} of {lora.expected} "
        f"pairs, updates within {lora.max_rel_diff:.1e} of the adapter's"
    )
    return {
        "check": f"files apart: the base GGUF's logits (transformers' GGUF reader) and the "
        f"LoRA's tensors (gguf package) ({why})",
        "split": "test",
        "records": base.prompts,
        "positions": base.positions,
        "top1_agree": base.top1_agree,
        "max_abs_logit_diff": base.max_abs_diff,
        "same_tokens": base.same_tokens,
        "lora_pairs": lora.pairs,
        "lora_max_rel_diff": lora.max_rel_diff,
        "passed": passed,
        "verdict": verdict,
    }
