"""Preference pairs in TRL's conversational format, the rows DPO / ORPO / KTO trainers read:

    {"prompt": [system, user...], "chosen": [{"role": "assistant", ...}],
     "rejected": [{"role": "assistant", ...}]}

A pair comes from a record a human corrected: chosen = the reference (the truth), rejected =
the model's output (its mistake). Records whose output already matches the reference (after
normalising, e.g. compact JSON for extract) teach no preference and are left out.

Import reads the same rows back (and TRL's standard format, with plain-text prompt / chosen /
rejected) as corrected records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from whetstone import prompts
from whetstone.formats.rows import (
    Context,
    RowError,
    chat_input,
    make_record,
    record_input_messages,
    text_input,
)
from whetstone.records import Record, Status, Task

# Records a preference pair is drawn from unless the caller names other statuses.
DEFAULT_STATUSES = (Status.corrected,)


def is_pair(task: Task, rec: Record) -> bool:
    return (
        rec.reference is not None
        and rec.output is not None
        and prompts.normalise_answer(task, rec.output) != rec.reference
    )


def preference_rows(task: Task, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for r in records:
        if not is_pair(task, r):
            continue
        yield {
            "prompt": record_input_messages(task, r),
            "chosen": [{"role": "assistant", "content": r.reference}],
            "rejected": [{"role": "assistant", "content": r.output}],
        }


def _answer(value: Any, field: str) -> Any:
    """The assistant's text of a conversational completion, or a standard-format string."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict):
            raise RowError(field, "expected a list of chat messages")
        if value[-1].get("role") != "assistant":
            raise RowError(f"{field}[{len(value) - 1}]", "the last message must be the assistant's")
        value = value[-1].get("content")
        field = f"{field}[-1].content"
    if value is None:
        raise RowError(field, "missing")
    return value


def preference_row(ctx: Context, row: dict[str, Any]) -> Record:
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise RowError(key, "missing")
    prompt = row["prompt"]
    inp = (
        chat_input(ctx.task, prompt, "prompt")
        if isinstance(prompt, list)
        else text_input(prompt, "prompt")
    )
    rejected = _answer(row["rejected"], "rejected")
    if not isinstance(rejected, str):
        raise RowError("rejected", "expected text")
    return make_record(
        ctx,
        row,
        input=inp,
        reference=_answer(row["chosen"], "chosen"),
        reference_field="chosen",
        output=rejected,
        status=Status.corrected,
        meta={k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")},
    )
