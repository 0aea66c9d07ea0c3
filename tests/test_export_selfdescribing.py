"""Exports that describe themselves (issue 20): a PEFT export names its base by a portable id,
carries the task's instruction (whetstone.json, the tokenizer's chat template) and a filled
model card, and loads in a clean process with only peft + transformers giving Whetstone's own
greedy answers; `export --format hf` is a DatasetDict of the snapshot's splits with real
nested columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import make_lora
from whetstone import formats, registry, snapshots
from whetstone.models import base
from whetstone.models.decoding import Decoder
from whetstone.predict import load_predictor
from whetstone.records import Message, Source
from whetstone.registry import export
from whetstone.store import evaluations as stored_evals

WORDS = [
    "amber",
    "birch",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "grove",
    "heron",
    "iris",
    "jade",
    "kelp",
    "lotus",
    "marsh",
    "north",
    "olive",
    "pearl",
    "quartz",
    "river",
    "slate",
    "tundra",
]
INSTRUCTION = 'Répondez en français, d\'un mot. Quote "this" {{ not jinja }} 🙂'
INPUTS = ["What colour is the sky?", "Name a fruit.", "How many legs has a cat?"]
NEW_TOKENS = 12

# Run with `python -c`: only peft and transformers, the instruction read from the export.
CLEAN = r"""
import json, sys
from pathlib import Path
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

