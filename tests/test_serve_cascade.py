"""Cascade serving against a real local HTTP hero (tests/hero_stub.py): the workhorse answers,
the hero answers when the workhorse is unsure (below the calibrated threshold) or wrong (a
failed check), a slow, failing or garbage-returning hero leaves the workhorse's answer in
place, money is counted once per call, both answers are captured, and the key never shows."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.hero_stub import StubHero, serving

import whetstone
from serve_helpers import register_lora, running, wait_for
from whetstone import registry
from whetstone.errors import InvalidInput
from whetstone.models.hero import hero_config
from whetstone.records import Record
from whetstone.serve.app import create_app
from whetstone.serve.cascade import Announcer
from whetstone.serve.settings import Settings

KEY = "sk-test-SECRET-cascade-4242"
KEY_ENV = "WHETSTONE_TEST_HERO_KEY"
LABELS = ["pos", "neg", "neutral"]
FILM = "the film was fine I guess"
ADDRESS = "12 Main St, Springfield"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
COST = (10 * 1.0 + 5 * 2.0) / 1000  # the stub's usage at the prices below, per call
UNSURE = "a film, mostly"
HERO_SAYS = {FILM: "Neg.", ADDRESS: '{ "city": "Springfield" }', UNSURE: "Hard to say!"}


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[StubHero, str]]:
    hero = StubHero(answer=lambda text, i: HERO_SAYS.get(text, text.upper()), delay_s=3)
    with serving(hero) as url:
        yield hero, url


@pytest.fixture(autouse=True)
def hero_ok(stub: tuple[StubHero, str]) -> Iterator[None]:
    yield
    stub[0].mode = "ok"


def hero_section(url: str, **kw: Any) -> dict[str, Any]:
    return {
        "base_url": url,
        "model": "stub-large",
        "api_key_env": KEY_ENV,
        "price_input_per_1k": 1.0,
        "price_output_per_1k": 2.0,
        "timeout_s": 1.0,
        "max_retries": 0,
        **kw,
    }


def promoted(p: Any, task: str, base: Path, seed: int, tmp: Path, limit: float | None) -> None:
    av = register_lora(p, task, base, seed, tmp)
    if limit is not None:
        registry.update_info(p, av.name, cascade={"threshold": limit})
    registry.set_stage(p, av.name, "production", action="promote")


@pytest.fixture(scope="module")
def served(
    tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory, stub: tuple[StubHero, str]
) -> Iterator[tuple[Any, str]]:
    tmp = tmp_path_factory.mktemp("serve-cascade")
    env = pytest.MonkeyPatch()
    env.setenv(KEY_ENV, KEY)
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    # Log-probabilities are <= 0: a threshold of 0.5 escalates every answer, -1000 none.
    p.create_task("sentiment", "classify", labels=LABELS)
    promoted(p, "sentiment", tiny_base_dir, 4, tmp, 0.5)
    p.create_task("calm", "classify", labels=LABELS)
    promoted(p, "calm", tiny_base_dir, 5, tmp, -1000.0)
    p.create_task("addresses", "extract", schema=SCHEMA)  # no threshold: checks only
    promoted(p, "addresses", tiny_base_dir, 6, tmp, None)
    p.create_task("support", "generate")
    promoted(p, "support", tiny_base_dir, 7, tmp, None)
    p.create_task("notes", "generate")  # no adapter, no route: the workhorse (base)
    routes = {"sentiment": "cascade", "calm": "cascade", "addresses": "cascade"}
    p.config["hero"] = hero_section(stub[1], routes={**routes, "support": "hero"})
    # Free extract answers: the tiny model's then fail their check (constrained ones, the
    # default, are tested in test_constrained.py).
    app = create_app(p, Settings(max_wait_ms=50, max_adapters=8, constrain_extract=False))
    try:
        with running(app) as url:
            yield p, url
    finally:
        p.close()
        env.undo()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def ask(url: str, model: str, text: str, **kw: Any) -> Any:
    return client(url).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, **kw
    )


def record_of(p: Any, raw: Any) -> Record:
    return p.record(wait_for(lambda: p.store.find_source_key(raw.headers["x-whetstone-record"])))


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_below_the_threshold_the_hero_answers_and_both_are_captured(
    served: Any, stub: tuple[StubHero, str]
) -> None:
    p, url = served
    calls = len(stub[0].calls)
    raw = ask(url, "sentiment", FILM, logprobs=True)
    body, h = raw.parse(), raw.headers
    assert body.choices[0].message.content == "neg"  # "Neg." mapped to the task's label
    assert body.choices[0].logprobs is None  # the workhorse's distribution is not the answer's
    assert (h["x-whetstone-answered-by"], h["x-whetstone-escalated"]) == ("hero", "true")
    assert h["x-whetstone-cascade-reason"] == "confidence"
    assert float(h["x-whetstone-hero-cost"]) == pytest.approx(COST)
    part = body.whetstone["cascade"]
    assert part["answered_by"] == "hero" and part["threshold"] == 0.5
    assert part["hero_cost"] == pytest.approx(COST) and part["hero_model"] == "stub-large"
    assert len(stub[0].calls) == calls + 1
    sent = stub[0].calls[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": FILM}
    rec = record_of(p, raw)
    c = rec.meta["cascade"]
    assert rec.output == "neg" and rec.model == "hero:stub-large" and rec.reference is None
    assert (c["route"], c["answered_by"], c["reason"]) == ("cascade", "hero", "confidence")
    assert c["workhorse"]["output"] in LABELS
    assert c["workhorse"]["confidence"] == pytest.approx(rec.confidence) and rec.confidence < 0.5
    assert c["hero"] == {
        "output": "neg",
        "model": "stub-large",
        "cost": pytest.approx(COST),
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    assert "escalated" in rec.tags
    assert ("hero-disagreed" in rec.tags) == (c["workhorse"]["output"] != "neg")


def test_a_confident_workhorse_answers_alone(served: Any, stub: tuple[StubHero, str]) -> None:
    p, url = served
    calls = len(stub[0].calls)
    raw = ask(url, "calm", FILM)
    h = raw.headers
    assert (h["x-whetstone-answered-by"], h["x-whetstone-escalated"]) == ("workhorse", "false")
    assert float(h["x-whetstone-hero-cost"]) == 0 and "x-whetstone-cascade-reason" not in h
    assert len(stub[0].calls) == calls
    rec = record_of(p, raw)
    assert rec.output == raw.parse().choices[0].message.content and rec.model == "calm@1"
    c = rec.meta["cascade"]
    assert (c["answered_by"], c["reason"], c["hero"], c["threshold"]) == (
        "workhorse",
        None,
        None,
        -1000.0,
    )
    assert "escalated" not in rec.tags


def test_a_failed_check_escalates_without_a_threshold(served: Any) -> None:
    """The tiny random model writes no JSON: the extract answer fails its check."""
    p, url = served
    raw = ask(url, "addresses", ADDRESS)
    assert raw.parse().choices[0].message.content == '{"city":"Springfield"}'
    assert raw.headers["x-whetstone-cascade-reason"] == "check"
    rec = record_of(p, raw)
    c = rec.meta["cascade"]
    assert c["threshold"] is None and c["reason"] == "check"
    with pytest.raises(ValueError):
        json.loads(c["workhorse"]["output"])
    assert "not JSON" in c["workhorse"]["check"]
    assert rec.output == c["hero"]["output"] == '{"city":"Springfield"}'
    assert {"escalated", "hero-disagreed"} <= set(rec.tags)


def test_the_cascades_workhorse_answers_in_the_tasks_schema_by_default(served: Any) -> None:
    """With `constrain_extract` on (the default) the workhorse step is constrained as the
    workhorse route is: the tiny model, which writes no JSON freely, opens the task's object."""
    p, _ = served
    app = create_app(p, Settings(max_wait_ms=50, max_adapters=8))
    with running(app) as url:
        rec = record_of(p, ask(url, "addresses", ADDRESS))
    assert rec.meta["cascade"]["workhorse"]["output"].startswith("{")


