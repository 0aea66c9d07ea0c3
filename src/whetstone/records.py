"""The Task / Record model: the vocabulary every stage of the loop speaks.

A Record is one input a model saw, what the model said (`output`, never overwritten once set)
and the ground truth (`reference`) a human, an import or a teacher supplied. A record whose
output differs from its reference *is* a training example: input, the model's error, the truth.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from whetstone.errors import InvalidInput
from whetstone.storable import Unstorable, find_unstorable


class Kind(str, Enum):
    generate = "generate"
    classify = "classify"
    extract = "extract"


class Status(str, Enum):
    unreviewed = "unreviewed"
    accepted = "accepted"
    corrected = "corrected"
    rejected = "rejected"


class Source(str, Enum):
    production = "production"
    imported = "import"
    teacher = "teacher"
    synthetic = "synthetic"
    evaluation = "evaluation"


DEFAULT_METRIC = {Kind.generate: "exact_match", Kind.classify: "accuracy", Kind.extract: "field_f1"}

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


Input = str | list[Message]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Task(BaseModel):
    name: str
    kind: Kind
    instruction: str | None = None
    labels: list[str] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    metric: str | None = None
    created_at: datetime = Field(default_factory=utcnow)

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TASK_NAME.match(v):
            raise ValueError(
                "task names use letters, digits, '_', '.', '-' (at most 64) and start with a "
                f"letter or digit: {v!r}"
            )
        return v

    @property
    def main_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[self.kind]

    def check_reference(self, reference: str, where: str = "reference") -> str:
        """Validate a reference against the task (label set, JSON schema) and return it
        in canonical form; raise InvalidInput naming `where` otherwise."""
        if self.kind == Kind.classify and self.labels:
            ref = reference.strip()
            if ref not in self.labels:
                raise InvalidInput(
                    f"{where}: label {ref!r} is not one of the task's labels {self.labels}"
                )
            return ref
        if self.kind == Kind.extract:
            try:
                obj = json.loads(reference)
            except (json.JSONDecodeError, TypeError) as e:
                raise InvalidInput(f"{where}: not valid JSON ({e})") from None
            if self.schema_:
                import jsonschema

                try:
                    jsonschema.validate(obj, self.schema_)
                except jsonschema.ValidationError as e:
                    path = "/".join(str(p) for p in e.absolute_path) or "(root)"
                    raise InvalidInput(
                        f"{where}: fails the task schema at {path}: {e.message}"
                    ) from None
            return canonical_json(obj)
        return reference


class Correction(BaseModel):
    """One event in a record's review history. Never edited or deleted."""

    reference: str | None = None
    status: Status
    error_category: str | None = None
    annotator: str | None = None
    comment: str | None = None
    rating: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Record(BaseModel):
    id: int | None = None
    task: str
    input: Input
    output: str | None = None
    reference: str | None = None
    status: Status = Status.unreviewed
    error_category: str | None = None
    source: Source = Source.production
    model: str | None = None
    confidence: float | None = None
    tags: list[str] = Field(default_factory=list)
    annotator: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    source_key: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    history: list[Correction] = Field(default_factory=list)

    @property
    def input_text(self) -> str:
        """The user's text: the input string, or the last user turn of a chat input."""
        return input_text(self.input)

    def messages(self, instruction: str | None = None) -> list[dict[str, str]]:
        """The chat the model sees: task instruction as system prompt, then the input."""
        return to_messages(self.input, instruction)

    def unstorable(self) -> Unstorable | None:
        """The first text in this record the store cannot hold (a NUL, a lone surrogate),
        named by its field (`input[0].content`, `meta.note`), or None."""
        return find_unstorable(self.model_dump(exclude={"id", "created_at", "updated_at"}))


# Answers a model (the hero as teacher) wrote rather than a person or an imported dataset.
MODEL_SOURCES = frozenset({Source.teacher, Source.synthetic})
# The tag of a record whose teacher samples disagreed: it needs a person's label, first.
TEACHER_DISAGREED = "teacher-disagreed"


def human_reference(record: Record) -> bool:
    """The record's reference is ground truth a person or an imported dataset gave: the only
    kind a model may be evaluated or gated on. A teacher's label (source teacher/synthetic)
    counts once a person confirmed or corrected it; before that it may only be trained on."""
    if record.reference is None or record.status == Status.rejected:
        return False
    if record.source in MODEL_SOURCES:
        return record.status in (Status.accepted, Status.corrected)
    return True


def input_text(inp: Input) -> str:
    if isinstance(inp, str):
        return inp
    for m in reversed(inp):
        if m.role == "user":
            return m.content
    return inp[-1].content if inp else ""


def to_messages(inp: Input, instruction: str | None = None) -> list[dict[str, str]]:
    if isinstance(inp, str):
        msgs = [{"role": "user", "content": inp}]
    else:
        msgs = [{"role": m.role, "content": m.content} for m in inp]
    if instruction and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": instruction}, *msgs]
    return msgs


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def input_to_json(inp: Input) -> str:
    if isinstance(inp, str):
        return json.dumps(inp, ensure_ascii=False)
    return json.dumps([m.model_dump(exclude_none=True) for m in inp], ensure_ascii=False)


def input_from_json(raw: str) -> Input:
    val = json.loads(raw)
    if isinstance(val, str):
        return val
    return [Message.model_validate(m) for m in val]


def content_key(*parts: Any) -> str:
    """A stable hash of a source row, so that re-importing the same file adds nothing."""
    h = hashlib.sha256()
    for p in parts:
        h.update(canonical_json(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]
