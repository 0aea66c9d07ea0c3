"""Import and export records in the formats other tools speak.

    from whetstone import formats
    read = formats.read_file("train.jsonl", task)            # parse + validate, no writes
    report = formats.import_file(project, "train.jsonl", "addresses")
    n = formats.export_records(project, "addresses", "openai", "out.jsonl")

Import is all or nothing: one bad row (bad JSON, a missing field, a label outside the task's
set, a reference failing the task's schema) adds nothing, and the error names the file, the
line (or row) and the field. `skip_invalid=True` imports the good rows and writes the bad
ones, with reasons, to a JSONL file. Every record carries a hash of its source row, so
importing the same file again adds nothing.

Formats: see `jsonl` (openai, evals, instruction, jsonl), `tabular` (csv, parquet, hf) and
`preference`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.formats import jsonl, preference, tabular
from whetstone.formats.detect import EXPORT_FORMATS, IMPORT_FORMATS, detect
from whetstone.formats.rows import Context, ReadResult, Rejected
from whetstone.records import Kind, Record, Source, Status, Task
from whetstone.util import atomic_write_text, check_target, user_target, write_jsonl

if TYPE_CHECKING:
    from whetstone.project import Project

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "ImportReport",
    "ReadResult",
    "Rejected",
    "detect",
    "export_records",
    "import_file",
    "read_file",
]

# Formats whose rows are training examples, so a record without a reference has no row.
NEEDS_REFERENCE = {"openai", "evals", "instruction", "preference"}
# Formats that hold every field of a record, history included.
FULL_RECORD = {"jsonl", "csv", "parquet", "hf"}


@dataclass
class ImportReport:
    path: Path
    format: str
    added: int
    duplicates: int
    rejected: int
    rejected_path: Path | None = None
    # Rows left out on purpose (a label value outside --label-map), and what the import
    # decided for the user (the instruction or labels it gave the task, prompts it kept).
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


def _choice(value: Any, enum: Any, what: str) -> Any:
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise InvalidInput(f"unknown {what} {value!r} (choose from {choices})") from None


def read_file(
    path: str | os.PathLike[str],
    task: Task,
    fmt: str = "auto",
    *,
    input_col: str | None = None,
    reference_col: str | None = None,
    source: Source | str | None = None,
    status: Status | str | None = None,
    label_map: dict[str, str] | None = None,
) -> ReadResult:
    """Parse and validate every row of `path` as records of `task`; write nothing.
    `source` / `status` override what the file says; `input_col` / `reference_col` map the
    columns of csv, parquet and hf files, and `label_map` (raw value -> label) their
    reference values, skipping rows with another value.

    Tasks as users bring them: a task without an instruction takes a chat file's first
    system prompt as its own, and a classify task without labels the references' distinct
    values; both are said in `notes`, as are system prompts that differ from the
    instruction (kept in their records' input). `import_file` stores what was decided."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file or folder")
    try:
        fmt = detect(path) if fmt == "auto" else fmt
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if fmt not in IMPORT_FORMATS:
        raise InvalidInput(
            f"unknown import format {fmt!r} (choose from auto, {', '.join(IMPORT_FORMATS)})"
        )
    if (input_col or reference_col or label_map) and fmt not in ("csv", "parquet", "hf"):
        raise InvalidInput(
            f"--input-col / --reference-col / --label-map apply to csv, parquet and hf, not {fmt}"
        )
    system_prompt = _file_instruction(path, fmt, task)
    if system_prompt is not None:
        # Read with it as the instruction, so rows carrying it drop it (rows.chat_input).
        task = task.model_copy(update={"instruction": system_prompt})
    ctx = Context(
        task=task,
        fmt=fmt,
        path=path,
        source=_choice(source, Source, "source"),
        status=_choice(status, Status, "status"),
    )
    try:
        if fmt in jsonl.READERS:
            read = jsonl.read(path, ctx, jsonl.READERS[fmt])
        elif fmt == "preference":
            read = jsonl.read(path, ctx, preference.preference_row)
        else:
            cols = tabular.Columns.of(input_col, reference_col, label_map)
            readers = {
                "csv": tabular.read_csv,
                "parquet": tabular.read_parquet,
                "hf": tabular.read_hf,
            }
            read = readers[fmt](path, ctx, cols)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: a folder; only the hf format reads folders") from None
    if system_prompt is not None:
        read.instruction = system_prompt
        read.notes.append(
            "task instruction set from the file's system prompt: "
            + json.dumps(_short(system_prompt), ensure_ascii=False)
        )
    _note_other_system_prompts(read)
    _infer_labels(task, read)
    return read


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _file_instruction(path: Path, fmt: str, task: Task) -> str | None:
    """A chat file's first system prompt, when the task has no instruction of its own."""
    if fmt not in ("openai", "evals") or task.instruction:
        return None
    try:
        return _first_system_prompt(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _first_system_prompt(path: Path) -> str | None:
    """The first leading system message of a chat file's rows (openai `messages`, evals
    `input`), or None when no row starts with one."""
    for _, row, _ in jsonl.iter_lines(path):
        msgs = row.get("messages", row.get("input")) if isinstance(row, dict) else None
        first = msgs[0] if isinstance(msgs, list) and msgs else None
        if isinstance(first, dict) and first.get("role") == "system":
            text = first.get("content")
            if isinstance(text, str) and text.strip():
                return text
    return None


def _note_other_system_prompts(read: ReadResult) -> None:
    """Say how many records keep a system prompt of their own: one that differs from the
    task's instruction stays first in the record's input rather than being dropped, and the
    user should know the file mixes prompts."""
    differing = [
        r.input[0].content
        for r in read.records
        if isinstance(r.input, list) and r.input and r.input[0].role == "system"
    ]
    if differing:
        n = len(differing)
        read.notes.append(
            f"{n} row{'s carry' if n > 1 else ' carries'} a system prompt that differs from the "
            "task's "
            "instruction; kept as the first message of their input (first: "
            f"{json.dumps(_short(differing[0]), ensure_ascii=False)})"
        )


def _infer_labels(task: Task, read: ReadResult) -> None:
    """A classify task without labels takes the distinct references as its label set."""
    if task.kind != Kind.classify or task.labels:
        return
    labels = sorted({r.reference.strip() for r in read.records if r.reference is not None})
    if labels:
        read.labels = labels
        read.notes.append("task labels set from the references: " + ", ".join(labels))


def _not_utf8(path: Path) -> InvalidInput:
    """The first bytes of `path` that are not UTF-8, by line and byte offset. Found again here
    because the decoder's own offset counts from the chunk it was decoding, not the file."""
    offset = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):  # "\n" is never part of a multi-byte character
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return InvalidInput(
                    f"{path}:{n}: not UTF-8 text ({e.reason} at byte {offset + e.start})"
                )
            offset += len(line)
    return InvalidInput(f"{path}: not UTF-8 text")


def rejected_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".rejected.jsonl")