@pytest.mark.parametrize("mode", ["slow", "fail", "garbage"])
def test_a_failing_hero_leaves_the_workhorse_answer(
    served: Any, stub: tuple[StubHero, str], mode: str
) -> None:
    p, url = served
    stub[0].mode = mode
    failures = metric(url, "whetstone_hero_failures_total", task="sentiment")
    cost = metric(url, "whetstone_hero_cost_total", task="sentiment")
    raw = ask(url, "sentiment", FILM)
    answer, h = raw.parse().choices[0].message.content, raw.headers
    assert answer in LABELS
    assert (h["x-whetstone-answered-by"], h["x-whetstone-escalated"]) == ("workhorse", "true")
    assert h["x-whetstone-cascade-reason"] == "hero-failed"
    assert float(h["x-whetstone-hero-cost"]) == 0
    assert "hero" in raw.parse().whetstone["cascade"]["hero_error"]
    rec = record_of(p, raw)
    c = rec.meta["cascade"]
    assert rec.output == answer == c["workhorse"]["output"] and rec.model == "sentiment@1"
    assert (c["reason"], c["escalated_for"], c["answered_by"]) == (
        "hero-failed",
        "confidence",
        "workhorse",
    )
    assert set(c["hero"]) == {"error"} and "stub-large" in c["hero"]["error"]
    assert "escalated" in rec.tags and "hero-disagreed" not in rec.tags
    assert metric(url, "whetstone_hero_failures_total", task="sentiment") == failures + 1
    assert metric(url, "whetstone_hero_cost_total", task="sentiment") == cost


