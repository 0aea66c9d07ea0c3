"""Classify tasks answered by label likelihood through the OpenAI-compatible server: the
chosen label as the content, the label distribution as `logprobs`, captured like any answer,
on the base model and on an adapter, alongside generation."""

from __future__ import annotations

import concurrent.futures as cf
import math
from pathlib import Path
from typing import Any

import openai
import pytest

import whetstone
from serve_helpers import register_lora, running, wait_for
from whetstone import prompts, registry
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

LABELS = ["pos", "neg", "neutral"]
TEXT = [{"role": "user", "content": "the film was fine I guess"}]


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve-classify")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("sentiment", "classify", labels=LABELS, instruction="Label the sentiment.")
    p.create_task("support", "generate")
    sent = register_lora(p, "sentiment", tiny_base_dir, 4, tmp)
    registry.set_stage(p, sent.name, "production", action="promote")
    sup = register_lora(p, "support", tiny_base_dir, 5, tmp)
    registry.set_stage(p, sup.name, "production", action="promote")
    app = create_app(p, Settings(max_wait_ms=50, max_adapters=8))
    with running(app) as url:
        yield p, url, app, sent
    p.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def label_logprobs(choice: Any) -> dict[str, float]:
    (only,) = choice.logprobs.content
    assert only.token == choice.message.content
    return {t.token: t.logprob for t in only.top_logprobs}


def direct(tiny_base_dir: Path, adapter: Path | None) -> dict[str, float]:
    """The label distribution `score_labels` gives outside the server."""
    from peft import PeftModel

    from whetstone.models import base
    from whetstone.models.label_scoring import score_labels
    from whetstone.records import Task

    model, tok = base.load(base.resolve(str(tiny_base_dir)))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    task = Task(
        name="sentiment", kind="classify", labels=LABELS, instruction="Label the sentiment."
    )
    (scores,) = score_labels(model, tok, [prompts.chat(task, TEXT[0]["content"])], LABELS)
    return scores.probs


@pytest.mark.parametrize(
    ("model", "extra"), [("base", {"task": "sentiment"}), ("sentiment", {})], ids=["base", "lora"]
)
def test_chat_answers_a_label_with_its_distribution_and_captures_it(
    served: Any, tiny_base_dir: Path, model: str, extra: dict[str, Any]
) -> None:
    p, url, _, sent = served
    raw = client(url).chat.completions.with_raw_response.create(
        model=model, messages=TEXT, logprobs=True, extra_body=extra
    )
    done = raw.parse()
    choice = done.choices[0]
    assert choice.message.content in LABELS and choice.finish_reason == "stop"
    lps = label_logprobs(choice)
    assert set(lps) == set(LABELS)
    assert sum(math.exp(v) for v in lps.values()) == pytest.approx(1.0, abs=1e-4)
    assert max(lps, key=lambda k: lps[k]) == choice.message.content
    assert done.whetstone["confidence"] == pytest.approx(lps[choice.message.content], abs=1e-5)
    # The same distribution as scoring outside the server, with the route's adapter (or none).
    want = direct(tiny_base_dir, sent.path if model == "sentiment" else None)
    assert {k: math.exp(v) for k, v in lps.items()} == pytest.approx(want, abs=1e-4)
    rec = p.record(wait_for(lambda: p.store.find_source_key(raw.headers["x-whetstone-record"])))
    assert rec.task == "sentiment" and rec.output == choice.message.content
    assert rec.confidence == pytest.approx(lps[rec.output], abs=1e-5)
    assert rec.meta["finish_reason"] == "stop"
    assert rec.model == (sent.name if model == "sentiment" else f"base:{tiny_base_dir}")


def test_the_adapter_changes_the_distribution_and_top_logprobs_limits_it(served: Any) -> None:
    _, url, _, _ = served
    c = client(url)
    on_base = c.chat.completions.create(
        model="base", messages=TEXT, logprobs=True, extra_body={"task": "sentiment"}
    )
    on_lora = c.chat.completions.create(model="sentiment", messages=TEXT, logprobs=True)
    assert label_logprobs(on_base.choices[0]) != pytest.approx(label_logprobs(on_lora.choices[0]))
    one = c.chat.completions.create(model="sentiment", messages=TEXT, logprobs=True, top_logprobs=1)
    assert [t.token for t in one.choices[0].logprobs.content[0].top_logprobs] == [
        one.choices[0].message.content
    ]
    plain = c.chat.completions.create(model="sentiment", messages=TEXT)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == on_lora.choices[0].message.content


def test_streaming_and_completions_return_the_label(served: Any) -> None:
    _, url, _, _ = served
    c = client(url)
    whole = c.chat.completions.create(model="sentiment", messages=TEXT).choices[0].message.content
    chunks = list(
        c.chat.completions.create(
            model="sentiment", messages=TEXT, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert "".join(d or "" for d in deltas) == whole
    assert [d for d in deltas if d] == [whole], "the label comes as one delta"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and chunks[-1].usage.completion_tokens >= 1
    comp = c.completions.create(model="sentiment", prompt=TEXT[0]["content"], logprobs=5)
    assert comp.choices[0].text == whole and comp.choices[0].finish_reason == "stop"
    assert comp.choices[0].logprobs.tokens == [whole]
    assert set(comp.choices[0].logprobs.top_logprobs[0]) == set(LABELS)


def test_scoring_between_decode_steps_leaves_generation_alone(served: Any) -> None:
    """Label scoring runs on the engine thread while other rows decode: generated answers
    are the same as alone, and so are the labels, whichever adapter was active before."""
    _, url, app, _ = served
    c = client(url)

    def gen(model: str) -> str:
        out = c.chat.completions.create(model=model, messages=TEXT, max_tokens=12)
        return out.choices[0].message.content or ""

    def lab(model: str) -> str:
        extra = {"task": "sentiment"} if model == "base" else {}
        out = c.chat.completions.create(model=model, messages=TEXT, extra_body=extra)
        return out.choices[0].message.content or ""

    jobs = [(gen, "support"), (gen, "base"), (lab, "sentiment"), (lab, "base")]
    alone = [f(m) for f, m in jobs]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda j: j[0](j[1]), jobs * 3))
    assert together == alone * 3
    # Unloading every adapter leaves the base model, and base scoring still works.
    engine = app.state.services.engine
    for ref in list(engine.pool.loaded):
        assert engine.unload(ref)
    assert lab("base") == alone[3] and lab("sentiment") == alone[2]
