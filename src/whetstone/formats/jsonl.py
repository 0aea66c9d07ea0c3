"""The JSON Lines dialects: OpenAI chat fine-tuning, OpenAI evals, instruction (Alpaca) and
Whetstone's own records (`jsonl`, lossless).

- openai: `{"messages": [...]}`; the last message is the assistant's answer (the reference),
  the ones before it the input. Export writes the task instruction as the system message;
  import drops a leading system message equal to it (see `rows.chat_input`). Export writes
  only `messages`, the keys fine-tuning services accept, so meta stays behind.
- evals: `{"input": [messages] | text, "ideal": text | [texts]}`; the first ideal is the
  reference, the others stay in `meta["ideal_alternatives"]`.
- instruction: `{"instruction", "input", "output"}`; the record's input is the instruction and
  the input joined by a blank line, or the input alone when the instruction is the task's
  own; output is the reference. Chat inputs export as their last user turn.
- jsonl: every field of a Record, as `Record.model_dump`; import keeps all but `id` and `task`.

Top-level keys a dialect does not know are kept in the record's meta (and written back as
top-level keys by the evals and instruction exports).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from whetstone import prompts
from whetstone.formats.rows import (
    Context,
    ReadResult,
    RowError,
    chat_input,
    make_record,
    record_input_messages,
    text_input,
)
from whetstone.records import Record, Task
from whetstone.storable import find_unstorable, loads_json

RowReader = Callable[[Context, dict[str, Any]], Record]


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError, str]]:
    """(1-based line number, parsed object or RowError, raw line) for each non-blank line.
    A line the store could not hold (a NUL, a lone surrogate) is a RowError here, before any
    reader sees it, so that the rejects file keeps the line as it was."""
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            err = None
            try:
                obj = loads_json(line)
            except json.JSONDecodeError as e:
                err = RowError("(line)", f"not valid JSON ({e.msg} at column {e.colno})")
            except ValueError as e:  # nested too deep
                err = RowError("(line)", str(e))
            else:
                if not isinstance(obj, dict):
                    err = RowError("(line)", f"expected a JSON object, got {type(obj).__name__}")
                elif (bad := find_unstorable(obj)) is not None:
                    err = RowError(bad.field, bad.reason)
            if err is not None:
                yield n, err, line.rstrip("\n")
                continue
            yield n, obj, line


def read(path: Path, ctx: Context, convert: RowReader) -> ReadResult:
    result = ReadResult(format=ctx.fmt)
    for n, obj, raw in iter_lines(path):
        where = f"{path}:{n}"
        if isinstance(obj, RowError):
            # The rejects file keeps the line as it was, so it can be fixed and re-imported.
            result.rejected.append(ctx.reject(where, obj, raw))
            continue
        try:
            result.records.append(convert(ctx, obj))
        except RowError as e:
            result.rejected.append(ctx.reject(where, e, obj))
    return result


def _extras(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in known}


# ---- readers ------------------------------------------------------------------------------
def openai_row(ctx: Context, row: dict[str, Any]) -> Record:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RowError("messages", "missing or not a list of chat messages")
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise RowError(f"messages[{len(msgs) - 1}]", "the last message must be the assistant's")
    if len(msgs) < 2:
        raise RowError("messages", "no input before the assistant's answer")
    answer_field = f"messages[{len(msgs) - 1}].content"
    if last.get("content") is None:
        raise RowError(answer_field, "missing")
    return make_record(
        ctx,
        row,
        input=chat_input(ctx.task, msgs[:-1], "messages"),
        reference=last["content"],
        reference_field=answer_field,
        meta=_extras(row, {"messages"}),
    )


def evals_row(ctx: Context, row: dict[str, Any]) -> Record:
    if "input" not in row:
        raise RowError("input", "missing")
    inp = row["input"]
    inp = chat_input(ctx.task, inp, "input") if isinstance(inp, list) else text_input(inp, "input")
    ideal = row.get("ideal")
    meta = _extras(row, {"input", "ideal"})
    if isinstance(ideal, list):
        if not ideal:
            raise RowError("ideal", "an empty list")
        if len(ideal) > 1:
            meta["ideal_alternatives"] = ideal[1:]
        ideal = ideal[0]
    if ideal is None:
        raise RowError("ideal", "missing")
    return make_record(ctx, row, input=inp, reference=ideal, reference_field="ideal", meta=meta)


def instruction_row(ctx: Context, row: dict[str, Any]) -> Record:
    instr = row.get("instruction") or ""
    text = row.get("input") or ""
    if not isinstance(instr, str):
        raise RowError("instruction", "expected text")
    if not isinstance(text, str):
        raise RowError("input", "expected text")
    if "output" not in row:
        raise RowError("output", "missing")
    if instr.strip() == prompts.instruction(ctx.task).strip():
        instr = ""
    joined = "\n\n".join(p for p in (instr.strip(), text) if p.strip())
    return make_record(
        ctx,
        row,
        input=text_input(joined, "input"),
        reference=row["output"],
        reference_field="output",
        meta=_extras(row, {"instruction", "input", "output"}),
    )


# Record fields a lossless import takes from the file (`id` and `task` are the target's).
RECORD_FIELDS = set(Record.model_fields) - {"id", "task"}


def whetstone_row(ctx: Context, row: dict[str, Any]) -> Record:
    if "input" not in row:
        raise RowError("input", "missing")
    inp = row["input"]
    # Keep a stored chat input as it was: a lossless restore must not rewrite it.
    if not isinstance(inp, (str, list)):
        raise RowError("input", "expected text or a list of chat messages")
    fields = {k: row[k] for k in RECORD_FIELDS & set(row) if k not in ("input", "reference")}
    unknown = _extras(row, RECORD_FIELDS | {"id", "task"})
    if unknown:
        meta = fields.get("meta") or {}
        if not isinstance(meta, dict):
            raise RowError("meta", "expected an object")
        fields["meta"] = {**meta, **unknown}
    return make_record(ctx, row, input=inp, reference=row.get("reference"), **fields)


READERS: dict[str, RowReader] = {
    "openai": openai_row,
    "evals": evals_row,
    "instruction": instruction_row,
    "jsonl": whetstone_row,
}


# ---- writers ------------------------------------------------------------------------------
def openai_rows(task: Task, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for r in records:
        msgs = record_input_messages(task, r)
        # Meta stays out: fine-tuning services accept only the chat (and tool) keys.
        yield {"messages": [*msgs, {"role": "assistant", "content": r.reference}]}


def evals_rows(task: Task, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for r in records:
        meta = dict(r.meta)
        alternatives = meta.pop("ideal_alternatives", None)
        ideal: Any = [r.reference, *alternatives] if isinstance(alternatives, list) else r.reference
        yield {**meta, "input": record_input_messages(task, r), "ideal": ideal}


def instruction_rows(task: Task, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for r in records:
        yield {
            **r.meta,
            "instruction": prompts.instruction(task),
            "input": r.input_text,
            "output": r.reference,
        }


def whetstone_rows(task: Task, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for r in records:
        yield r.model_dump(mode="json")


WRITERS = {
    "openai": openai_rows,
    "evals": evals_rows,
    "instruction": instruction_rows,
    "jsonl": whetstone_rows,
}


def render(rows: Iterable[dict[str, Any]]) -> tuple[str, int]:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    return "".join(lines), len(lines)
