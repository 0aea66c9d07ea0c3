"""The hero: an expensive generalist behind any OpenAI-compatible chat endpoint (a paid API, a
big model on vLLM, another `whetstone serve`). It answers what the workhorse is unsure of
(`serve` cascade), labels data as a teacher (`distill`) and writes synthetic inputs.

Set once in whetstone.yaml:

    hero:
      base_url: https://api.openai.com/v1
      model: gpt-4o-mini
      api_key_env: OPENAI_API_KEY      # the NAME of the variable; the key itself is never stored
      price_input_per_1k: 0.00015      # money per 1,000 prompt tokens
      price_output_per_1k: 0.0006      # money per 1,000 completion tokens
      timeout_s: 30
      max_concurrency: 8
      routes: {addresses: cascade}     # per task: workhorse (default) | hero | cascade

Calls go through the official `openai` client (its retries and timeouts). The key is read
from the environment when the client is made and never written anywhere: errors carry the
failure's class and first line with the key masked, and records carry the hero's model name.
Money is counted once per HTTP call that returned usage, never per retry or per choice.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pydantic

from whetstone.errors import InvalidInput, WhetstoneError, first_line, from_validation

if TYPE_CHECKING:
    import openai

    from whetstone.project import Project

Route = Literal["workhorse", "hero", "cascade"]
ROUTES: tuple[str, ...] = ("workhorse", "hero", "cascade")
MASK = "***"


class HeroConfig(pydantic.BaseModel):
    """The `hero:` section of whetstone.yaml."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str
    api_key_env: str | None = None
    price_input_per_1k: float = pydantic.Field(default=0.0, ge=0)
    price_output_per_1k: float = pydantic.Field(default=0.0, ge=0)
    timeout_s: float = pydantic.Field(default=30.0, gt=0)
    max_concurrency: int = pydantic.Field(default=4, ge=1)
    max_retries: int = pydantic.Field(default=2, ge=0)
    max_tokens: int = pydantic.Field(default=512, ge=1)
    routes: dict[str, Route] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, v: str | None) -> str | None:
        # A pasted key in this field would be written to whetstone.yaml and every config dump.
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError(
                "must be the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key itself"
            )
        return v

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.price_input_per_1k + completion_tokens * self.price_output_per_1k
        ) / 1000

    def route(self, task: str) -> Route:
        return self.routes.get(task, "workhorse")


def hero_config(
    section: Mapping[str, Any] | None, where: str = "whetstone.yaml"
) -> HeroConfig | None:
    """The project's hero, or None when `hero:` is absent or empty."""
    if not section:
        return None
    try:
        return HeroConfig.model_validate(dict(section))
    except pydantic.ValidationError as e:
        raise from_validation(e, where, "hero") from None


def project_hero_config(project: Project) -> HeroConfig | None:
    """The project's hero (`hero:` in whetstone.yaml), or None when it has none."""
    return hero_config(project.section("hero"), str(project.config_path))


def project_hero(project: Project) -> Hero:
    """The project's hero, or an error saying how to set one."""
    config = project_hero_config(project)
    if config is None:
        raise InvalidInput(
            f"no hero configured: add a `hero:` section to {project.config_path} with base_url, "
            "model and api_key_env (the NAME of the variable holding the key)"
        )
    return Hero(config)


class HeroError(WhetstoneError):
    """The hero did not answer: timeout, connection, HTTP error or an unusable body. The
    message never contains the key."""


@dataclass(frozen=True)
class HeroReply:
    """The hero's answer to one prompt: `texts` holds one string per sample asked for."""

    texts: list[str]
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    calls: int  # HTTP calls it took (an endpoint that ignores `n` answers one sample a call)

    @property
    def text(self) -> str:
        return self.texts[0]


