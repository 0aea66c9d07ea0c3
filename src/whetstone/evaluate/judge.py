"""LLM-as-judge: another model scores each answer 1..5 against a rubric.

The judge is an OpenAI-compatible endpoint (`http://host:port[/v1][#model]`) or any base
model spec Whetstone can load locally. Its answer must be a bare score; anything else is an
error rather than a guess, because a misparsed score would silently skew the metric.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whetstone.errors import WhetstoneError
from whetstone.records import Record, Task

DEFAULT_RUBRIC = (
    "5: the answer is correct and complete (it agrees with the reference).\n"
    "3: the answer is partly correct.\n"
    "1: the answer is wrong, empty or off-topic."
)
SYSTEM = (
    "You are a strict grader. Score the answer from 1 (worst) to 5 (best) following the "
    "rubric. Reply with the score only: a single digit from 1 to 5."
)
SCORE = re.compile(r"^\s*([1-5])(?:\s*/\s*5)?\s*\.?\s*$")


class JudgeError(WhetstoneError):
    """The judge could not be reached or did not answer with a score."""


def read_rubric(rubric: str | None) -> str:
    """A rubric is given inline or as a path to a text file."""
    if not rubric:
        return DEFAULT_RUBRIC
    path = Path(rubric)
    if len(rubric) < 4096 and "\n" not in rubric and path.is_file():
        return path.read_text()
    return rubric


def parse_score(text: str, where: str) -> float:
    match = SCORE.match(text)
    if not match:
        raise JudgeError(f"the judge answered {text[:80]!r} for {where}; expected a score 1..5")
    return float(match.group(1))


def judge_prompt(task: Task, record: Record, prediction: str, rubric: str) -> list[dict[str, str]]:
    user = (
        f"Task instruction: {task.instruction or task.kind.value}\n\n"
        f"Rubric:\n{rubric}\n\n"
        f"Input:\n{record.input_text}\n\n"
        f"Reference answer:\n{record.reference or '(none)'}\n\n"
        f"Answer to grade:\n{prediction}\n\n"
        "Score (1-5):"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@dataclass
class Judge:
    spec: str
    rubric: str
    timeout_s: float = 60.0

    @classmethod
    def from_spec(cls, spec: str, rubric: str | None = None) -> Judge:
        return cls(spec=spec, rubric=read_rubric(rubric))

    @property
    def is_endpoint(self) -> bool:
        return self.spec.startswith(("http://", "https://"))

    def describe(self) -> dict[str, Any]:
        return {"judge": self.spec, "rubric": self.rubric}

    def score(self, task: Task, records: list[Record], predictions: list[str]) -> list[float]:
        chats = [
            judge_prompt(task, r, p, self.rubric) for r, p in zip(records, predictions, strict=True)
        ]
        answers = self._ask_endpoint(chats) if self.is_endpoint else self._ask_local(chats)
        return [parse_score(a, f"record {r.id}") for a, r in zip(answers, records, strict=True)]

    def _endpoint(self) -> tuple[str, str]:
        url, _, model = self.spec.partition("#")
        url = url.rstrip("/")
        url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        return url, model or "judge"

    def _ask_endpoint(self, chats: list[list[dict[str, str]]]) -> list[str]:
        import httpx

        url, model = self._endpoint()
        headers = {}
        if key := os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {key}"
        answers = []
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client:
            for chat in chats:
                body = {"model": model, "messages": chat, "temperature": 0, "max_tokens": 8}
                try:
                    resp = client.post(url, json=body)
                    resp.raise_for_status()
                except httpx.HTTPStatusError as e:
                    raise JudgeError(
                        f"judge {url} answered HTTP {e.response.status_code}"
                    ) from None
                except httpx.HTTPError as e:
                    raise JudgeError(
                        f"judge {url} is unreachable: {type(e).__name__}: {e}"
                    ) from None
                try:
                    answers.append(str(resp.json()["choices"][0]["message"]["content"]))
                except (ValueError, KeyError, IndexError, TypeError):
                    raise JudgeError(
                        f"judge {url} did not answer like an OpenAI chat completion: {resp.text[:120]!r}"
                    ) from None
        return answers

    def _ask_local(self, chats: list[list[dict[str, str]]]) -> list[str]:
        from whetstone.models import base as base_models
        from whetstone.models.generate import generate

        model, tok = base_models.load(base_models.resolve(self.spec))
        return [g.text for g in generate(model, tok, chats, max_new_tokens=8)]
