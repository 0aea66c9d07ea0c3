"""The bundled demo tasks: 1,488 hand-labelled US addresses to extract the parts of, and
693 voice-assistant requests to classify by intent.

The addresses are the `usaddress` project's training set (MIT licence, see
data/NOTICE-usaddress.txt), converted by scripts/convert_usaddress.py into
`data/addresses.jsonl` (one `{"id", "input", "reference"}` per line) and
`data/addresses.schema.json`. The intents are the SNIPS utterances of BIG-bench's
intent_recognition task (Apache 2.0, see data/NOTICE-intents.txt), converted by
scripts/convert_intents.py into `data/intents.jsonl` (same row shape, the reference a label).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.records import Kind, Record, Source, Status, Task, canonical_json, content_key

if TYPE_CHECKING:
    from whetstone.project import Project

DEMO_TAG = "demo"
DATASETS = ("addresses", "intents")
DATA_FILE = "addresses.jsonl"
INTENTS_FILE = "intents.jsonl"
SCHEMA_FILE = "addresses.schema.json"
TRY_IT = "123 Main St, Springfield IL 62704"


def _data(name: str) -> str:
    # One part per step: joinpath with several parts needs Python 3.11 (we support 3.10).
    return (resources.files("whetstone") / "data" / name).read_text(encoding="utf-8")


@cache
def demo_schema() -> dict[str, Any]:
    """The JSON Schema every demo reference follows."""
    return json.loads(_data(SCHEMA_FILE))


@cache
def _rows(name: str = DATA_FILE) -> tuple[tuple[str, str, Any], ...]:
    rows = (json.loads(line) for line in _data(name).splitlines())
    return tuple((r["id"], r["input"], r["reference"]) for r in rows)


def demo_rows(limit: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """(address, reference fields) pairs in file order, the first `limit` of them: the same
    data `load_demo_data` imports, for benchmarks that need no project."""
    return [(text, dict(ref)) for _, text, ref in _rows()[:limit]]


# The most common parts, named in the prompt so the base model has a fair chance; the
# specialist learns the rest of the schema from the data. Listing all 28 keys would make the
# prompt five times longer (~245 tokens), and every training step and answer pays for it.
COMMON_KEYS = (
    "address_number",
    "street_name",
    "street_name_post_type",
    "occupancy_type",
    "occupancy_identifier",
    "place_name",
    "state_name",
    "zip_code",
)


def demo_instruction() -> str:
    return (
        "Split the US address into its labelled parts. Answer with a single-line JSON object "
        f"whose keys are usaddress labels in snake_case ({', '.join(COMMON_KEYS)}, ...); "
        "leave out parts the address does not have and copy values exactly as written."
    )


def load_demo_data(
    project: Project, task: str = "addresses", limit: int | None = None
) -> tuple[Task, int]:
    """Create the `extract` task `task` if it is missing and import the demo addresses into it
    as accepted records. Returns the task and how many records were added: re-running adds
    nothing, since each row's `source_key` is a hash of its content."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"--limit must be 0 or more, not {limit}")
    t = _demo_task(project, task)
    import jsonschema

    # The task may predate this data (made by hand, or by an older release): check every
    # reference against its schema up front so a mismatch adds nothing and names the row.
    validator = jsonschema.Draft202012Validator(t.schema_ or {})
    records = []
    for row_id, text, ref in _rows()[:limit]:
        error = jsonschema.exceptions.best_match(validator.iter_errors(ref))
        if error is not None:
            raise InvalidInput(
                f"demo row {row_id} does not fit task {task!r}'s schema: {error.message}"
            )
        records.append(_demo_record(task, "addresses", row_id, text, canonical_json(ref)))
    added = project.store.add_records(records)
    return t, sum(rid is not None for rid in added)


def _demo_record(task: str, dataset: str, row_id: Any, text: str, reference: str) -> Record:
    """A bundled row as an accepted, imported record; its source key makes a re-run add
    nothing."""
    return Record(
        task=task,
        input=text,
        reference=reference,
        status=Status.accepted,
        source=Source.imported,
        tags=[DEMO_TAG],
        meta={"demo_id": row_id},
        source_key=content_key(f"demo:{dataset}", text, reference),
    )


def _demo_task(project: Project, name: str) -> Task:
    try:
        t = project.task(name)
    except NotFound:
        return project.create_task(
            name, Kind.extract, instruction=demo_instruction(), schema=demo_schema()
        )
    if t.kind != Kind.extract:
        raise InvalidInput(
            f"task {name!r} exists and is a {t.kind.value} task; the demo addresses need an "
            "extract task (pass another --task name)"
        )
    return t


INTENTS_TRY_IT = "Play something by Nina Simone on Spotify"


def intent_rows(limit: int | None = None) -> list[tuple[str, str]]:
    """(utterance, intent label) pairs in file order, the first `limit` of them."""
    return [(text, ref) for _, text, ref in _rows(INTENTS_FILE)[:limit]]


@cache
def intent_labels() -> tuple[str, ...]:
    """The intents the bundled utterances use, sorted."""
    return tuple(sorted({ref for _, _, ref in _rows(INTENTS_FILE)}))


def intents_instruction() -> str:
    # The labels are named in the prompt: a classify task's answer must be one of them, and
    # the base model cannot guess snake_case names it has never seen.
    return (
        "Classify the request to a voice assistant by its intent. Answer with exactly one of "
        f"these labels: {', '.join(intent_labels())}."
    )


def load_demo_classify(
    project: Project, task: str = "intents", limit: int | None = None
) -> tuple[Task, int]:
    """Create the `classify` task `task` (with the intent labels and an instruction) if it is
    missing and import the bundled utterances into it as accepted records. Returns the task
    and how many records were added; re-running adds nothing."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"--limit must be 0 or more, not {limit}")
    t = _intents_task(project, task)
    records = []
    for row_id, text, ref in _rows(INTENTS_FILE)[:limit]:
        # The task may predate this data, with other labels: name the row that does not fit.
        label = t.check_reference(ref, where=f"demo row {row_id}")
        records.append(_demo_record(task, "intents", row_id, text, label))
    added = project.store.add_records(records)
    return t, sum(rid is not None for rid in added)


def _intents_task(project: Project, name: str) -> Task:
    try:
        t = project.task(name)
    except NotFound:
        return project.create_task(
            name, Kind.classify, instruction=intents_instruction(), labels=list(intent_labels())
        )
    if t.kind != Kind.classify:
        raise InvalidInput(
            f"task {name!r} exists and is a {t.kind.value} task; the demo intents need a "
            "classify task (pass another --task name)"
        )
    return t
