"""On-device export (`whetstone export-model --format gguf | gguf-lora | ollama`): GGUF files
that answer like the PyTorch model they came from, an Ollama Modelfile with the model's chat
template and stop tokens, and one-line refusals for adapters that cannot leave as GGUF.

The converters are llama.cpp's own (`bash scripts/ondevice.sh --converters`); the runtime is
llama-cpp-python (`bash scripts/ondevice.sh`). Tests that need either skip, saying which."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import register_lora
from whetstone import registry
from whetstone.errors import InvalidInput, NotFound
from whetstone.registry import export

# f16 keeps 11 significant bits: the tiny model's logits (about ±1) move by a few 1e-4 when
# its weights are rounded to f16; 2e-3 is several times that and far below any real change.
F16_LOGITS_ATOL = 2e-3


def _converters() -> bool:
    from whetstone.models.gguf import converters_dir

    try:
        converters_dir()
    except NotFound:
        return False
    return True


needs_converters = pytest.mark.skipif(
    not _converters(),
    reason="llama.cpp's GGUF converters are not installed (bash scripts/ondevice.sh --converters)",
)
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (bash scripts/ondevice.sh builds it)",
)


@pytest.fixture(scope="module")
def proj(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("gguf")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("a", "generate", instruction="Answer in one word.")
    for i in range(12):
        p.capture("a", f"question {i}?", reference=f"answer{i % 3}", source="import")
    register_lora(p, "a", tiny_base_dir, 1, tmp)
    yield p
    p.close()


@pytest.fixture(scope="module")
def merged(proj: Any) -> tuple[Any, Any]:
    """(model, tokenizer): adapter a@1 merged into the tiny base, in PyTorch."""
    return export._merged(registry.get(proj, "a@1"))


@pytest.fixture(scope="module")
def f16_export(proj: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _converters():
        pytest.skip("llama.cpp's GGUF converters are not installed (scripts/ondevice.sh)")
    out = tmp_path_factory.mktemp("exports") / "a-gguf"
    export.export_gguf(proj, "a@1", out, fmt="gguf", quant="f16")
    return out / "a-v1.f16.gguf"


def _prompt_ids(tok: Any) -> list[int]:
    from whetstone.models.generate import encode_prompts

    chat = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "hi?"},
    ]
    return encode_prompts(tok, [chat])[0]


@needs_converters
def test_f16_gguf_read_back_gives_the_merged_models_logits(
    f16_export: Path, merged: tuple[Any, Any]
) -> None:
    """Written by llama.cpp's converter, read back by transformers' GGUF reader: the same
    logits as the merged PyTorch model within F16_LOGITS_ATOL, and the same prompt tokens
    from the file's own tokenizer and chat template."""
    import torch

    from whetstone.models.gguf import read_back, read_tokenizer

    model, tok = merged
    ids = _prompt_ids(tok)
    back = read_back(f16_export)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits
        got = back(torch.tensor([ids])).logits
    torch.testing.assert_close(got, want, atol=F16_LOGITS_ATOL, rtol=0)
    # Not a constant model: the adapter's logits vary far more than the tolerance.
    assert float(want.std()) > 10 * F16_LOGITS_ATOL
    assert _prompt_ids(read_tokenizer(f16_export)) == ids


@needs_converters
def test_every_export_is_checked_and_says_which_check_ran(proj: Any, tmp_path: Path) -> None:
    """Through the CLI: the check's report is printed and saved beside the file."""
    import typer
    from typer.testing import CliRunner

    from whetstone.cli import common
    from whetstone.cli import serve as serve_cmds

    app = typer.Typer()
    serve_cmds.register(app)
    common.state.project = str(proj.root)
    out = tmp_path / "checked"
    args = ["export-model", "a@1", "--format", "gguf", "--check-records", "4", "-o", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / export.REPORT).read_text())
    assert report["passed"] is True and report["adapter"] == "a@1"
    assert f"check: {report['check']}" in " ".join(r.output.split())
    if importlib.util.find_spec("llama_cpp") is None:
        assert report["check"].startswith("logits: transformers' GGUF reader")
        assert "llama-cpp-python is not installed" in report["check"]
        assert report["max_abs_logit_diff"] < F16_LOGITS_ATOL
        assert report["same_tokens"] == report["records"]
    else:
        assert report["check"].startswith("answers: llama.cpp")
        # The module's 12 records leave 3 in the test split.
        assert report["records"] == 3, report
        assert report["differ"] == 0, report
    assert "a-v1.f16.gguf" in (out / "README.md").read_text()


