"""Training engine mechanics on a tiny random-weight model: config, answer-only loss, packing
isolation, logits only where a loss is taken, every method end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.evaluate.metrics import main_score

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}


def add_city_records(p: Any, n: int, task: str = "cities") -> None:
    for i in range(n):
        ref = json.dumps({"city": f"Town{i % 5}", "zip": f"{10000 + i}"})
        p.capture(
            task,
            f"Send it to {i} Main Street, Town{i % 5} {10000 + i}",
            reference=ref,
            source="import",
        )


@pytest.fixture
def cities(project: Any) -> Any:
    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 40)
    return project


def quick(tiny_base_dir: Path, **kw: Any) -> Any:
    from whetstone.train import train_config

    settings: dict[str, Any] = {
        "base_model": str(tiny_base_dir),
        "max_steps": 4,
        "batch_size": 4,
        "eval_every": 2,
        "eval_max_records": 2,
        "save_every": 2,
        **kw,
    }
    return train_config(**settings)


# ---------------------------------------------------------------- config


def test_unknown_config_key_and_method_are_named() -> None:
    from whetstone.train.config import build

    with pytest.raises(InvalidInput, match="unknown training setting 'lora_rank'"):
        build(("train.yaml", {"lora_rank": 8}))
    with pytest.raises(InvalidInput, match="unknown method 'qlora'"):
        build(("command line", {"method": "qlora"}))
    with pytest.raises(InvalidInput, match=r"train\.yaml: epochs"):
        build(("train.yaml", {"epochs": 0}))


def test_default_lr_follows_method() -> None:
    from whetstone.train import train_config

    assert train_config(method="full").learning_rate < train_config(method="lora").learning_rate
    assert train_config(method="lora", lr=5e-4).learning_rate == 5e-4


def test_print_config_merges_yaml_and_flags(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from whetstone.cli import main, train

    if not any(c.name == "train" for c in main.app.registered_commands):
        train.register(main.app)
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("lora-r: 4\nepochs: 7\npacking: true\n")
    res = CliRunner().invoke(
        main.app,
        [
            "--project",
            str(tmp_path / "none"),
            "train",
            "--print-config",
            "--config",
            str(cfg_file),
            "--epochs",
            "2",
            "--lora-alpha",
            "9",
            "--no-packing",
            "--target-modules",
            "q_proj,v_proj",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.stdout)
    assert (cfg["lora_r"], cfg["epochs"], cfg["lora_alpha"], cfg["packing"]) == (4, 2, 9, False)
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["lr"] == 1e-3
    bad = CliRunner().invoke(main.app, ["train", "--print-config", "--lora-rank", "4"])
    assert bad.exit_code != 0 and "--lora-rank" in str(bad.exception)


# ---------------------------------------------------------------- data


def test_prompt_tokens_carry_no_loss(cities: Any, real_base: Any) -> None:
    from whetstone.models import base
    from whetstone.train.data import IGNORE, encode_records

    tok = base.load_tokenizer(real_base)
    task = cities.task("cities")
    rec = cities.records("cities")[0]
    stop_ids = frozenset({tok.eos_token_id})
    (ex,), _ = encode_records(tok, task, [rec], stop_ids=stop_ids, max_length=512, policy="left")
    labels = ex.labels
    assert labels[: ex.n_prompt] == [IGNORE] * ex.n_prompt
    answer = [t for t in labels if t != IGNORE]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]) == rec.reference
    # The prompt is exactly what inference sends: the chat template with a generation prompt.
    from whetstone.models.generate import encode_prompts
    from whetstone.prompts import chat

    assert ex.ids[: ex.n_prompt] == encode_prompts(tok, [chat(task, rec.input)])[0]


def test_extract_answers_are_taught_in_input_order_and_score_the_same() -> None:
    import json

    from whetstone.prompts import answer_text, normalise_answer
    from whetstone.records import Task, canonical_json

    task = Task(name="addr", kind="extract")
    ref = canonical_json(
        {
            "address_number": "12",
            "street_name": "Main",
            "street_name_pre_directional": "NORTH",
            "street_name_post_directional": "N",
            "zip_code": "00000",
        }
    )
    taught = answer_text(task, "12 NORTH Main N", ref)
    # Left to right as written; "N" is the lone word, not the N of NORTH; a value the input
    # does not hold goes last.
    assert list(json.loads(taught)) == [
        "address_number",
        "street_name_pre_directional",
        "street_name",
        "street_name_post_directional",
        "zip_code",
    ]
    assert normalise_answer(task, taught) == ref
    assert answer_text(task, "x", "not json") == "not json"
    assert answer_text(Task(name="g", kind="generate"), "x", ref) == ref


def test_over_long_examples_are_cut_or_dropped_and_counted(cities: Any, real_base: Any) -> None:
    from whetstone.models import base
    from whetstone.train.data import encode_records

    tok = base.load_tokenizer(real_base)
    task = cities.task("cities")
    long_id = cities.capture(
        "cities", "Main Street " * 80 + "Town1 10001", reference='{"city":"Town1"}', source="import"
    )
    huge_id = cities.capture(
        "cities", "x", reference=json.dumps({"city": "Town " * 200}), source="import"
    )
    recs = [cities.record(long_id), cities.record(huge_id), cities.records("cities")[0]]
    stop_ids = frozenset({tok.eos_token_id})
    exs, report = encode_records(tok, task, recs, stop_ids=stop_ids, max_length=96, policy="left")
    assert (report.too_long, report.truncated, report.dropped, len(exs)) == (2, 1, 1, 2)
    assert len(exs[0]) == 96 and exs[0].ids[-1] == tok.eos_token_id
    _, report = encode_records(tok, task, recs, stop_ids=stop_ids, max_length=96, policy="drop")
    assert (report.truncated, report.dropped) == (0, 2)
    assert "2 of 3 examples exceeded max_length" in report.summary()


def test_packed_examples_do_not_attend_to_each_other(tiny_base_dir: Path) -> None:
    import torch

    from whetstone.models import base
    from whetstone.train.data import Example, collate
    from whetstone.train.loop import attention_mask

    model, _ = base.load(base.resolve(str(tiny_base_dir)), dtype=torch.float32)
    a = Example(None, list(range(100, 130)), 10)
    a2 = Example(None, list(range(500, 530)), 10)
    b = Example(None, list(range(200, 220)), 5)

    def hidden(rows: list[list[Example]]) -> Any:
        batch = collate(rows, pad_id=2)
        with torch.no_grad():
            return model.model(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                attention_mask=attention_mask(model, batch, "cpu"),
            ).last_hidden_state

    packed = hidden([[a, b]])[0, 30:50]
    assert torch.allclose(
        packed, hidden([[a2, b]])[0, 30:50], atol=1e-5
    )  # A's tokens changed: B unchanged
    assert torch.allclose(packed, hidden([[b]])[0], atol=1e-5)  # and B packed == B alone
    # Padding after a shorter row does not leak into it either.
    assert torch.allclose(hidden([[b], [a]])[0, :20], hidden([[b]])[0], atol=1e-5)


def test_shared_prefix_is_computed_once_and_changes_nothing(tiny_base_dir: Path) -> None:
    import torch

    from whetstone.models import base
    from whetstone.train.data import Example, collate, make_batch, shared_prefix
    from whetstone.train.loop import answer_loss

    model, _ = base.load(base.resolve(str(tiny_base_dir)), dtype=torch.float32)
    head = list(range(1000, 1040))  # the instruction every example shares
    exs = [Example(None, head + list(range(100 + 7 * i, 120 + 9 * i)), 45 + i) for i in range(5)]
    exs.append(Example(None, list(range(600, 650)), 40, truncated=True))  # shares nothing
    prefix = shared_prefix(exs)
    assert prefix == head
    batch = make_batch(exs, list(range(6)), packing=True, capacity=512, pad_id=2, prefix=prefix)
    assert batch.input_ids.shape == (1, 40 + sum(len(e) - 40 for e in exs[:5]) + 50)
    assert batch.tokens == sum(len(e) for e in exs)
    alone = sum(answer_loss(model, collate([[e]], pad_id=2), "cpu") for e in exs)
    with torch.no_grad():
        together = answer_loss(model, batch, "cpu")
    assert batch.target_tokens == sum(collate([[e]], pad_id=2).target_tokens for e in exs)
    assert torch.allclose(together, alone, rtol=1e-4)
    # Changing one example's own tokens leaves every other example's loss unchanged.
    changed = [*exs[:1], Example(None, head + list(range(900, 930)), 45), *exs[2:]]
    b2 = make_batch(changed, list(range(6)), packing=True, capacity=512, pad_id=2, prefix=prefix)
    others = sum(
        answer_loss(model, collate([[e]], pad_id=2), "cpu") for e in exs if e is not exs[1]
    )
    assert torch.allclose(
        answer_loss(model, b2, "cpu") - answer_loss(model, collate([[changed[1]]], 2), "cpu"),
        others,
        rtol=1e-4,
    )


def test_a_teacher_label_counts_with_its_weight_in_a_packed_batch(tiny_base_dir: Path) -> None:
    from dataclasses import replace

    import torch

    from whetstone.models import base
    from whetstone.models.decoding import Decoder
    from whetstone.records import Record, Source
    from whetstone.train.data import Example, collate, encode_records
    from whetstone.train.loop import answer_loss

    model, tok = base.load(base.resolve(str(tiny_base_dir)), dtype=torch.float32)
    person = Example(None, list(range(100, 130)), 20)
    teacher = Example(None, list(range(300, 340)), 25, weight=0.25)
    with torch.no_grad():
        packed = answer_loss(model, collate([[person, teacher]], pad_id=2), "cpu")
        own = [answer_loss(model, collate([[e]], pad_id=2), "cpu") for e in (person, teacher)]
        full = answer_loss(model, collate([[replace(teacher, weight=1.0)]], pad_id=2), "cpu")
    assert full > 0
    assert torch.allclose(own[1], 0.25 * full, rtol=1e-5)
    assert torch.allclose(packed, own[0] + 0.25 * full, rtol=1e-4)
    # encode_records gives each record its weight: teacher labels `teacher_weight`, people 1.
    from whetstone.records import Task, human_reference

    task = Task(name="t", kind="generate")
    recs = [
        Record(id=1, task="t", input="a", reference="x", source=Source.imported),
        Record(id=2, task="t", input="b", reference="y", source=Source.teacher),
    ]
    exs, _ = encode_records(
        tok,
        task,
        recs,
        stop_ids=Decoder.of(model, tok).stop_ids,
        max_length=256,
        policy="left",
        weight_of=lambda r: 1.0 if human_reference(r) else 0.5,
    )
    assert [e.weight for e in exs] == [1.0, 0.5]


def test_logits_only_where_a_loss_is_taken(tiny_base_dir: Path) -> None:
    import torch

    from whetstone.models import base
    from whetstone.train.data import Example, collate
    from whetstone.train.loop import answer_loss

    model, _ = base.load(base.resolve(str(tiny_base_dir)), dtype=torch.float32)
    seen: list[int] = []
    model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    batch = collate(
        [[Example(None, list(range(100, 140)), 33), Example(None, list(range(300, 320)), 15)]],
        pad_id=2,
    )
    loss = answer_loss(model, batch, "cpu")
    assert seen == [(40 - 33) + (20 - 15)] == [batch.target_tokens]
    # The same loss as the full-logits computation, restricted to the answers.
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids[:, :40]).logits[0]
        logits = torch.cat([logits, model(input_ids=batch.input_ids[:, 40:]).logits[0]])
    mask = batch.targets[0] != -100
    ref = torch.nn.functional.cross_entropy(logits[mask], batch.targets[0][mask], reduction="sum")
    assert torch.allclose(loss, ref, rtol=1e-4)


def test_topk_runs_lower_blocks_without_autograd(tiny_base_dir: Path) -> None:
    import torch

    from whetstone.models import base
    from whetstone.train import methods, train_config
    from whetstone.train.data import Example, collate
    from whetstone.train.loop import answer_loss

    model, _ = base.load(base.resolve(str(tiny_base_dir)), dtype=torch.float32, for_training=True)
    model = methods.get("topk").prepare(model, train_config(method="topk", topk_layers=1))
    grad_on: dict[int, bool] = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(
            lambda m, a, o, i=i: grad_on.__setitem__(i, torch.is_grad_enabled())
        )
    loss = answer_loss(
        model, collate([[Example(None, list(range(100, 140)), 30)]], pad_id=2), "cpu"
    )
    loss.backward()
    assert grad_on == {0: False, 1: True}
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("model.layers.1.", "model.norm")) for n in trained)
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("method", "extra", "files"),
    [
        ("lora", {}, {"adapter_config.json", "adapter_model.safetensors"}),
        ("dora", {}, {"adapter_config.json", "adapter_model.safetensors"}),
        ("full", {}, {"config.json", "model.safetensors"}),
        ("head", {}, {"lm_head.safetensors"}),
        ("topk", {"topk_layers": 1}, {"topk.safetensors"}),
        ("topk", {"topk_layers": 1, "topk_lora": True}, {"adapter_config.json"}),
    ],
)
def test_each_method_trains_registers_and_loads(
    cities: Any, tiny_base_dir: Path, method: str, extra: dict[str, Any], files: set[str]
) -> None:
    import torch

    from whetstone import registry, snapshots
    from whetstone.models.generate import generate
    from whetstone.prompts import chat
    from whetstone.train import train_task

    res = train_task(
        cities,
        "cities",
        quick(tiny_base_dir, method=method, **extra),
        progress=False,
        metric=main_score,
    )
    av = registry.get(cities, res.adapter)
    assert (av.stage, av.method, av.run_id, av.snapshot_id) == (
        "candidate",
        method,
        res.run_id,
        res.snapshot_id,
    )
    assert files <= {f.name for f in av.path.iterdir()}
    assert av.info["config"]["method"] == method and av.info["whetstone_version"]
    run = Path(res.run_dir)
    # The learning curves, drawn from metrics.jsonl once training is over.
    assert (run / "curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (run / "config.yaml").exists()
    assert [r["step"] for r in res.history if r["kind"] == "validation"] == [2, 4]
    assert res.steps == 4 and res.best_step in (2, 4) and 0 <= res.best_metric <= 1
    # Loaded for inference, the adapter changes what the base model says (weights were trained).
    model, tok, _ = registry.load_adapter_model(cities, res.adapter)
    assert not model.training
    base_model, _ = __import__("whetstone.models.base", fromlist=["load"]).load(str(tiny_base_dir))
    task = cities.task("cities")
    rec = snapshots.records(cities, snapshots.load(cities, res.snapshot_id), "validation")[0]
    ids = torch.tensor(
        [tok.apply_chat_template(chat(task, rec.input), add_generation_prompt=True)["input_ids"]]
    )
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base_model(input_ids=ids).logits)
    assert generate(model, tok, [chat(task, rec.input)], max_new_tokens=4)[0].output_tokens > 0


def test_classify_label_head_trains_on_features_and_answers_with_labels(
    project: Any, tiny_base_dir: Path
) -> None:
    from whetstone import registry
    from whetstone.predict import load_predictor
    from whetstone.train import train_config, train_task

    project.create_task("mood", "classify", labels=["happy", "sad"])
    for i in range(40):
        word = ["great", "awful"][i % 2]
        project.capture(
            "mood", f"day {i} was {word} {word}", reference=["happy", "sad"][i % 2], source="import"
        )
    cfg = train_config(
        method="label_head",
        base_model=str(tiny_base_dir),
        max_steps=60,
        eval_every=20,
        patience=10,
    )
    res = train_task(project, "mood", cfg, progress=False, metric=main_score)
    assert res.best_metric is not None and res.best_metric >= 0.9  # the word is in the features
    pred = load_predictor(project, "mood", res.adapter)
    gens = pred(["day 99 was great great", "day 98 was awful awful"])
    assert [g.text for g in gens] == ["happy", "sad"]
    assert all(g.confidence <= 0 for g in gens)
    assert registry.get(project, res.adapter).method == "label_head"


# ---------------------------------------------------------------- bad input


def test_no_records_with_a_reference_is_a_clear_error(project: Any, tiny_base_dir: Path) -> None:
    from whetstone import registry
    from whetstone.train import train_task

    project.create_task("cities", "extract", schema=SCHEMA)
    project.capture("cities", "1 Main St, Springfield", '{"city": "Springfield"}')  # no reference
    with pytest.raises(InvalidInput, match="no records with a reference"):
        train_task(project, "cities", quick(tiny_base_dir), progress=False, metric=main_score)
    assert registry.list_versions(project) == []


def test_only_test_records_means_nothing_to_train_on(project: Any, tiny_base_dir: Path) -> None:
    from whetstone import snapshots
    from whetstone.train import train_task

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 3)
    snap = snapshots.freeze(project, "cities", {r.id: "test" for r in project.records("cities")})
    with pytest.raises(InvalidInput, match="no training records"):
        train_task(
            project,
            "cities",
            quick(tiny_base_dir),
            snapshot_id=snap.id,
            progress=False,
            metric=main_score,
        )


def test_fewer_rows_than_a_batch_trains_with_a_smaller_batch(
    project: Any, tiny_base_dir: Path
) -> None:
    from whetstone.train import train_task

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 6)
    res = train_task(
        project,
        "cities",
        quick(tiny_base_dir, batch_size=64, max_steps=None, epochs=2),
        progress=False,
        metric=main_score,
    )
    assert res.steps == 2 and "one batch of" in res.data["notes"][0]


def test_every_example_too_long_is_an_error(cities: Any, tiny_base_dir: Path) -> None:
    from whetstone import registry
    from whetstone.train import train_task

    with pytest.raises(InvalidInput, match="no training example fits max_length=16"):
        train_task(
            cities, "cities", quick(tiny_base_dir, max_length=16), progress=False, metric=main_score
        )
    assert registry.list_versions(cities) == []


def test_full_disk_while_saving_registers_nothing(
    cities: Any, tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone import registry
    from whetstone.train import train_task
    from whetstone.train.methods import lora

    real_save = lora.save

    def save_then_fill(model: Any, folder: Path) -> None:
        real_save(model, folder)  # half the artefact is written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lora, "save", save_then_fill)
    with pytest.raises(WhetstoneError, match="No space left on device"):
        train_task(cities, "cities", quick(tiny_base_dir), progress=False, metric=main_score)
    assert registry.list_versions(cities) == []
    runs = list((cities.home / "runs").iterdir())
    assert not (runs[0] / "best").exists() and not [
        p for p in runs[0].iterdir() if p.name.startswith(".best")
    ]


def test_adapter_on_another_base_model_is_refused(
    cities: Any, tiny_base_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from whetstone import registry
    from whetstone.train import train_task

    res = train_task(
        cities, "cities", quick(tiny_base_dir, max_steps=2), progress=False, metric=main_score
    )
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInput, match="was trained on base model"):
        registry.load_adapter_model(cities, res.adapter, base_model=str(other))


def test_warm_start_begins_from_the_given_adapter(cities: Any, tiny_base_dir: Path) -> None:
    from safetensors.torch import load_file

    from whetstone import registry
    from whetstone.train import train_task

    def weights(name: str) -> dict[str, Any]:
        return load_file(str(registry.get(cities, name).path / "adapter_model.safetensors"))

    first = train_task(
        cities, "cities", quick(tiny_base_dir), progress=False, metric=main_score
    ).adapter
    # A vanishing learning rate: what the run registers is what it started from.
    still = {"max_steps": 2, "eval_every": 2, "lr": 1e-12}
    warm = train_task(
        cities,
        "cities",
        quick(tiny_base_dir, init_from=first, **still),
        progress=False,
        metric=main_score,
    ).adapter
    cold = train_task(
        cities, "cities", quick(tiny_base_dir, **still), progress=False, metric=main_score
    ).adapter
    a, w, c = weights(first), weights(warm), weights(cold)
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(float(a[k].abs().max()) > 0 for k in lora_b)
    for k in lora_b:
        assert (w[k] - a[k]).abs().max() < 1e-6
        assert float(c[k].abs().max()) < 1e-9  # a cold start's B matrices begin at zero
    assert registry.get(cities, warm).info["init_from"] == first
    # "production" with nothing in production is a cold start, not an error.
    none_yet = train_task(
        cities,
        "cities",
        quick(tiny_base_dir, init_from="production", **still),
        progress=False,
        metric=main_score,
    ).adapter
    assert registry.get(cities, none_yet).info["init_from"] is None
    with pytest.raises(InvalidInput, match="same lora_r"):
        train_task(
            cities,
            "cities",
            quick(tiny_base_dir, init_from=first, lora_r=4),
            progress=False,
            metric=main_score,
        )
    with pytest.raises(InvalidInput, match="lora or dora"):
        train_task(
            cities,
            "cities",
            quick(tiny_base_dir, init_from=first, method="full"),
            progress=False,
            metric=main_score,
        )
