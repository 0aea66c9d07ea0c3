"""How a task's record becomes the chat a model sees. Training, evaluation and serving all
build prompts here, so a model is always asked the same way it was taught."""

from __future__ import annotations

import json
import re
import string
from typing import Any

from whetstone.records import Input, Kind, Task, input_text, to_messages

_PUNCT = set(string.punctuation)


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


def answer_text(task: Task, inp: Input, reference: str) -> str:
    """The assistant turn a model is taught to write for `reference`. For extract tasks the
    keys come in the order their values appear in the input, not in the stored (sorted) order:
    a small model then copies the input left to right instead of also having to sort the
    keys, which costs it whole-object exact matches. Answers are compared after
    `normalise_answer`, so the order never changes a score."""
    if task.kind != Kind.extract:
        return reference
    try:
        obj = json.loads(reference)
    except json.JSONDecodeError:
        return reference
    if not isinstance(obj, dict):
        return reference
    text = input_text(inp)

    def position(item: tuple[str, object]) -> int:
        value = item[1]
        if not isinstance(value, str) or not value:
            return len(text)
        # A whole-word match first, so a short value ("N") is not found inside a longer word.
        word = re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text)
        found = word.start() if word else text.find(value)
        return found if found >= 0 else len(text)

    # sorted() is stable: keys whose values start at the same place keep their stored order.
    ordered = dict(sorted(obj.items(), key=position))
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))


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


# ---------------------------------------------------------------- the task's own checks
# Here, below every stage, because evaluation scores with them, calibration counts them and
# the server's cascade escalates on them: one rule for all three.


def normalise_label(s: str) -> str:
    """Labels compare without case, surrounding/inner whitespace runs or punctuation, so
    'Positive.' maps to 'positive' but 'not positive' does not."""
    s = "".join(ch for ch in s.casefold() if ch not in _PUNCT)
    return " ".join(s.split())


def map_label(answer: str, labels: list[str]) -> str | None:
    """The task label an answer names, or None when it names none of them."""
    key = normalise_label(answer)
    for label in labels:
        if normalise_label(label) == key:
            return label
    return None


def schema_valid(task: Task, obj: Any) -> bool:
    """Whether an extract answer's parsed JSON keeps the task's schema (no schema: any)."""
    if not task.schema_:
        return True
    import jsonschema

    return jsonschema.Draft202012Validator(task.schema_).is_valid(obj)


def answer_fails_checks(task: Task, text: str) -> str | None:
    """Why a model's answer fails the task's own checks, or None when it passes: a classify
    answer that names none of the declared labels, an extract answer that is not one JSON
    object or breaks the task's schema. Generate tasks, and classify tasks without declared
    labels, have no checks. A cascade escalates such an answer whatever its confidence."""
    shown = text.strip()
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    if task.kind == Kind.classify:
        if task.labels and map_label(text, list(task.labels)) is None:
            return f"{shown!r} is not one of the task's labels"
        return None
    if task.kind == Kind.extract:
        try:
            obj = json.loads(text.strip())
        except (json.JSONDecodeError, TypeError, ValueError):
            return f"{shown!r} is not JSON"
        if not isinstance(obj, dict):
            return f"{shown!r} is not a JSON object"
        if not schema_valid(task, obj):
            return "the answer breaks the task's schema"
    return None