folder, inputs, n = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
about = json.loads((folder / "whetstone.json").read_text())
tok = AutoTokenizer.from_pretrained(folder)
model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
eos = model.generation_config.eos_token_id
stops = sorted({tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
out = []
for text in inputs:
    chat = [{"role": "system", "content": about["instruction"]}, {"role": "user", "content": text}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    by_default = tok.apply_chat_template(chat[1:], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    same = by_default["input_ids"].tolist() == ids["input_ids"].tolist()
    with torch.no_grad():
        gen = model.generate(**ids, do_sample=False, max_new_tokens=n, eos_token_id=stops, pad_token_id=stops[0])
    other = tok.apply_chat_template([{"role": "system", "content": "Be helpful."}, chat[1]], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        wrong = model.generate(**other, do_sample=False, max_new_tokens=n, eos_token_id=stops, pad_token_id=stops[0])
    out.append({
        "tokens": gen[0, ids["input_ids"].shape[1]:].tolist(),
        "without": wrong[0, other["input_ids"].shape[1]:].tolist(),
        "template_default": same,
    })
assert not any(m.startswith("whetstone") for m in sys.modules), "whetstone was imported"
print(json.dumps(out))
"""


@pytest.fixture
def proj(tiny_base_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("a", "generate", instruction=INSTRUCTION)
    for i in range(12):
        text = f"{WORDS[i]} {WORDS[-1 - i]} {i * 7919}?"
        p.capture("a", text, reference=f"réponse {i}", source=Source.imported)
    snap = snapshots.snapshot_task(p, "a")
    registry.register(
        p,
        "a",
        make_lora(tiny_base_dir, tmp_path / "lora", 1),
        method="lora",
        base_model=str(tiny_base_dir),
        base_hash=base.resolve(str(tiny_base_dir)).hash,
        snapshot_id=snap.id,
        info={"metric": "exact_match", "config": {"lr": 0.0002, "lora_r": 4, "steps": 60}},
    )
    metrics = {"exact_match": {"value": 0.625, "low": 0.31, "high": 0.86}}
    stored_evals.add_evaluation(
        p.store,
        {
            "id": "ev0123456789",
            "task": "a",
            "model": "a@1",
            "snapshot_id": snap.id,
            "split": "test",
            "metrics": metrics,
            "info": {"main_metric": "exact_match", "n": 8},
            "created_at": "2026-01-01T00:00:00+00:00",
        },
        [],
    )
    yield p
    p.close()


def whetstone_tokens(proj: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The token ids of the predictor's greedy answer to each input (stop id included)."""
    seen: list[list[int]] = []
    answer = Decoder.answer

    def spy(self: Decoder, tokens: Any, stop: Any = ()) -> Any:
        seen.append(list(tokens))
        return answer(self, tokens, stop)

    monkeypatch.setattr(Decoder, "answer", spy)
    predictor = load_predictor(proj, "a", "a@1")
    for text in INPUTS:  # one at a time: one answer decoded per call
        predictor([text], max_new_tokens=NEW_TOKENS)
    assert len(seen) == len(INPUTS)
    return seen


def test_peft_export_loads_clean_and_answers_like_whetstone(
    proj: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "peft"
    export.export_peft(proj, "a@1", out)
    about = json.loads((out / "whetstone.json").read_text())
    assert about["instruction"] == INSTRUCTION
    assert about["task"] == {"name": "a", "kind": "generate"}
    assert about["snapshot"]["counts"] and sum(about["snapshot"]["counts"].values()) == 12
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == about["base_model"]["id"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", CLEAN, str(out), json.dumps(INPUTS), str(NEW_TOKENS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    clean = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(c["template_default"] for c in clean)  # the tokenizer carries the instruction
    assert [c["tokens"] for c in clean] == whetstone_tokens(proj, monkeypatch)
    # The comparison tells prompts apart: another system prompt gives other answers.
    assert any(c["without"] != c["tokens"] for c in clean)


def test_model_card_names_task_metric_data_and_base(proj: Any, tmp_path: Path) -> None:
    export.export_peft(proj, "a@1", tmp_path / "peft")
    card = (tmp_path / "peft" / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    assert "`a` (generate)" in card
    assert "| exact_match (main) | 0.625 | [0.31, 0.86] | test of snapshot" in card
    assert INSTRUCTION in card  # not HTML-escaped
    assert "`lora_r`: `4`" in card
    snap = registry.get(proj, "a@1").snapshot_id
    assert f"Trained on data snapshot `{snap}`: " in card and " train" in card
    assert "`HuggingFaceTB" not in card and "local folder with no hub id" in card


def test_merged_export_carries_the_instruction(proj: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    export.export_merged(proj, "a@1", tmp_path / "merged")
    about = json.loads((tmp_path / "merged" / "whetstone.json").read_text())
    assert about["instruction"] == INSTRUCTION
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    user = [{"role": "user", "content": "x"}]
    explicit = [{"role": "system", "content": INSTRUCTION}, *user]
    assert tok.apply_chat_template(user, tokenize=False) == tok.apply_chat_template(
        explicit, tokenize=False
    )


def test_bundled_base_is_named_by_its_hub_id(proj: Any) -> None:
    av = registry.get(proj, "a@1")
    bundled = av.__class__(**{**av.__dict__, "base_model": "smollm2"})
    found = export.portable_base(bundled)
    assert found["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and not found["local"]
    assert found["local_path"] and "Q4_1" in found["note"]


def test_vllm_export_names_the_base_portably_and_says_to_send_the_instruction(
    proj: Any, tmp_path: Path
) -> None:
    export.export_vllm(proj, ["a@1"], tmp_path / "vllm")
    readme = (tmp_path / "vllm" / "README.md").read_text()
    assert "must send the adapter's instruction" in readme and INSTRUCTION in readme
    script = (tmp_path / "vllm" / "serve-vllm.sh").read_text()
    assert '"a@1=$HERE/adapters/a-v1"' in script
    about = json.loads((tmp_path / "vllm" / "adapters" / "a-v1" / "whetstone.json").read_text())
    assert about["instruction"] == INSTRUCTION


# ---------------------------------------------------------------- export --format hf

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
    "required": ["city"],
}


def test_hf_export_is_a_datasetdict_of_the_snapshot_with_nested_columns(
    project: Any, tmp_path: Path
) -> None:
    import datasets

    project.create_task("ext", "extract", schema=SCHEMA)
    for i in range(20):
        ref = {"city": f"City{i}"} if i % 2 else {"city": f"City{i}", "zip": f"{i:05d}"}
        text = f"{WORDS[i]} street, {WORDS[-1 - i]} City{i} {i:05d}"
        project.capture("ext", text, reference=json.dumps(ref), source=Source.imported)
    chat = [Message(role="user", content="Hi"), Message(role="assistant", content="Hello.")]
    chat_id = project.capture(
        "ext", [*chat, Message(role="user", content="Paris 75001")], source=Source.imported
    )
    project.correct(chat_id, json.dumps({"city": "Paris", "zip": "75001"}), annotator="ann")
    snap = snapshots.snapshot_task(project, "ext")
    late = project.capture(
        "ext", "Lyon, after the snapshot", reference='{"city":"Lyon"}', source=Source.imported
    )

    out = tmp_path / "hf"
    assert formats.export_records(project, "ext", "hf", out) == 22
    dd = datasets.load_from_disk(str(out))
    assert isinstance(dd, datasets.DatasetDict)
    expected = {s: n for s, n in snap.counts().items() if n} | {"unsplit": 1}
    assert sum(expected.values()) == 22 and len(expected) == 4
    assert {name: ds.num_rows for name, ds in dd.items()} == expected
    assert dd["unsplit"]["id"] == [late]

    features = dd["train"].features
    assert isinstance(features["reference"], dict)  # a struct, not JSON text
    assert set(features["reference"]) == {"city", "zip"}
    assert isinstance(features["messages"], datasets.List)
    assert set(features["messages"].feature) >= {"role", "content"}
    assert isinstance(features["history"], datasets.List)
    rows = [r for ds in dd.values() for r in ds]
    by_id = {r["id"]: r for r in rows}
    assert by_id[chat_id]["messages"][-1]["content"] == "Paris 75001"
    assert by_id[chat_id]["history"][0]["annotator"] == "ann"
    assert by_id[late]["reference"] == {"city": "Lyon", "zip": None}

    # push_to_hub uploads each split as Parquet: it holds the nested columns as they are.
    dd["train"].to_parquet(str(tmp_path / "train.parquet"))
    back = datasets.Dataset.from_parquet(str(tmp_path / "train.parquet"))
    assert back.features == features and back.to_list() == dd["train"].to_list()

    # Imported again: the same records (null struct keys dropped, no split added to meta).
    other = whetstone.init(tmp_path / "other")
    try:
        other.create_task("ext", "extract", schema=SCHEMA)
        report = formats.import_file(other, out, "ext")
        assert (report.added, report.rejected) == (22, 0)
        got = {r.input_text: (r.reference, r.meta, r.input) for r in other.records("ext")}
        want = {r.input_text: (r.reference, r.meta, r.input) for r in project.records("ext")}
        assert got == want
    finally:
        other.close()
