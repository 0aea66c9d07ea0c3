"""Tables: CSV, Parquet and Hugging Face `datasets` folders (written by `save_to_disk`).

All three share one set of columns, those of a Whetstone record flattened:

    id, task, input, messages, reference, output, status, source, tags, meta,
    error_category, model, confidence, annotator, source_key, created_at, updated_at, history

`input` is always the user's text; a chat input is kept whole in `messages` (JSON text),
which wins over `input` on import. `meta` and `history` are JSON text, `tags` a list of
strings (a comma list in CSV).

A datasets folder (`write_hf`) is a `DatasetDict` of the task's latest snapshot splits
(train, validation, test; records outside that snapshot in `unsplit`) with real nested
columns: `messages` a list of {role, content, ...}, `history` a list of review events, an
extract task's `reference` an object (a struct: a key a row lacks reads as null, and import
drops null keys). `meta` stays JSON text: each record's meta holds keys and value types of
its own, which no one column type holds without changing them. Import maps the input and reference columns by name
(`input_col`, `reference_col`); any column it does not know goes into the record's meta.
A `messages` column from elsewhere that ends with the assistant's answer, in a row with no
reference, is read the way the OpenAI chat format is: that answer is the reference.

Where a row is wrong the error names the line for CSV (1-based, the header is line 1) and
the 0-based row index for Parquet and datasets folders.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput
from whetstone.formats.rows import (
    Context,
    ReadResult,
    RowError,
    chat_input,
    json_value,
    make_record,
    text_input,
)
from whetstone.records import Record
from whetstone.storable import find_unstorable
from whetstone.util import Replace, atomic_dir, atomic_write_bytes, atomic_write_text

COLUMNS = [
    "id",
    "task",
    "input",
    "messages",
    "reference",
    "output",
    "status",
    "source",
    "tags",
    "meta",
    "error_category",
    "model",
    "confidence",
    "annotator",
    "source_key",
    "created_at",
    "updated_at",
    "history",
]


@dataclass
class Columns:
    """Which columns hold the input and the reference."""

    input: str = "input"
    reference: str = "reference"
    # A reference column the user named must exist; the default one may be absent
    # (a file of unlabelled inputs).
    reference_required: bool = False
    # Raw reference value -> label (`--label-map fresh=1,rotten=0`); rows whose value is
    # not in it are skipped and counted, not rejected: the user chose which values to keep.
    label_map: dict[str, str] | None = None

    @classmethod
    def of(
        cls,
        input_col: str | None,
        reference_col: str | None,
        label_map: dict[str, str] | None = None,
    ) -> Columns:
        return cls(
            input_col or "input",
            reference_col or "reference",
            reference_col is not None or bool(label_map),
            label_map,
        )

    def mapped(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The row with its reference mapped through `label_map`, or None to skip it."""
        if self.label_map is None:
            return row
        raw = row.get(self.reference)
        label = self.label_map.get(str(raw).strip()) if raw is not None else None
        return None if label is None else {**row, self.reference: label}

    def check(self, where: str, names: list[str]) -> None:
        have = ", ".join(names)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InvalidInput(f"{where}: column {dup!r} appears twice")
        if self.input not in names and "messages" not in names:
            raise InvalidInput(
                f"{where}: {self.input}: no such column (columns: {have}); name the input "
                "column with --input-col"
            )
        if self.reference_required and self.reference not in names:
            raise InvalidInput(f"{where}: {self.reference}: no such column (columns: {have})")


def jsonable(value: Any) -> Any:
    """A row as plain JSON values (Parquet cells may be datetimes, bytes, ...)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _tags(value: Any) -> list[str] | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise RowError("tags", "expected a comma list or a list of strings")


def _confidence(value: Any) -> float | None:
    if _blank(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RowError("confidence", f"{value!r} is not a number") from None


def _without_nulls(value: Any) -> Any:
    """A struct cell as the object it was written from: Arrow gives every row every field
    of the struct, null where the row's object had no such key."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def table_row(ctx: Context, row: dict[str, Any], cols: Columns) -> Record:
    def cell(name: str) -> Any:
        v = row.get(name)
        return None if _blank(v) else v

    reference = _without_nulls(cell(cols.reference))
    reference_field = cols.reference
    msgs_col = None if cols.input == "messages" else cell("messages")
    raw = row.get(cols.input)
    if msgs_col is not None or isinstance(raw, list) or cols.input == "messages":
        field = "messages" if msgs_col is not None else cols.input
        msgs = json_value(msgs_col if msgs_col is not None else raw, field, list)
        if msgs is None:
            raise RowError(field, "missing")
        msgs = [_without_nulls(m) for m in msgs]
        last = msgs[-1] if msgs else None
        if reference is None and isinstance(last, dict) and last.get("role") == "assistant":
            reference, reference_field = last.get("content"), f"{field}[{len(msgs) - 1}].content"
            inp: Any = chat_input(ctx.task, msgs[:-1], field)
        elif msgs_col is not None:
            # Whetstone's own column: the stored chat, exactly as it was.
            inp = msgs
        else:
            inp = chat_input(ctx.task, msgs, field)
    else:
        inp = text_input(raw, cols.input)

    known = {*COLUMNS, cols.input, cols.reference}
    meta = json_value(cell("meta"), "meta", dict) or {}
    extras = {k: v for k, v in row.items() if k not in known and not _blank(v)}
    return make_record(
        ctx,
        jsonable(row),
        input=inp,
        reference=reference,
        reference_field=reference_field,
        output=cell("output"),
        status=cell("status"),
        source=cell("source"),
        tags=_tags(row.get("tags")),
        meta={**meta, **jsonable(extras)},
        error_category=cell("error_category"),
        model=cell("model"),
        confidence=_confidence(row.get("confidence")),
        annotator=cell("annotator"),
        source_key=cell("source_key"),
        created_at=cell("created_at"),
        updated_at=cell("updated_at"),
        history=json_value(cell("history"), "history", list),
    )


