"""One stop rule: evaluation (`predict.Predictor` → `models.generate`) and the serving engine
return the same answer for the same adapter and input, whether it ends on a generation-config
end token the tokenizer does not call EOS or on a stop string."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import make_lora
from whetstone.models.decoding import Decoder

INPUT = "Where is my parcel? It was due on Monday and I have heard nothing since."
MAX_TOKENS = 12


def _chat(project: Any) -> list[dict[str, str]]:
    from whetstone.prompts import chat

    return chat(project.task("t"), INPUT)


@pytest.fixture(scope="module")
def world(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A project whose base model's generation config ends a turn on a token that the
    tokenizer's EOS is not (as chat models' `<|im_end|>` often is), and one random LoRA; with
    the LoRA's greedy answer tokens, that end token last."""
    from whetstone.models import base

    tmp = tmp_path_factory.mktemp("decoding")
    base_dir = tmp / "base"
    shutil.copytree(tiny_base_dir, base_dir)
    lora = make_lora(base_dir, tmp / "lora", seed=5, scale=16.0)
    # The adapter's greedy answer with nothing to end it but the token budget.
    probe = whetstone.init(tmp / "probe", base_model=str(base_dir))
    probe.create_task("t", "generate")
    av = register_lora_folder(probe, lora, base_dir)
    first, _ = _serve(base_dir, av, _chat(probe), [])
    probe.close()
    p = whetstone.init(tmp / "proj", base_model=str(base_dir))
    p.create_task("t", "generate")
    tok = base.load_tokenizer(base.resolve(str(base_dir)))
    assert tok.eos_token_id not in first  # random weights never end an answer by themselves
    # The extra end token: the first answer token, from the 5th on, not seen before it.
    stop_at = next(i for i in range(4, len(first)) if first[i] not in first[:i])
    cfg_path = base_dir / "generation_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["eos_token_id"] = [tok.eos_token_id, first[stop_at]]
    cfg_path.write_text(json.dumps(cfg))
    av = register_lora_folder(p, lora, base_dir)  # on the base with the new end token
    yield p, av, base_dir, first[: stop_at + 1]
    p.close()


def register_lora_folder(p: Any, lora: Path, base_dir: Path) -> Any:
    from whetstone import registry
    from whetstone.models import base

    return registry.register(
        p,
        "t",
        lora,
        method="lora",
        base_model=str(base_dir),
        base_hash=base.resolve(str(base_dir)).hash,
    )


def _serve(
    base_dir: Path, av: Any, chat: list[dict[str, str]], stop: list[str]
) -> tuple[list[int], Any]:
    """The serving engine's answer tokens and `Done` event, driven step by step."""
    from whetstone.models import base
    from whetstone.models.generate import encode_prompts
    from whetstone.serve.engine import Done, Engine, Job
    from whetstone.serve.metrics import Metrics
    from whetstone.serve.settings import Settings

    b = base.resolve(str(base_dir))
    model, tok = base.load(b)
    engine = Engine(model, tok, b.hash, Settings(), Metrics())
    events: list[Any] = []
    job = Job(
        prompt_ids=encode_prompts(tok, [chat])[0],
        adapter=av,
        max_tokens=MAX_TOKENS,
        emit=events.append,
        stop=stop,
    )
    engine.submit(job)
    for _ in range(MAX_TOKENS + 2):
        engine.step()
        if job.finished:
            break
    done = events[-1]
    assert isinstance(done, Done), events
    return job.tokens, done


def test_eval_and_serve_stop_on_the_generation_configs_end_token(world: Any) -> None:
    from whetstone.predict import load_predictor
    from whetstone.prompts import normalise_answer

    p, av, base_dir, first = world
    predictor = load_predictor(p, "t", av.name)
    evaluated = predictor([INPUT], max_new_tokens=MAX_TOKENS)[0]
    _, served = _serve(base_dir, av, _chat(p), [])
    assert served.finish_reason == "stop"
    assert served.completion_tokens == len(first)  # the end token included
    assert evaluated.output_tokens == served.completion_tokens
    # What evaluation scores is what serving returns (and captures) for the same input.
    assert evaluated.text == normalise_answer(p.task("t"), served.text)
    assert evaluated.text == predictor.tokenizer.decode(first[:-1]).strip()


def test_eval_and_serve_cut_at_the_same_stop_string(world: Any) -> None:
    from whetstone.models.generate import generate
    from whetstone.predict import load_predictor

    p, av, base_dir, first = world
    predictor = load_predictor(p, "t", av.name)
    whole = predictor.tokenizer.decode(first[:-1])
    stop = whole[len(whole) // 2 :][:2]
    assert stop.strip() and whole.find(stop) > 0
    # Evaluation's decoder, on the model and tokenizer evaluation loads.
    evaluated = generate(
        predictor.model, predictor.tokenizer, [_chat(p)], max_new_tokens=MAX_TOKENS, stop=[stop]
    )[0]
    _, served = _serve(base_dir, av, _chat(p), [stop])
    assert served.finish_reason == "stop"
    assert served.text == whole[: whole.find(stop)]
    assert evaluated.text == served.text.strip()
    assert evaluated.output_tokens == served.completion_tokens < len(first)


def test_stop_ids_are_the_tokenizers_and_the_generation_configs(world: Any) -> None:
    from whetstone.predict import load_predictor

    p, av, _, first = world
    predictor = load_predictor(p, "t", av.name)
    decoder = Decoder.of(predictor.model, predictor.tokenizer)
    assert decoder.stop_ids == {predictor.tokenizer.eos_token_id, first[-1]}
    answer = decoder.answer([*first[:-1], first[-1], *first[:2]])
    assert answer.stopped and answer.text == predictor.tokenizer.decode(first[:-1])
    assert not decoder.answer(first[:-1]).stopped