def import_file(
    project: Project,
    path: str | os.PathLike[str],
    task: str | Task,
    fmt: str = "auto",
    *,
    skip_invalid: bool = False,
    rejected_out: str | os.PathLike[str] | None = None,
    input_col: str | None = None,
    reference_col: str | None = None,
    source: Source | str | None = None,
    status: Status | str | None = None,
    label_map: dict[str, str] | None = None,
) -> ImportReport:
    """Import `path` into `task` in one transaction. Any bad row aborts the whole import
    unless `skip_invalid`, which writes the bad rows to `rejected_out` (default: beside the
    input, `<name>.rejected.jsonl`). An instruction or labels the file implies for a task
    that declared none (see `read_file`) are stored on the task once the rows are in."""
    t = project.task(task) if isinstance(task, str) else task
    path = Path(path)
    read = read_file(
        path,
        t,
        fmt,
        input_col=input_col,
        reference_col=reference_col,
        source=source,
        status=status,
        label_map=label_map,
    )
    rejected_file = None
    if read.rejected:
        if not skip_invalid:
            first = read.rejected[0].message
            more = len(read.rejected) - 1
            tail = f" (and {more} more bad row{'s' if more > 1 else ''})" if more else ""
            raise InvalidInput(
                f"{first}{tail}; nothing was imported (--skip-invalid imports the good rows)"
            )
        rejected_file = Path(rejected_out) if rejected_out else rejected_path_for(path)
        write_jsonl(rejected_file, [jsonl_safe(r.as_json()) for r in read.rejected])
    ids = project.store.add_records(read.records)
    added = sum(1 for i in ids if i is not None)
    if read.instruction is not None or read.labels is not None:
        project.store.update_task(t.name, instruction=read.instruction, labels=read.labels)
    return ImportReport(
        path=path,
        format=read.format,
        added=added,
        duplicates=len(ids) - added,
        rejected=len(read.rejected),
        rejected_path=rejected_file,
        skipped=read.skipped,
        notes=read.notes,
    )