class Hero:
    """A client for the configured hero; thread-safe, at most `max_concurrency` calls at once
    from threads, and as many from the server's event loop."""

    def __init__(self, config: HeroConfig, env: Mapping[str, str] | None = None):
        self.config = config
        env = os.environ if env is None else env
        key = None
        if config.api_key_env:
            key = env.get(config.api_key_env)
            if not key:
                raise InvalidInput(
                    f"hero.api_key_env: the environment variable {config.api_key_env} is not set"
                )
        self._key = key
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._aslots: asyncio.Semaphore | None = None  # the server's loop has its own bound
        self._client: openai.OpenAI | None = None
        self._aclient: openai.AsyncOpenAI | None = None
        self._lock = threading.Lock()

    # ---- clients (made on first use: `openai` is a heavy import) -------------------------
    def _options(self) -> dict[str, Any]:
        return {
            "base_url": self.config.base_url,
            # OpenAI's client insists on a key; a local endpoint without auth gets a dummy.
            "api_key": self._key or "no-key",
            "timeout": self.config.timeout_s,
            "max_retries": self.config.max_retries,
        }

    def client(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(**self._options())
            return self._client

    def aclient(self) -> openai.AsyncOpenAI:
        with self._lock:
            if self._aclient is None:
                import openai

                self._aclient = openai.AsyncOpenAI(**self._options())
            return self._aclient

    # ---- calls ---------------------------------------------------------------------------
    def _request(
        self,
        messages: Sequence[Mapping[str, str]],
        n: int,
        temperature: float,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "messages": [dict(m) for m in messages],
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }

    def answer(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> HeroReply:
        """`n` samples of the hero's answer (greedy for one, temperature 1 for more unless
        given). Raises HeroError."""
        started, reply = time.perf_counter(), _Tally()
        temperature = sampling_temperature(n, temperature)
        while len(reply.texts) < n:
            req = self._request(messages, n - len(reply.texts), temperature, max_tokens)
            with self._slots:
                try:
                    resp = self.client().chat.completions.create(**req)
                except Exception as e:
                    raise self._error(e) from None
            reply.add(resp, self)
        return reply.done(self.config, started, n)

    async def aanswer(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> HeroReply:
        """As `answer`, for the server's event loop (one event loop per Hero)."""
        if self._aslots is None:
            self._aslots = asyncio.Semaphore(self.config.max_concurrency)
        started, reply = time.perf_counter(), _Tally()
        temperature = sampling_temperature(n, temperature)
        while len(reply.texts) < n:
            req = self._request(messages, n - len(reply.texts), temperature, max_tokens)
            async with self._aslots:
                try:
                    resp = await self.aclient().chat.completions.create(**req)
                except Exception as e:
                    raise self._error(e) from None
            reply.add(resp, self)
        return reply.done(self.config, started, n)

    def answer_many(
        self,
        prompts: Sequence[Sequence[Mapping[str, str]]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[HeroReply | HeroError]:
        """Every prompt answered, `max_concurrency` at a time, in order; a prompt the hero
        failed on gets its HeroError instead of stopping the rest. `on_done(i)` is called as
        each finishes (progress)."""

        def one(i: int) -> HeroReply | HeroError:
            try:
                return self.answer(prompts[i], n=n, temperature=temperature, max_tokens=max_tokens)
            except HeroError as e:
                return e
            finally:
                if on_done:
                    on_done(i)

        with ThreadPoolExecutor(self.config.max_concurrency) as pool:
            return list(pool.map(one, range(len(prompts))))

    def _error(self, e: Exception) -> HeroError:
        msg = f"the hero ({self.config.model} at {self.config.base_url}) failed: " + (
            f"{type(e).__name__}: {first_line(e)}"
        )
        return HeroError(self.mask(msg))

    def mask(self, text: str) -> str:
        """`text` with the key, should it appear, replaced by ***."""
        return text.replace(self._key, MASK) if self._key else text


def sampling_temperature(n: int, temperature: float | None) -> float:
    """Greedy for one answer; several samples of the same prompt need randomness."""
    if temperature is not None:
        return temperature
    return 0.0 if n == 1 else 1.0


class _Tally:
    """Choices and usage gathered over the calls one answer took."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.prompt_tokens = self.completion_tokens = self.calls = 0
        self.cost = 0.0
        self.model = ""

    def add(self, resp: Any, hero: Hero) -> None:
        choices = getattr(resp, "choices", None)
        texts = [getattr(getattr(c, "message", None), "content", None) for c in choices or []]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise HeroError(
                f"the hero ({hero.config.model}) sent a response without an answer "
                "(no choices[].message.content)"
            )
        self.texts.extend(t for t in texts if isinstance(t, str))
        usage = getattr(resp, "usage", None)
        p = int(getattr(usage, "prompt_tokens", 0) or 0)
        c = int(getattr(usage, "completion_tokens", 0) or 0)
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost += hero.config.cost(p, c)
        self.calls += 1
        self.model = str(getattr(resp, "model", "") or hero.config.model)

    def done(self, config: HeroConfig, started: float, n: int) -> HeroReply:
        return HeroReply(
            texts=self.texts[:n],
            model=self.model or config.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            latency_s=time.perf_counter() - started,
            calls=self.calls,
        )
