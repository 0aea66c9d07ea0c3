"""The hero client against a real local HTTP stand-in: answers, samples, money, failures,
and the key kept out of every message."""

from __future__ import annotations

import asyncio

import pytest
from tests.hero_stub import StubHero, serving

from whetstone.errors import InvalidInput
from whetstone.models.hero import Hero, HeroConfig, HeroError, HeroReply, hero_config

KEY = "sk-test-SECRET-123"
ENV = {"HERO_KEY": KEY}


def config(url: str, **kw: object) -> HeroConfig:
    base = {
        "base_url": url,
        "model": "stub-large",
        "api_key_env": "HERO_KEY",
        "price_input_per_1k": 1.0,
        "price_output_per_1k": 2.0,
        "timeout_s": 5,
        "max_retries": 0,
    }
    return HeroConfig.model_validate({**base, **kw})


def test_answer_counts_tokens_and_money_once_per_call() -> None:
    stub = StubHero()
    with serving(stub) as url:
        reply = Hero(config(url), env=ENV).answer([{"role": "user", "content": "hi"}])
    assert reply.text == "HI"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.calls) == (10, 5, 1)
    assert reply.cost == pytest.approx((10 * 1.0 + 5 * 2.0) / 1000)
    assert stub.auth == [f"Bearer {KEY}"]  # the key travels in the header, and only there
    assert stub.calls[0]["temperature"] == 0.0


def test_samples_topped_up_when_the_endpoint_ignores_n() -> None:
    stub = StubHero(honour_n=False, answer=lambda text, i: f"{text}-{len(stub.calls)}")
    with serving(stub) as url:
        reply = Hero(config(url), env=ENV).answer([{"role": "user", "content": "a"}], n=3)
    assert reply.texts == ["a-1", "a-2", "a-3"]
    assert reply.calls == 3 and [c["n"] for c in stub.calls] == [3, 2, 1]
    assert reply.prompt_tokens == 30  # each call's usage counted once
    assert all(c["temperature"] == 1.0 for c in stub.calls)


@pytest.mark.parametrize("mode", ["fail", "garbage", "slow"])
def test_failures_are_hero_errors_without_the_key(mode: str) -> None:
    stub = StubHero(mode=mode, delay_s=3)
    with serving(stub) as url:
        hero = Hero(config(url, timeout_s=0.5), env=ENV)
        with pytest.raises(HeroError) as e:
            hero.answer([{"role": "user", "content": "x"}])
        results = hero.answer_many([[{"role": "user", "content": "y"}]])
    assert KEY not in str(e.value) and "stub-large" in str(e.value)
    assert isinstance(results[0], HeroError)


def test_async_answer_and_many_in_order() -> None:
    stub = StubHero()
    with serving(stub) as url:
        hero = Hero(config(url, max_concurrency=2), env=ENV)
        reply = asyncio.run(hero.aanswer([{"role": "user", "content": "q"}]))
        many = hero.answer_many([[{"role": "user", "content": str(i)}] for i in range(6)])
    assert reply.text == "Q"
    assert [r.text for r in many if isinstance(r, HeroReply)] == [str(i) for i in range(6)]


def test_config_refuses_a_key_in_place_of_a_name_and_a_missing_variable() -> None:
    with pytest.raises(InvalidInput, match=r"hero\.api_key_env"):
        hero_config({"base_url": "http://x", "model": "m", "api_key_env": "sk-abc.def"})
    with pytest.raises(InvalidInput, match=r"hero\.route"):
        hero_config({"base_url": "http://x", "model": "m", "route": "cascade"})
    with pytest.raises(InvalidInput, match="HERO_KEY is not set"):
        Hero(config("http://x"), env={})
    assert hero_config(None) is None
    cfg = hero_config({"base_url": "http://x", "model": "m", "routes": {"t": "cascade"}})
    assert cfg is not None and cfg.route("t") == "cascade" and cfg.route("u") == "workhorse"
