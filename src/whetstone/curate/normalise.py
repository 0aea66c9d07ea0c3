"""Step 1, validate and normalise: unicode (NFKC) and whitespace normalisation of inputs and
references; classify labels must be in the task's label set, extract references must pass
the task's JSON schema. Records that fail are left out, with the reason."""

from __future__ import annotations

import re
import unicodedata

from whetstone.curate.state import Row, Run
from whetstone.errors import InvalidInput
from whetstone.records import Kind

# Control and zero-width characters carry no meaning for the model but break dedup and filters.
_INVISIBLE = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_record_text(text: str) -> str:
    """A record's text as curation keeps it: NFKC, no invisible characters, runs of spaces as
    one, at most one blank line in a row. Line breaks are kept: they can matter (addresses,
    code). (Duplicates are compared by `neardup.dedup_key_text`, which also folds case.)"""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _label(row: Row, labels: list[str]) -> str | None:
    ref = clean_record_text(row.reference)
    if ref in labels:
        return ref
    # A label that differs only in case or spacing is the same label, if only one matches.
    folded = [lab for lab in labels if lab.casefold() == ref.casefold()]
    return folded[0] if len(folded) == 1 else None


def run(ctx: Run) -> None:
    from whetstone.progress import track

    task = ctx.task
    for row in track(ctx.rows, "validate"):
        new_input = row.map_input(clean_record_text)
        if task.kind == Kind.classify and task.labels:
            new_ref = _label(row, task.labels)
            if new_ref is None:
                ctx.decide(
                    row,
                    "removed",
                    "label not in the task's label set",
                    label=row.reference,
                    labels=task.labels,
                )
                continue
        elif task.kind == Kind.extract:
            try:
                new_ref = task.check_reference(row.reference)
            except InvalidInput as e:
                ctx.decide(row, "removed", "reference fails the task schema", error=str(e))
                continue
        else:
            new_ref = clean_record_text(row.reference)
        if new_input != row.input or new_ref != row.reference:
            row.input, row.reference = new_input, new_ref
            ctx.decide(row, "normalised", "unicode or whitespace normalised")