@needs_converters
def test_a_refused_export_leaves_nothing(proj: Any, tmp_path: Path) -> None:
    from whetstone.evaluate import ondevice

    def refuse(shipped: Any) -> dict[str, Any]:
        raise ondevice.ExportRefused("export refused: 9 of 9 answers differ")

    out = tmp_path / "refused"
    with pytest.raises(ondevice.ExportRefused, match="9 of 9"):
        export.export_gguf(proj, "a@1", out, check=refuse)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folder left either


@needs_converters
def test_ollama_modelfile_has_the_chat_template_and_stop_tokens(
    proj: Any, merged: tuple[Any, Any], tmp_path: Path
) -> None:
    from whetstone.models.gguf import chat_format

    _, tok = merged
    out = tmp_path / "ollama"
    export.export_gguf(proj, "a@1", out, fmt="ollama")
    text = (out / "Modelfile").read_text()
    assert "FROM ./a-v1.f16.gguf" in text and (out / "a-v1.f16.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """Answer in one word."""' in text
    assert "PARAMETER temperature 0" in text and "PARAMETER repeat_penalty 1" in text
    # The TEMPLATE is the model's chat template, message by message: the same text for a chat.
    fmt = chat_format(tok)
    assert f'TEMPLATE """{fmt.go_template()}"""' in text
    assert '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n' in text
    assert fmt.generation == "<|im_start|>assistant\n"
    chat = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "France"},
        {"role": "user", "content": "And Rome?"},
    ]
    assert fmt.render(chat) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    readme = (out / "README.md").read_text()
    assert f"ollama create a-v1 -f {out}/Modelfile" in readme and "ollama run a-v1" in readme


@needs_converters
def test_gguf_lora_export_is_checked_with_or_without_llama_cpp(
    proj: Any, tiny_base_dir: Path, tmp_path: Path
) -> None:
    from whetstone.evaluate.ondevice import export_check
    from whetstone.models.gguf import lora_check

    out = tmp_path / "lora"
    export.export_gguf(proj, "a@1", out, fmt="gguf-lora", check=export_check(proj, records=4))
    report = json.loads((out / export.REPORT).read_text())
    assert report["passed"] is True and report["lora"] == "a-v1.lora.gguf"
    assert (out / "base.f16.gguf").is_file()
    if importlib.util.find_spec("llama_cpp") is None:
        assert report["check"].startswith("files apart")
        assert report["lora_pairs"] == 6 and report["lora_max_rel_diff"] < 1e-3
    else:
        assert report["check"].startswith("answers: llama.cpp")
    # The LoRA check tells another adapter's updates from these.
    other = register_lora(proj, "a", tiny_base_dir, 9, tmp_path)
    assert lora_check(out / "a-v1.lora.gguf", other.path).max_rel_diff > 0.01


def _fake_label_head(proj: Any, tiny_base_dir: Path, tmp_path: Path) -> Any:
    from whetstone.models import base
    from whetstone.models.artefacts import write_meta

    proj.create_task("mood", "classify", labels=["happy", "sad"])
    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "label_head.safetensors").write_bytes(b"")
    write_meta(folder, method="label_head", labels_head=["happy", "sad"])
    return registry.register(
        proj,
        "mood",
        folder,
        method="label_head",
        base_model=str(tiny_base_dir),
        base_hash=base.resolve(str(tiny_base_dir)).hash,
    )


@pytest.mark.parametrize("fmt", ["gguf", "gguf-lora", "ollama"])
def test_a_label_head_gets_a_one_line_reason(
    proj: Any, tiny_base_dir: Path, tmp_path: Path, fmt: str
) -> None:
    av = registry.get(proj, "mood@1") if _has(proj, "mood") else None
    av = av or _fake_label_head(proj, tiny_base_dir, tmp_path)
    out = tmp_path / "head-export"
    with pytest.raises(InvalidInput) as e:
        export.export_gguf(proj, av.name, out, fmt=fmt)
    assert "label head" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def _has(proj: Any, task: str) -> bool:
    return any(t.name == task for t in proj.store.list_tasks())


def test_a_dora_adapter_has_no_gguf_lora(proj: Any, tiny_base_dir: Path, tmp_path: Path) -> None:
    av = register_lora(proj, "a", tiny_base_dir, 5, tmp_path, dora=True)
    reason = export.gguf_refusal(av, "gguf-lora")
    assert reason is not None and "DoRA" in reason and "--format gguf" in reason
    assert export.gguf_refusal(av, "gguf") is None


def test_a_gguf_model_refuses_classify_tasks_in_one_line(proj: Any) -> None:
    from whetstone.predict import GgufPredictor

    if not _has(proj, "mood"):
        proj.create_task("mood", "classify", labels=["happy", "sad"])
    predictor = GgufPredictor(proj.task("mood"), runtime=None, name="gguf:x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="classify tasks are out of scope") as e:
        predictor(["a fine day"])
    assert "\n" not in str(e.value)


@needs_converters
@needs_llama_cpp
def test_gguf_lora_over_the_base_gguf_matches_the_merged_gguf(
    proj: Any, f16_export: Path, merged: tuple[Any, Any], tmp_path: Path
) -> None:
    """llama.cpp: base.f16.gguf with the GGUF LoRA applied gives the logits of the merged
    f16 file, and both those of the merged PyTorch model (same tolerance as f16 above)."""
    import numpy as np

    from whetstone.models.gguf import LlamaCpp

    model, tok = merged
    out = tmp_path / "lora"
    export.export_gguf(proj, "a@1", out, fmt="gguf-lora")
    ids = _prompt_ids(tok)
    over = LlamaCpp(out / "base.f16.gguf", lora=out / "a-v1.lora.gguf", logits_all=True, n_ctx=128)
    whole = LlamaCpp(f16_export, logits_all=True, n_ctx=128)
    base_only = LlamaCpp(out / "base.f16.gguf", logits_all=True, n_ctx=128)
    import torch

    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(over.logits(ids), whole.logits(ids), atol=F16_LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(over.logits(ids), want, atol=F16_LOGITS_ATOL, rtol=0)
    # The LoRA is applied: without it the logits are the base model's, not these.
    assert np.abs(base_only.logits(ids) - want).max() > 10 * F16_LOGITS_ATOL


@needs_converters
@needs_llama_cpp
def test_eval_and_predict_run_a_gguf_file(proj: Any, f16_export: Path) -> None:
    from whetstone.evaluate.runner import evaluate
    from whetstone.predict import load_predictor

    ev = evaluate(proj, "a", str(f16_export), limit=4, max_new_tokens=4, resamples=100)
    assert ev.model.startswith("gguf:a-v1.f16.gguf:") and ev.n == 3  # the test split's 3
    torch_ev = evaluate(proj, "a", "a@1", limit=4, max_new_tokens=4, resamples=100)
    # The tiny model's answers are noise, but the same noise in llama.cpp and PyTorch.
    assert [p.prediction for p in ev.predictions] == [p.prediction for p in torch_ev.predictions]
    first = next(iter(proj.store.iter_records("a", ids=[ev.predictions[0].record_id])))
    predictor = load_predictor(proj, "a", str(f16_export))
    assert predictor([first.input], max_new_tokens=4)[0].text == ev.predictions[0].prediction


def test_a_refused_check_writes_only_with_accept_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's verdict decides (`--accept-drop` keeps the refusal in the report); the
    folder-replacing `--force` has nothing to do with it."""
    from whetstone.evaluate import ondevice

    verdict = {"passed": False, "verdict": "field_f1 fell 3.0 points (tolerance 2.0)"}
    monkeypatch.setattr(ondevice, "check_shipped", lambda *a, **k: dict(verdict))
    with pytest.raises(ondevice.ExportRefused, match="--accept-drop"):
        ondevice.export_check(None, records=4)(None)  # type: ignore[arg-type]
    report = ondevice.export_check(None, records=4, accept_drop=True)(None)  # type: ignore[arg-type]
    assert report["accepted_drop"] and report["verdict"] == verdict["verdict"]
