"""`whetstone export-model`: PEFT folders, merged models, vLLM launch scripts, and the
compatibility check (vLLM refuses DoRA and modules_to_save)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import whetstone
from serve_helpers import register_lora
from whetstone import registry
from whetstone.cli import common
from whetstone.cli import serve as serve_cmds
from whetstone.errors import InvalidInput
from whetstone.registry import export


@pytest.fixture
def proj(tiny_base_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("a", "generate")
    p.create_task("b", "generate")
    for task, seed in (("a", 1), ("b", 2)):
        av = register_lora(p, task, tiny_base_dir, seed, tmp_path)
        registry.set_stage(p, av.name, "production", action="promote")
    yield p
    p.close()


def test_peft_export_is_the_adapter_folder(proj, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = export.export_peft(proj, "a@1", tmp_path / "out")
    assert result.warnings == []
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_dora_is_flagged_and_refused_for_vllm(proj, tiny_base_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    register_lora(proj, "a", tiny_base_dir, 3, tmp_path, dora=True)
    result = export.export_peft(proj, "a@2", tmp_path / "dora")
    assert any("DoRA" in w for w in result.warnings)
    with pytest.raises(InvalidInput, match="DoRA"):
        export.export_vllm(proj, ["a@2"], tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


def test_vllm_script_serves_every_production_adapter(proj, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    export.export_vllm(proj, [], tmp_path / "vllm")
    script = (tmp_path / "vllm" / "serve-vllm.sh").read_text()
    assert "--enable-lora" in script and "--max-lora-rank 8" in script
    assert '"a=$HERE/adapters/a"' in script and '"b=$HERE/adapters/b"' in script
    assert (tmp_path / "vllm" / "adapters" / "b" / "adapter_config.json").exists()


def test_merged_model_answers_like_base_plus_adapter(proj, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export.export_merged(proj, "a@1", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    av = registry.get(proj, "a@1")
    base = AutoModelForCausalLM.from_pretrained(av.base_model)
    adapted = PeftModel.from_pretrained(base, str(av.path)).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)


def test_cli_export_model(proj, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = typer.Typer()
    serve_cmds.register(app)
    common.state.project = str(proj.root)
    try:
        runner = CliRunner()
        r = runner.invoke(
            app, ["export-model", "a@1", "--format", "peft", "-o", str(tmp_path / "x")]
        )
        assert r.exit_code == 0, r.output
        assert (tmp_path / "x" / "adapter_config.json").exists()
        r = runner.invoke(app, ["export-model", "a@1", "--format", "onnx"])
        assert isinstance(r.exception, InvalidInput)
    finally:
        common.state.project = None
