"""How a task's record becomes the chat a model sees. Training, evaluation and serving all
build prompts here, so a model is always asked the same way it was taught."""

from __future__ import annotations

import json

from whetstone.records import Input, Kind, Task, to_messages


def instruction(task: Task) -> str:
    if task.instruction:
        return task.instruction
    if task.kind == Kind.classify:
        return "Answer with exactly one of these labels: " + ", ".join(task.labels or []) + "."
    if task.kind == Kind.extract:
        fields = list((task.schema_ or {}).get("properties", {}))
        keys = f" Use only these keys: {', '.join(fields)}." if fields else ""
        return "Extract the information as one JSON object on a single line." + keys
    return "You are a helpful assistant."


def chat(task: Task, inp: Input) -> list[dict[str, str]]:
    return to_messages(inp, instruction(task))


def normalise_answer(task: Task, text: str) -> str:
    """The canonical form of a model's answer: compact JSON for extract when it parses."""
    text = text.strip()
    if task.kind == Kind.extract:
        try:
            return json.dumps(
                json.loads(text), ensure_ascii=False, sort_keys=True, separators=(",", ":")
            )
        except (json.JSONDecodeError, TypeError):
            return text
    return text