def _read_rows(
    ctx: Context, cols: Columns, rows: Iterable[tuple[str, dict[str, Any] | RowError, Any]]
) -> ReadResult:
    result = ReadResult(format=ctx.fmt)
    for where, row, raw in rows:
        if isinstance(row, RowError):
            result.rejected.append(ctx.reject(where, row, raw))
            continue
        bad = find_unstorable(row)
        try:
            if bad is not None:
                raise RowError(bad.field, bad.reason)
            kept = cols.mapped(row)
            if kept is None:
                result.skipped += 1
                continue
            result.records.append(table_row(ctx, kept, cols))
        except RowError as e:
            result.rejected.append(ctx.reject(where, e, jsonable(row)))
    return result


# ---- readers ------------------------------------------------------------------------------
def read_csv(path: Path, ctx: Context, cols: Columns) -> ReadResult:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: list[tuple[str, dict[str, Any] | RowError, Any]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise InvalidInput(f"{path}: empty file, expected a header line")
            header = [h.strip() for h in header]
            cols.check(f"{path}:1", header)
            end = reader.line_num
            for values in reader:
                # A quoted cell may span lines: a row starts on the line after the last one.
                start, end = end + 1, reader.line_num
                if not any(v.strip() for v in values):
                    continue
                where = f"{path}:{start}"
                if len(values) != len(header):
                    err = RowError("(line)", f"{len(values)} cells, the header has {len(header)}")
                    rows.append((where, err, values))
                else:
                    rows.append((where, dict(zip(header, values, strict=True)), values))
        except csv.Error as e:
            raise InvalidInput(f"{path}:{reader.line_num}: not readable CSV ({e})") from None
    return _read_rows(ctx, cols, rows)


def read_parquet(path: Path, ctx: Context, cols: Columns) -> ReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInput(f"{path}: not a readable Parquet file ({e})") from None
    cols.check(str(path), table.column_names)
    return _read_rows(
        ctx, cols, ((f"{path}: row {i}", row, None) for i, row in enumerate(table.to_pylist()))
    )


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def read_hf(path: Path, ctx: Context, cols: Columns) -> ReadResult:
    import datasets

    if not is_hf_folder(path):
        raise InvalidInput(
            f"{path}: not a datasets folder (no dataset_info.json, state.json or "
            "dataset_dict.json; write one with Dataset.save_to_disk)"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise InvalidInput(f"{path}: cannot load the datasets folder ({e})") from None
    if isinstance(loaded, datasets.DatasetDict):
        # Whetstone's own export splits by its snapshot, which the importing project makes
        # again for itself: the split is kept in meta only for datasets from elsewhere.
        parts = [
            (f"split {name} ", None if set(COLUMNS) <= set(ds.column_names) else name, ds)
            for name, ds in loaded.items()
        ]
    else:
        parts = [("", None, loaded)]

    def rows() -> Iterator[tuple[str, dict[str, Any] | RowError, Any]]:
        for label, split, ds in parts:
            for i, row in enumerate(ds.to_list()):
                if split is not None:
                    try:
                        meta = json_value(row.get("meta"), "meta", dict) or {}
                        row = {**row, "meta": {**meta, "split": split}}
                    except RowError:
                        pass  # table_row rejects the bad meta, naming the row
                yield f"{path}: {label}row {i}", row, None

    for _, _, ds in parts:
        cols.check(str(path), list(ds.column_names))
    return _read_rows(ctx, cols, rows())


# ---- writers ------------------------------------------------------------------------------
def flat_rows(records: Iterable[Record], *, nested: bool = False) -> Iterator[dict[str, Any]]:
    """Each record as one row of COLUMNS; `messages` and `history` as JSON text, or as lists
    of objects when `nested` (datasets folders)."""

    def text(value: Any) -> Any:
        return value if nested else json.dumps(value, ensure_ascii=False)

    for r in records:
        yield {
            "id": r.id,
            "task": r.task,
            "input": r.input_text,
            "messages": None
            if isinstance(r.input, str)
            else text([m.model_dump(exclude_none=True) for m in r.input]),
            "reference": r.reference,
            "output": r.output,
            "status": r.status.value,
            "source": r.source.value,
            "tags": list(r.tags),
            "meta": json.dumps(r.meta, ensure_ascii=False),
            "error_category": r.error_category,
            "model": r.model,
            "confidence": r.confidence,
            "annotator": r.annotator,
            "source_key": r.source_key,
            "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat(),
            "history": text([c.model_dump(mode="json") for c in r.history]),
        }


def arrow_table(records: Iterable[Record]) -> Any:
    import pyarrow as pa

    types = {"id": pa.int64(), "tags": pa.list_(pa.string()), "confidence": pa.float64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
    return pa.Table.from_pylist(list(flat_rows(records)), schema=schema)


def _nested_array(values: list[Any], fallback: list[Any]) -> Any:
    """`values` as an Arrow column of the types they hold (structs, lists), or `fallback`
    (their JSON text) where one type cannot hold them all: a key whose values differ in type
    between rows, or an empty object, which Parquet (and so `push_to_hub`) cannot store."""
    import pyarrow as pa

    def has_empty_struct(t: Any) -> bool:
        if pa.types.is_struct(t):
            return t.num_fields == 0 or any(has_empty_struct(f.type) for f in t)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return bool(has_empty_struct(t.value_type))
        return False

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(fallback, pa.string())
    return pa.array(fallback, pa.string()) if has_empty_struct(array.type) else array


def _history_type() -> Any:
    import pyarrow as pa

    from whetstone.records import Correction

    fields = [(n, pa.int64() if n == "rating" else pa.string()) for n in Correction.model_fields]
    return pa.list_(pa.struct(fields))


def hf_table(rows: list[dict[str, Any]], *, extract: bool) -> Any:
    """The rows (`flat_rows(..., nested=True)`) as one Arrow table with nested columns."""
    import pyarrow as pa

    columns = {c: [row[c] for row in rows] for c in COLUMNS}
    types = {
        "id": pa.int64(),
        "tags": pa.list_(pa.string()),
        "confidence": pa.float64(),
        "history": _history_type(),
    }
    arrays = {
        c: pa.array(v, types.get(c, pa.string())) for c, v in columns.items() if c != "messages"
    }
    msgs = columns["messages"]
    arrays["messages"] = _nested_array(
        msgs, [None if m is None else json.dumps(m, ensure_ascii=False) for m in msgs]
    )
    refs = columns["reference"]
    parsed = [None if r is None else json.loads(r) for r in refs] if extract else []
    if parsed and all(p is None or isinstance(p, dict) for p in parsed):
        arrays["reference"] = _nested_array(parsed, refs)
    return pa.table({c: arrays[c] for c in COLUMNS})


def write_csv(path: Path, records: Iterable[Record]) -> int:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    n = 0
    for row in flat_rows(records):
        row["tags"] = ",".join(row["tags"])
        w.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        n += 1
    atomic_write_text(path, buf.getvalue())
    return n


def write_parquet(path: Path, records: Iterable[Record]) -> int:
    import pyarrow.parquet as pq

    table = arrow_table(records)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
    return table.num_rows


UNSPLIT = "unsplit"  # the split of records the snapshot does not hold
HF_SPLITS = ("train", "validation", "test", UNSPLIT)


def write_hf(
    path: Path,
    records: Iterable[Record],
    *,
    splits: dict[int, str] | None = None,
    extract: bool = False,
    replace: Replace = "never",
) -> int:
    """A `DatasetDict` saved at `path`: each record in the split `splits` gives its id (a
    snapshot's), the others in `unsplit`; splits without records are left out (an empty
    export is one empty `unsplit`). One table is built for all rows, so every split has the
    same features."""
    import datasets

    splits = splits or {}
    rows = list(flat_rows(records, nested=True))
    where = [splits.get(int(row["id"] or 0), UNSPLIT) for row in rows]
    names = [s for s in HF_SPLITS if s in where] or [UNSPLIT]
    ordered = [row for name in names for row, w in zip(rows, where, strict=True) if w == name]
    table = hf_table(ordered, extract=extract)
    parts, start = {}, 0
    for name in names:
        n = where.count(name)
        sliced = table.slice(start, n)
        parts[name] = datasets.Dataset(datasets.table.InMemoryTable(sliced))
        start += n
    dd = datasets.DatasetDict(parts)
    with atomic_dir(path, replace=replace, written_by="export --format hf") as tmp:
        dd.save_to_disk(str(tmp))
    return len(rows)