def test_a_hero_answer_failing_the_checks_leaves_the_workhorse_answer(served: Any) -> None:
    """A label outside the set is no answer to a classify request: the workhorse's label
    (which passes) is returned, and the hero's call is still paid for."""
    p, url = served
    cost = metric(url, "whetstone_hero_cost_total", task="sentiment")
    raw = ask(url, "sentiment", UNSURE)
    h = raw.headers
    assert raw.parse().choices[0].message.content in LABELS
    assert (h["x-whetstone-answered-by"], h["x-whetstone-cascade-reason"]) == (
        "workhorse",
        "hero-failed",
    )
    assert "fails the task's checks" in record_of(p, raw).meta["cascade"]["hero"]["error"]
    assert metric(url, "whetstone_hero_cost_total", task="sentiment") == pytest.approx(cost + COST)


def test_money_is_counted_once_per_call(served: Any, stub: tuple[StubHero, str]) -> None:
    _, url = served
    calls = len(stub[0].calls)
    before = {
        name: metric(url, name, task="sentiment")
        for name in (
            "whetstone_hero_cost_total",
            "whetstone_hero_calls_total",
            "whetstone_hero_prompt_tokens_total",
            "whetstone_hero_completion_tokens_total",
        )
    }
    esc = metric(url, "whetstone_cascade_escalations_total", task="sentiment", reason="confidence")
    by_hero = metric(url, "whetstone_cascade_answers_total", task="sentiment", answered_by="hero")
    costs = [float(ask(url, "sentiment", FILM).headers["x-whetstone-hero-cost"]) for _ in range(3)]
    assert costs == [pytest.approx(COST)] * 3
    assert len(stub[0].calls) == calls + 3
    got = {name: metric(url, name, task="sentiment") - v for name, v in before.items()}
    assert got == {
        "whetstone_hero_cost_total": pytest.approx(3 * COST),
        "whetstone_hero_calls_total": 3,
        "whetstone_hero_prompt_tokens_total": 30,
        "whetstone_hero_completion_tokens_total": 15,
    }
    assert (
        metric(url, "whetstone_cascade_escalations_total", task="sentiment", reason="confidence")
        == esc + 3
    )
    assert (
        metric(url, "whetstone_cascade_answers_total", task="sentiment", answered_by="hero")
        == by_hero + 3
    )