def parse_label_map(text: str | None) -> dict[str, str] | None:
    """`--label-map fresh=1,rotten=0` as {raw value: label}: each item is LABEL=VALUE, the
    label a reference takes for a raw value in the reference column. A label may take
    several values (`pos=1,pos=yes`); a value may name one label only."""
    if text is None:
        return None
    mapping: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        label, sep, value = (p.strip() for p in item.partition("="))
        if not item or not sep or not label or not value:
            raise InvalidInput(f"--label-map: {item!r} is not LABEL=VALUE (e.g. fresh=1,rotten=0)")
        if mapping.get(value, label) != label:
            raise InvalidInput(
                f"--label-map: value {value!r} maps to both {mapping[value]!r} and {label!r}"
            )
        mapping[value] = label
    return mapping


def jsonl_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def select(
    project: Project, task: Task, fmt: str, statuses: Sequence[Status | str] | None
) -> Iterable[Record]:
    """The records an export writes. By default: those with a reference that were not
    rejected (corrected ones for preference pairs). Naming statuses selects exactly those,
    and the full-record formats then include records without a reference too."""
    if statuses:
        wanted = [_choice(s, Status, "status") for s in statuses]
        has_ref = True if fmt in NEEDS_REFERENCE else None
        return project.store.iter_records(
            task.name, status=[s.value for s in wanted], has_reference=has_ref
        )
    if fmt == "preference":
        wanted = list(preference.DEFAULT_STATUSES)
    else:
        wanted = [s for s in Status if s != Status.rejected]
    return project.store.iter_records(
        task.name, status=[s.value for s in wanted], has_reference=True
    )


def snapshot_splits(project: Project, task: Task) -> dict[int, str]:
    """Record id -> split in the task's latest snapshot (empty when it has none): how an hf
    export splits its records."""
    from whetstone.store import snapshots as stored_snaps

    latest = stored_snaps.latest_snapshot_id(project.store, task.name)
    if latest is None:
        return {}
    _, members = stored_snaps.snapshot_row(project.store, latest)
    return {rid: split for rid, split, _ in members}


def export_records(
    project: Project,
    task: str | Task,
    fmt: str,
    out: str | os.PathLike[str],
    statuses: Sequence[Status | str] | None = None,
    *,
    force: bool = False,
) -> int:
    """Write the task's records to `out` in `fmt`, atomically; returns the number of rows.
    `out` must not exist (an empty folder for hf); `force` replaces a file, or an hf folder
    an earlier export wrote. hf writes a `DatasetDict` split as the task's latest snapshot
    (`tabular.write_hf`)."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(
            f"unknown export format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})"
        )
    t = project.task(task) if isinstance(task, str) else task
    out = Path(out)
    check_target(out, folder=fmt == "hf", replace=user_target(force))
    records = select(project, t, fmt, statuses)
    if fmt in FULL_RECORD:
        # Lossless formats carry each record's review history, which listing leaves out.
        records = (project.store.get_record(r.id) for r in records if r.id is not None)
    if fmt == "csv":
        return tabular.write_csv(out, records)
    if fmt == "parquet":
        return tabular.write_parquet(out, records)
    if fmt == "hf":
        return tabular.write_hf(
            out,
            records,
            splits=snapshot_splits(project, t),
            extract=t.kind == Kind.extract,
            replace=user_target(force),
        )
    rows = (
        preference.preference_rows(t, records)
        if fmt == "preference"
        else jsonl.WRITERS[fmt](t, records)
    )
    text, n = jsonl.render(rows)
    atomic_write_text(out, text)
    return n
