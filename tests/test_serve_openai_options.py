"""Every OpenAI request option is honoured or refused: the official `openai` client against a
real server on a tiny random model. Implemented options return the shapes OpenAI documents;
refused ones are 400s with `param` naming them; no field is accepted and ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import whetstone
from serve_helpers import register_lora, running, wait_for
from whetstone import registry
from whetstone.serve import openai_api as api
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve-options")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("support", "generate", instruction="Answer briefly.")
    p.create_task("sentiment", "classify", labels=["pos", "neg"])
    av = register_lora(p, "support", tiny_base_dir, 1, tmp)
    registry.set_stage(p, av.name, "production", action="promote")
    app = create_app(p, Settings(max_wait_ms=20))
    with running(app) as url:
        yield p, url
    p.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def chat(url: str, **kw: Any) -> Any:
    kw.setdefault("model", "support")
    kw.setdefault("messages", HELLO)
    kw.setdefault("max_tokens", 6)
    return client(url).chat.completions.create(**kw)


def complete(url: str, **kw: Any) -> Any:
    kw.setdefault("model", "support")
    kw.setdefault("prompt", "hello there")
    kw.setdefault("max_tokens", 6)
    return client(url).completions.create(**kw)


def refused(call: Any, param: str) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    body: dict[str, Any] = e.value.body  # type: ignore[assignment]
    assert body["param"] == param, body
    assert param in body["message"]
    return body


# ---- no option slips through ------------------------------------------------------------

MESSAGE_IMPLEMENTED = {"role", "content"}
MESSAGE_HARMLESS = {"name", "refusal"}
MESSAGE_REFUSED = {"tool_calls", "tool_call_id", "function_call"}


def test_every_field_is_implemented_harmless_or_refused() -> None:
    """A new request field must be put in one list, and a refused one given a test value
    here, or this fails: nothing can be accepted and silently ignored."""
    lists = (api.IMPLEMENTED, api.HARMLESS, api.REFUSED)
    assert not (lists[0] & lists[1] or lists[0] & lists[2] or lists[1] & lists[2])
    for model in (api.ChatRequest, api.CompletionRequest):
        assert model.model_config.get("extra") == "forbid", model
        for name in model.model_fields:
            assert sum(name in group for group in lists) == 1, (model.__name__, name)
    assert set(api.ChatMessage.model_fields) == MESSAGE_IMPLEMENTED | MESSAGE_HARMLESS | (
        MESSAGE_REFUSED
    )
    assert api.ChatMessage.model_config.get("extra") == "forbid"
    assert set(REFUSED_VALUES) == api.REFUSED  # every refused field is tried below
    assert set(HARMLESS_VALUES) == api.HARMLESS


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
FUNCTION = {"name": "f", "parameters": {"type": "object"}}
# Each refused field with a value that asks for something, and the endpoint it is sent to.
REFUSED_VALUES: dict[str, tuple[str, Any]] = {
    "echo": ("completion", True),
    "suffix": ("completion", "the end"),
    "best_of": ("completion", 2),
    "tools": ("chat", [TOOL]),
    "tool_choice": ("chat", "auto"),
    "functions": ("chat", [FUNCTION]),
    "function_call": ("chat", "auto"),
    "logit_bias": ("chat", {"50256": -100}),
    "frequency_penalty": ("chat", 0.5),
    "presence_penalty": ("completion", 0.5),
}
HARMLESS_VALUES: dict[str, Any] = {
    "user": "u-1",
    "metadata": {"team": "a"},
    "store": False,
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "safety_identifier": "s",
    "parallel_tool_calls": False,
}


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_refused_options_are_400s_naming_them(served: Any, name: str) -> None:
    _, url = served
    endpoint, value = REFUSED_VALUES[name]
    ask = chat if endpoint == "chat" else complete
    body = refused(lambda: ask(url, **{name: value}), name)
    assert body["code"] == "unsupported_parameter"
    neutral = api.NEUTRAL[name][-1]  # the value that asks for nothing is fine
    assert ask(url, **{name: neutral}).choices


def test_harmless_options_are_accepted(served: Any) -> None:
    _, url = served
    assert chat(url, **HARMLESS_VALUES).choices[0].message.content is not None
    assert complete(url, user="u-1", stream_options=None).choices


def test_response_format_of_an_unknown_type_is_refused(served: Any) -> None:
    """text, json_object and json_schema are implemented (tests/test_constrained.py)."""
    _, url = served
    assert chat(url, response_format={"type": "text"}).choices
    assert chat(url, response_format={"type": "json_object"}).choices[0].message.content
    refused(lambda: chat(url, response_format={"type": "yaml"}), "response_format")


def test_tool_calls_in_the_history_are_refused_not_dropped(served: Any) -> None:
    _, url = served
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]
    refused(lambda: chat(url, messages=history), "messages.1.tool_calls")
    tool = [*HELLO, {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    refused(lambda: chat(url, messages=tool), "messages.1.role")
    # An earlier answer sent back as it came (no tool calls) is fine.
    plain = [*HELLO, {"role": "assistant", "content": "hi", "refusal": None}, *HELLO]
    assert chat(url, messages=plain).choices


def test_unknown_fields_are_refused_by_name(served: Any) -> None:
    _, url = served
    body = refused(lambda: chat(url, extra_body={"top_k": 5}), "top_k")
    assert body["code"] == "unknown_parameter"
    refused(lambda: complete(url, extra_body={"min_tokens": 2}), "min_tokens")
    odd = [{"role": "user", "content": "hi", "mood": "happy"}]
    refused(lambda: chat(url, messages=odd), "messages.0.mood")
    opts = {"include_usage": True, "continuous_usage_stats": True}
    refused(
        lambda: chat(url, stream=True, stream_options=opts), "stream_options.continuous_usage_stats"
    )
    refused(lambda: chat(url, top_logprobs=2), "top_logprobs")  # needs logprobs: true


# ---- implemented --------------------------------------------------------------------------


def test_chat_token_logprobs_whole_and_streamed(served: Any) -> None:
    _, url = served
    done = chat(url, logprobs=True, top_logprobs=3)
    choice = done.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    if choice.finish_reason == "length":  # no end-of-turn token: one entry per token
        assert len(content) == done.usage.completion_tokens
        mean = sum(t.logprob for t in content) / len(content)
        assert mean == pytest.approx(done.whetstone["confidence"], abs=1e-4)
    for t in content:
        assert t.bytes == list(t.token.encode()) and t.logprob <= 0
        assert len(t.top_logprobs) == 3
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert t.logprob == pytest.approx(lps[0], abs=1e-5)  # greedy picks the likeliest
    assert chat(url, logprobs=True).choices[0].logprobs.content[0].top_logprobs == []
    assert chat(url).choices[0].logprobs is None  # not asked, none given
    chunks = list(chat(url, logprobs=True, top_logprobs=3, stream=True))
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in content
    ]


def test_completion_token_logprobs_whole_and_streamed(served: Any) -> None:
    _, url = served
    done = complete(url, logprobs=2)
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(
        len(top) <= 2 and max(top.values()) >= lp_
        for top, lp_ in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    chunks = list(complete(url, logprobs=2, stream=True))
    tokens = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.tokens
    ]
    offsets = [
        o
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for o in c.choices[0].logprobs.text_offset
    ]
    assert tokens == lp.tokens and offsets == lp.text_offset


def test_seed_makes_sampling_reproducible(served: Any) -> None:
    _, url = served
    ask = {"temperature": 1.0, "max_tokens": 8}
    first = chat(url, seed=1234, **ask).choices[0].message.content
    assert chat(url, seed=1234, **ask).choices[0].message.content == first
    others = {chat(url, seed=s, **ask).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should sample differently"
    text = complete(url, seed=99, temperature=1.0).choices[0].text
    assert complete(url, seed=99, temperature=1.0).choices[0].text == text


def test_n_gives_several_choices_whole_and_streamed(served: Any) -> None:
    p, url = served
    rows = sample(url, "whetstone_batch_size_sum", "")
    raw = client(url).chat.completions.with_raw_response.create(
        model="support", messages=HELLO, max_tokens=6, n=2, seed=7, temperature=1.0
    )
    done = raw.parse()
    assert [c.index for c in done.choices] == [0, 1]
    texts = [c.message.content for c in done.choices]
    assert texts[0] != texts[1], "two samples at temperature 1 should differ"
    if all(c.finish_reason == "length" for c in done.choices):
        assert done.usage.completion_tokens == 12  # every choice's tokens are counted
        # One prefill row for both (shared), then 5 decode steps of two rows each.
        assert sample(url, "whetstone_batch_size_sum", "") - rows == 1 + 5 * 2
    # Choice i samples with seed + i: the first is the single answer of the same seed.
    single = chat(url, seed=7, temperature=1.0).choices[0].message.content
    assert texts[0] == single
    chunks = list(chat(url, n=2, seed=7, temperature=1.0, stream=True))
    by_index = ["", ""]
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] += ch.delta.content or ""
    assert by_index == texts
    rec = p.record(wait_for(lambda: p.store.find_source_key(raw.headers["x-whetstone-record"])))
    assert rec.meta["choices"][0]["output"] == texts[1].strip()
    one = client(url).chat.completions.create(model="support", messages=HELLO, max_tokens=6, n=1)
    assert len(one.choices) == 1
    refused(lambda: chat(url, model="sentiment", n=2), "n")  # label likelihood: one answer


def test_model_by_id(served: Any) -> None:
    _, url = served
    c = client(url)
    m = c.models.retrieve("support")
    assert m.id == "support" and m.object == "model" and m.owned_by == "whetstone"
    assert c.models.retrieve("support@1").id == "support@1"
    assert c.models.retrieve("base").id == "base"
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("nope")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_a_list_of_prompts_gives_one_choice_per_prompt(served: Any) -> None:
    p, url = served
    prompts = ["hello there", "what is the time", "good morning"]
    alone = [complete(url, prompt=t) for t in prompts]
    raw = client(url).completions.with_raw_response.create(
        model="support", prompt=prompts, max_tokens=6
    )
    done = raw.parse()
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.text for c in done.choices] == [a.choices[0].text for a in alone]
    assert done.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert done.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    refs = raw.headers["x-whetstone-record"].split(",")
    assert len(set(refs)) == 3  # each prompt its own record, in prompt order
    for ref, text in zip(refs, prompts, strict=True):
        assert p.record(wait_for(lambda ref=ref: p.store.find_source_key(ref))).input == text
    two = complete(url, prompt=prompts[:2], n=2, seed=3, temperature=1.0)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]  # prompt-major, n per prompt
    refused(lambda: complete(url, prompt=prompts, stream=True), "stream")


def sample(url: str, name: str, model: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels.get("model", "") == model:
                return float(s.value)
    return 0.0


def test_time_to_first_token_and_inter_token_latency_histograms(served: Any) -> None:
    _, url = served
    ttft, itl = "whetstone_time_to_first_token_seconds", "whetstone_inter_token_latency_seconds"
    before = sample(url, ttft + "_count", "support@1"), sample(url, itl + "_count", "support@1")
    done = chat(url, max_tokens=5)
    after = sample(url, ttft + "_count", "support@1"), sample(url, itl + "_count", "support@1")
    assert after[0] - before[0] == 1  # one generation, one first token
    assert after[1] - before[1] == done.usage.completion_tokens - 1  # a gap between each two
    assert sample(url, ttft + "_sum", "support@1") > 0
