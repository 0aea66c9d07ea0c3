"""Row → Record conversion shared by every format: input from text or chat messages, the
reference checked against the task's rules, status / source defaults, the dedup key.

A reader turns one source row into keyword fields and calls `make_record`; anything wrong
with the row is a `RowError` naming the field, which the reader turns into a `Rejected`
that names the file and line (or row index) as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from whetstone import prompts
from whetstone.errors import InvalidInput, from_validation
from whetstone.records import (
    Input,
    Kind,
    Message,
    Record,
    Source,
    Status,
    Task,
    canonical_json,
    content_key,
)


class RowError(Exception):
    """One row is unusable; `field` says which part of it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class Rejected:
    """A row that was not imported, with where it came from and why."""

    where: str  # "data.jsonl:3" or "data.parquet: row 2"
    field: str
    reason: str
    row: Any

    @property
    def message(self) -> str:
        return f"{self.where}: {self.field}: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"where": self.where, "field": self.field, "error": self.reason, "row": self.row}


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    format: str = ""
    # Rows left out on purpose, not errors: a label value outside `--label-map`.
    skipped: int = 0
    # What the import decided for the user, to report (an instruction or labels it set).
    notes: list[str] = field(default_factory=list)
    # For a task that declared none: the instruction and labels the file implies.
    instruction: str | None = None
    labels: list[str] | None = None


@dataclass
class Context:
    """What every row of one file is read with."""

    task: Task
    fmt: str
    path: Path
    source: Source | None = None  # overrides the file's source column
    status: Status | None = None  # overrides the file's status column

    def reject(self, where: str, err: RowError, row: Any) -> Rejected:
        return Rejected(where=where, field=err.field, reason=err.reason, row=row)


def make_record(
    ctx: Context,
    key_content: Any,
    *,
    input: Input,
    reference: Any = None,
    reference_field: str = "reference",
    status: Any = None,
    source: Any = None,
    source_key: str | None = None,
    **fields: Any,
) -> Record:
    """Build a validated Record of `ctx.task` from one row's fields.

    An imported reference is ground truth, so a row with one is `accepted` unless the file
    (or the caller) says otherwise; `key_content` is the source row, hashed into
    `source_key` so that importing the same file twice adds nothing."""
    ref = check_reference(ctx.task, reference, reference_field)
    st = _status(ctx.status or status, ref)
    src = _enum(Source, ctx.source or source or Source.imported, "source")
    data = {
        **{k: v for k, v in fields.items() if v is not None},
        "task": ctx.task.name,
        "input": input,
        "reference": ref,
        "status": st,
        "source": src,
        "source_key": source_key or content_key(ctx.fmt, key_content),
    }
    try:
        return Record.model_validate(data)
    except ValidationError as e:
        bad = from_validation(e)
        raise RowError(bad.field or "(row)", bad.reason) from None


def check_reference(task: Task, value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        # An extract answer may come as a JSON object rather than a JSON string.
        if task.kind == Kind.extract and isinstance(value, (dict, list)):
            value = canonical_json(value)
        else:
            raise RowError(field, f"expected text, got {type(value).__name__}")
    try:
        return task.check_reference(value, where=field)
    except InvalidInput as e:
        reason = str(e)
        prefix = f"{field}: "
        raise RowError(
            field, reason[len(prefix) :] if reason.startswith(prefix) else reason
        ) from None


def _status(value: Any, reference: str | None) -> Status:
    if value is None:
        return Status.accepted if reference is not None else Status.unreviewed
    st = _enum(Status, value, "status")
    if st in (Status.accepted, Status.corrected) and reference is None:
        raise RowError("reference", f"missing: a record with status {st.value} needs one")
    return st


def _enum(enum: Any, value: Any, field: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise RowError(field, f"{value!r} is not one of {choices}") from None


def chat_input(task: Task, value: Any, field: str) -> Input:
    """The input of a record from chat messages.

    A leading system message equal to the task's instruction is dropped, since every export
    and every prompt adds it back from the task; a lone user message becomes plain text.
    So a record exported to a chat format and imported again has the same input."""
    if not isinstance(value, list) or not value:
        raise RowError(field, "expected a non-empty list of chat messages")
    msgs: list[Message] = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, "expected an object with role and content")
        if not isinstance(m.get("content"), str):
            raise RowError(f"{where}.content", "missing or not text")
        try:
            msgs.append(Message.model_validate(m))
        except ValidationError as e:
            bad = from_validation(e, section=where)
            raise RowError(bad.field, bad.reason) from None
    if msgs[0].role == "system" and msgs[0].content == prompts.instruction(task):
        msgs = msgs[1:]
    if not msgs:
        raise RowError(field, "holds only the system prompt, no input")
    if (
        len(msgs) == 1
        and msgs[0].role == "user"
        and set(msgs[0].model_dump())
        == {
            "role",
            "content",
        }
    ):
        return msgs[0].content
    return msgs


def text_input(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(field, "missing" if value is None else "expected text")
    if not value.strip():
        raise RowError(field, "empty")
    return value


def record_input_messages(task: Task, rec: Record) -> list[dict[str, Any]]:
    """The chat a record's input becomes in exports: task instruction as system prompt, then
    the input, with any extra message fields (name, tool_call_id) kept."""
    if isinstance(rec.input, str):
        msgs: list[dict[str, Any]] = [{"role": "user", "content": rec.input}]
    else:
        msgs = [m.model_dump(exclude_none=True) for m in rec.input]
    if not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": prompts.instruction(task)}, *msgs]
    return msgs


def json_value(value: Any, field: str, kind: type) -> Any:
    """A nested value a flat format holds as JSON text (CSV cells, Parquet string columns)."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(field, f"not valid JSON ({e.msg})") from None
        if isinstance(parsed, kind):
            return parsed
    raise RowError(field, f"expected a JSON {kind.__name__}")