def test_the_route_is_overridden_per_request(served: Any, stub: tuple[StubHero, str]) -> None:
    p, url = served
    calls = len(stub[0].calls)
    # A cascade task asked for the workhorse alone: today's answer, no cascade headers.
    raw = ask(url, "sentiment", FILM, extra_body={"whetstone_route": "workhorse"})
    assert "x-whetstone-answered-by" not in raw.headers and len(stub[0].calls) == calls
    assert "cascade" not in record_of(p, raw).meta
    # A workhorse task (and base under a task) asked for the hero, by body field or header.
    raw = ask(url, "notes", "hello there", extra_body={"whetstone_route": "hero"})
    assert raw.parse().choices[0].message.content == "HELLO THERE"
    assert raw.headers["x-whetstone-answered-by"] == "hero"
    raw = ask(
        url, "base", FILM, extra_body={"task": "calm"}, extra_headers={"X-Whetstone-Route": "hero"}
    )
    assert raw.parse().choices[0].message.content == "neg"
    assert record_of(p, raw).meta["cascade"]["route"] == "hero"
    raw = ask(url, "calm", FILM, extra_headers={"X-Whetstone-Route": "cascade"})
    assert raw.headers["x-whetstone-route"] == "cascade"
    for kw, param in [
        ({"extra_body": {"whetstone_route": "oracle"}}, "whetstone_route"),
        ({"extra_headers": {"X-Whetstone-Route": "oracle"}}, "X-Whetstone-Route"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(url, "calm", FILM, **kw)
        assert e.value.body["param"] == param and "workhorse, hero, cascade" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:  # `base` without a task: no cascade
        ask(url, "base", FILM, extra_body={"whetstone_route": "cascade"})
    assert "no task" in e.value.body["message"]


def test_the_hero_route_answers_every_request_or_fails_plainly(
    served: Any, stub: tuple[StubHero, str]
) -> None:
    p, url = served
    raw = ask(url, "support", "where is my order")
    assert raw.parse().choices[0].message.content == "WHERE IS MY ORDER"
    h = raw.headers
    assert (h["x-whetstone-answered-by"], h["x-whetstone-escalated"]) == ("hero", "false")
    assert h["x-whetstone-cascade-reason"] == "route"
    assert raw.parse().usage.completion_tokens == 5
    rec = record_of(p, raw)
    assert rec.model == "hero:stub-large" and rec.confidence is None
    assert rec.meta["cascade"]["workhorse"] is None and "escalated" not in rec.tags
    stub[0].mode = "fail"
    with pytest.raises(openai.APIStatusError) as e:
        ask(url, "support", "where is my order")
    assert e.value.status_code == 502 and e.value.body["code"] == "hero_failed"
    assert "stub-large" in e.value.body["message"] and KEY not in str(e.value.body)


def test_streaming_sends_the_decided_answer(served: Any) -> None:
    p, url = served
    raw = client(url).chat.completions.with_raw_response.create(
        model="sentiment",
        messages=[{"role": "user", "content": FILM}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-whetstone-answered-by"] == "hero"
    chunks = list(raw.parse())
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert "".join(d or "" for d in deltas) == "neg"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    rec = record_of(p, raw)
    assert rec.output == "neg" and rec.meta["cascade"]["answered_by"] == "hero"


def test_the_key_never_shows(
    served: Any, stub: tuple[StubHero, str], caplog: pytest.LogCaptureFixture
) -> None:
    p, url = served
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for mode in ("ok", "fail", "garbage"):
        stub[0].mode = mode
        seen.append(ask(url, "sentiment", FILM).text)
        try:
            seen.append(ask(url, "support", "hi").text)
        except openai.APIStatusError as e:
            seen.append(e.response.text)
    assert stub[0].auth[-1] == f"Bearer {KEY}"  # the key went to the hero, in its header
    wait_for(lambda: p.store.count_records("support") >= 1)
    records = [
        r.model_dump_json() for t in ("sentiment", "support") for r in p.store.list_records(t)
    ]
    assert caplog.records and "hero" in caplog.text
    for text in [caplog.text, httpx.get(url + "/metrics").text, *seen, *records]:
        assert KEY not in text


def test_the_review_api_sets_the_hero_answer_as_the_reference(served: Any) -> None:
    p, url = served
    rec = record_of(p, ask(url, "addresses", ADDRESS))
    got = httpx.get(f"{url}/review/api/records/{rec.id}").json()
    hero = got["meta"]["cascade"]["hero"]["output"]
    r = httpx.post(f"{url}/review/api/records/{rec.id}/correct", json={"reference": hero})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["reference"]) == ("corrected", '{"city":"Springfield"}')


def test_the_log_says_what_each_cascade_task_escalates_on(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    p, _ = served
    caplog.set_level(logging.INFO, logger="whetstone.serve")
    config = hero_config(p.section("hero"))
    assert config is not None
    say = Announcer(config)
    table = {
        "sentiment": registry.get(p, "sentiment"),
        "addresses": registry.get(p, "addresses"),
    }
    say(table)
    say(table)  # unchanged: said once
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cascade sentiment: escalating below confidence 0.5" in x for x in lines) == 1
    assert sum("addresses@1 has no calibrated threshold" in x for x in lines) == 1
    assert any("calm: hero.routes names a task that does not exist" in x for x in lines)


# ---- without a hero, or with one that cannot start -------------------------------------------
def test_without_a_hero_nothing_changes(tiny_base_dir: Path, tmp_path: Path) -> None:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("notes", "generate")
    app = create_app(p, Settings(max_wait_ms=50))
    assert app.state.services.hero is None
    with running(app) as url:
        raw = ask(url, "notes", "hello")
        assert "x-whetstone-answered-by" not in raw.headers
        assert "cascade" not in raw.parse().whetstone
        assert "cascade" not in record_of(p, raw).meta
        for route in ("hero", "cascade"):
            with pytest.raises(openai.BadRequestError) as e:
                ask(url, "notes", "hello", extra_body={"whetstone_route": route})
            assert "no hero is configured" in e.value.body["message"]
        ask(url, "notes", "hello", extra_body={"whetstone_route": "workhorse"})
    p.close()


def test_a_missing_key_variable_stops_the_start(
    tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WHETSTONE_TEST_NO_SUCH_KEY", raising=False)
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.config["hero"] = hero_section(
        "http://127.0.0.1:9/v1", api_key_env="WHETSTONE_TEST_NO_SUCH_KEY"
    )
    with pytest.raises(
        InvalidInput, match=r"whetstone\.yaml: .*WHETSTONE_TEST_NO_SUCH_KEY is not set"
    ):
        create_app(p, Settings())
    p.close()
