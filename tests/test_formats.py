"""Import / export in real formats: round trips, detection, all-or-nothing validation,
rejected-row files, idempotent re-import, preference pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import whetstone
from whetstone import formats, prompts
from whetstone.cli.main import app
from whetstone.errors import InvalidInput
from whetstone.records import Message

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
    "required": ["city"],
}
LABELS = ["pos", "neg"]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_tasks(p: Any) -> None:
    p.create_task("gen", "generate", instruction="Reply in one short sentence.")
    p.create_task("cls", "classify", labels=LABELS)
    p.create_task("ext", "extract", schema=SCHEMA)


@pytest.fixture
def proj(project: Any) -> Any:
    make_tasks(project)
    return project


@pytest.fixture
def other(tmp_path: Path) -> Any:
    """A second project with the same tasks, to import exports into."""
    p = whetstone.init(str(tmp_path / "other"))
    make_tasks(p)
    yield p
    p.close()


def cli(p: Any, *args: str) -> Any:
    return CliRunner().invoke(app, ["--project", str(p.root), *args])


def seed(p: Any) -> None:
    """Records that use every field: outputs, corrections, chat inputs, tags, meta, history."""
    chat = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello."),
        Message(role="user", content="How are you?"),
    ]
    a = p.capture(
        "gen",
        "What is 2+2?",
        "5",
        model="gen@1",
        confidence=0.25,
        tags=["math", "easy"],
        meta={"ticket": 7},
    )
    p.correct(a, "4", error_category="arithmetic", annotator="ann", comment="off by one")
    b = p.capture("gen", chat, "Fine.", model="gen@1")
    p.accept(b, annotator="ann")
    p.capture("gen", "Name a colour.", reference="Blue.", source="teacher", meta={"k": [1, 2]})
    p.capture("gen", "Unlabelled input", "whatever")  # no reference: not a training row
    d = p.capture("gen", "Bad input", "x")
    p.reject(d, comment="spam")


# ---- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_full_record_formats_round_trip_every_field(
    proj: Any, other: Any, tmp_path: Path, fmt: str
) -> None:
    seed(proj)
    out = tmp_path / f"export.{fmt}"
    statuses = ["unreviewed", "accepted", "corrected", "rejected"]
    n = formats.export_records(proj, "gen", fmt, out, statuses=statuses)
    assert n == 5

    report = formats.import_file(other, out, "gen")
    assert (report.format, report.added, report.duplicates, report.rejected) == (fmt, 5, 0, 0)

    def full(p: Any) -> list[dict[str, Any]]:
        return [p.record(r.id).model_dump(mode="json", exclude={"id"}) for r in p.records("gen")]

    before, after = full(proj), full(other)
    # Captured records had no source key; imported ones get one (the hash of their row).
    assert all(r.pop("source_key") for r in after)
    assert all(r.pop("source_key") is None for r in before)
    assert after == before
    assert any(r["history"] for r in after)  # review events came along
    assert any(isinstance(r["input"], list) for r in after)  # the chat input survived whole

    # The export carries each record's source key: importing it again adds nothing.
    again = formats.import_file(other, out, "gen")
    assert (again.added, again.duplicates) == (0, 5)


@pytest.mark.parametrize("fmt", ["openai", "evals", "instruction"])
def test_training_formats_round_trip(proj: Any, other: Any, tmp_path: Path, fmt: str) -> None:
    seed(proj)
    first = tmp_path / f"first.{fmt}.jsonl"
    second = tmp_path / f"second.{fmt}.jsonl"
    # Default selection: a reference, not rejected.
    assert formats.export_records(proj, "gen", fmt, first) == 3
    assert formats.import_file(other, first, "gen", fmt).added == 3
    assert formats.export_records(other, "gen", fmt, second) == 3
    assert first.read_text() == second.read_text()

    src = {r.reference: r for r in proj.records("gen", has_reference=True)}
    for rec in other.records("gen"):
        orig = src[rec.reference]
        assert rec.status.value == "accepted" and rec.source.value == "import"
        if fmt == "instruction":
            assert rec.input == orig.input_text  # the format holds text only
        else:
            assert rec.input == orig.input
        if fmt != "openai":
            assert rec.meta == orig.meta  # extra top-level keys come back as meta


def test_openai_export_shape_and_system_prompt(proj: Any, tmp_path: Path) -> None:
    proj.capture("cls", "I loved it", reference="pos")
    out = tmp_path / "ft.jsonl"
    formats.export_records(proj, "cls", "openai", out)
    (row,) = read_jsonl(out)
    assert row == {
        "messages": [
            {"role": "system", "content": prompts.instruction(proj.task("cls"))},
            {"role": "user", "content": "I loved it"},
            {"role": "assistant", "content": "pos"},
        ]
    }


def test_openai_import_drops_the_task_system_prompt_keeps_others(proj: Any, tmp_path: Path) -> None:
    instr = prompts.instruction(proj.task("gen"))
    f = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": instr},
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "A"},
                ],
                "origin": "crm",
            },
            {
                "messages": [
                    {"role": "system", "content": "Be a pirate."},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "Arr."},
                ]
            },
        ],
    )
    formats.import_file(proj, f, "gen")
    a, b = proj.records("gen")
    assert a.input == "a" and a.reference == "A" and a.meta == {"origin": "crm"}
    assert [m.role for m in b.input] == ["system", "user"] and b.reference == "Arr."


def test_evals_ideal_list_keeps_alternatives(proj: Any, other: Any, tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "evals.jsonl",
        [
            {
                "input": [{"role": "user", "content": "Capital of France?"}],
                "ideal": ["Paris.", "Paris"],
            }
        ],
    )
    formats.import_file(proj, f, "gen", "evals")
    (rec,) = proj.records("gen")
    assert (rec.input, rec.reference) == ("Capital of France?", "Paris.")
    assert rec.meta == {"ideal_alternatives": ["Paris"]}
    out = tmp_path / "back.jsonl"
    formats.export_records(proj, "gen", "evals", out)
    assert read_jsonl(out)[0]["ideal"] == ["Paris.", "Paris"]


def test_instruction_joins_a_foreign_instruction(proj: Any, tmp_path: Path) -> None:
    own = prompts.instruction(proj.task("gen"))
    f = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": own, "input": "just the input", "output": "x"},
            {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
        ],
    )
    formats.import_file(proj, f, "gen")
    assert [r.input for r in proj.records("gen")] == [
        "just the input",
        "Translate to French.\n\ncat",
        "Say hi.",
    ]


def test_csv_column_mapping_tags_and_extra_columns(proj: Any, tmp_path: Path) -> None:
    f = tmp_path / "reviews.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "tags", "shop"])
        w.writerow(["Great, would buy again", "pos", "web, 2024", "north"])
        w.writerow(["Broke in a day\nawful", "neg", "", "south"])
    r = cli(
        proj, "import", str(f), "--task", "cls", "--input-col", "text", "--reference-col", "label"
    )
    assert r.exit_code == 0, r.output
    assert "2 added" in r.output
    a, b = proj.records("cls")
    assert (a.input, a.reference, a.tags, a.meta) == (
        "Great, would buy again",
        "pos",
        ["web", "2024"],
        {"shop": "north"},
    )
    assert (b.input, b.tags, b.status.value, b.source.value) == (
        "Broke in a day\nawful",
        [],
        "accepted",
        "import",
    )


def test_csv_without_reference_column_imports_unlabelled(proj: Any, tmp_path: Path) -> None:
    f = tmp_path / "inputs.csv"
    f.write_text("input\nfirst\nsecond\n")
    formats.import_file(proj, f, "gen", source="synthetic")
    recs = proj.records("gen")
    assert [(r.reference, r.status.value, r.source.value) for r in recs] == [
        (None, "unreviewed", "synthetic")
    ] * 2


def test_missing_named_column_is_a_file_error(proj: Any, tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("text,label\na,pos\n")
    with pytest.raises(InvalidInput, match=r"x\.csv:1: input: no such column"):
        formats.import_file(proj, f, "cls")
    with pytest.raises(InvalidInput, match=r"x\.csv:1: gold: no such column"):
        formats.import_file(proj, f, "cls", input_col="text", reference_col="gold")


def test_hf_chat_dataset_with_assistant_answer(proj: Any, tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "Say yes"},
                    {"role": "assistant", "content": "yes"},
                ],
                "lang": "en",
            }
        ]
    )
    ds.save_to_disk(str(tmp_path / "chat_ds"))
    report = formats.import_file(proj, tmp_path / "chat_ds", "gen")
    assert report.format == "hf"
    (rec,) = proj.records("gen")
    assert (rec.input, rec.reference, rec.meta) == ("Say yes", "yes", {"lang": "en"})


def test_hf_dataset_dict_keeps_the_split(proj: Any, tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"input": ["a"], "reference": ["pos"]}),
            "test": datasets.Dataset.from_dict({"input": ["b"], "reference": ["maybe"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InvalidInput, match=r"dd: split test row 0: reference: label 'maybe'"):
        formats.import_file(proj, tmp_path / "dd", "cls")
    report = formats.import_file(proj, tmp_path / "dd", "cls", skip_invalid=True)
    assert (report.added, report.rejected) == (1, 1)
    assert proj.records("cls")[0].meta == {"split": "train"}


# ---- detection ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "row", "fmt"),
    [
        ("a.jsonl", {"messages": [{"role": "user", "content": "x"}]}, "openai"),
        ("a.jsonl", {"input": "x", "ideal": "y"}, "evals"),
        ("a.json", {"instruction": "i", "input": "x", "output": "y"}, "instruction"),
        ("a.ndjson", {"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ("a.jsonl", {"input": "x", "reference": "y", "status": "accepted"}, "jsonl"),
        ("data.txt", {"input": "x"}, "jsonl"),
    ],
)
def test_detect_jsonl_dialects(tmp_path: Path, name: str, row: dict[str, Any], fmt: str) -> None:
    assert formats.detect(write_jsonl(tmp_path / name, ["", row])) == fmt


def test_detect_tables_and_folders(proj: Any, tmp_path: Path) -> None:
    proj.capture("gen", "x", reference="y")
    for fmt, name in [("csv", "o.csv"), ("parquet", "o.parquet"), ("hf", "o_ds")]:
        formats.export_records(proj, "gen", fmt, tmp_path / name)
        assert formats.detect(tmp_path / name) == fmt
    (tmp_path / "o.parquet").rename(tmp_path / "o.bin")
    assert formats.detect(tmp_path / "o.bin") == "parquet"  # by its magic bytes
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidInput, match="save_to_disk"):
        formats.detect(tmp_path / "plain")
    with pytest.raises(InvalidInput, match=r"u\.jsonl:1: cannot tell the format"):
        formats.detect(write_jsonl(tmp_path / "u.jsonl", [{"text": "x"}]))


# ---- bad input: all or nothing ------------------------------------------------------------
GOOD = {"messages": [{"role": "user", "content": "nice"}, {"role": "assistant", "content": "pos"}]}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ("{not json", "(line)"),
        ({"messages": [{"role": "user", "content": "nice"}]}, "messages[0]"),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "pos"}]},
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "meh"},
                ]
            },
            "messages[1].content: label 'meh' is not one of",
        ),
    ],
)
def test_bad_line_aborts_the_whole_import(proj: Any, tmp_path: Path, bad: Any, field: str) -> None:
    f = write_jsonl(tmp_path / "data.jsonl", [GOOD, "", bad, GOOD])
    r = cli(proj, "import", str(f), "--task", "cls", "--format", "openai")
    assert r.exit_code != 0
    msg = str(r.exception)
    assert f"{f}:3: {field}" in msg and "nothing was imported" in msg
    assert proj.store.count_records() == 0


def test_csv_label_outside_the_set_names_the_line(proj: Any, tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text('input,reference\n"multi\nline",pos\nfine,neutral\nok,neg\n')
    r = cli(proj, "import", str(f), "--task", "cls")
    assert r.exit_code != 0
    # Header is line 1; the quoted cell spans lines 2-3, so the bad row is on line 4.
    assert f"{f}:4: reference: label 'neutral' is not one of" in str(r.exception)
    assert proj.store.count_records() == 0


def test_extract_reference_failing_the_schema(proj: Any, tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "ext.jsonl",
        [
            {"input": "12 Main St, Springfield", "ideal": {"city": "Springfield"}},
            {"input": "somewhere", "ideal": '{"zip": "12345"}'},
            {"input": "elsewhere", "ideal": "not json"},
        ],
    )
    with pytest.raises(InvalidInput) as e:
        formats.import_file(proj, f, "ext")
    msg = str(e.value)
    assert f"{f}:2: ideal: fails the task schema at (root): 'city' is a required property" in msg
    assert "and 1 more bad row" in msg
    assert proj.store.count_records() == 0

    read = formats.read_file(f, proj.task("ext"))
    assert read.records[0].reference == '{"city":"Springfield"}'  # canonical JSON
    assert [(r.where, r.field) for r in read.rejected] == [(f"{f}:2", "ideal"), (f"{f}:3", "ideal")]
    assert "not valid JSON" in read.rejected[1].reason


def test_parquet_errors_name_the_row_index(proj: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"input": ["a", "b", "c"], "reference": ["pos", "nope", "neg"]}), f)
    with pytest.raises(InvalidInput, match=r"labels\.parquet: row 1: reference: label 'nope'"):
        formats.import_file(proj, f, "cls")


def test_skip_invalid_writes_the_rejects_file(proj: Any, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "data.jsonl", [GOOD, "{oops", {"messages": []}, GOOD])
    r = cli(proj, "import", str(f), "--task", "cls", "--skip-invalid")
    assert r.exit_code == 0, r.output
    rejects = tmp_path / "data.jsonl.rejected.jsonl"
    assert "1 added, 1 duplicate(s), 2 rejected" in r.output
    assert str(rejects) in r.output.replace("\n", "")
    rows = read_jsonl(rejects)
    assert [(x["where"], x["field"]) for x in rows] == [
        (f"{f}:2", "(line)"),
        (f"{f}:3", "messages"),
    ]
    assert rows[0]["row"] == "{oops"  # the line as it was, to fix and re-import
    assert rows[1]["row"] == {"messages": []} and rows[1]["error"]

    custom = tmp_path / "bad" / "rows.jsonl"
    r = cli(proj, "import", str(f), "-t", "cls", "--skip-invalid", "--rejected-out", str(custom))
    assert r.exit_code == 0 and len(read_jsonl(custom)) == 2


def test_reimport_adds_nothing(proj: Any, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "data.jsonl", [GOOD, {**GOOD, "id": 2}])
    assert "2 added, 0 duplicate(s)" in cli(proj, "import", str(f), "-t", "cls").output
    r = cli(proj, "import", str(f), "-t", "cls")
    assert r.exit_code == 0 and "0 added, 2 duplicate(s), 0 rejected" in r.output
    assert proj.store.count_records("cls") == 2


def test_file_status_and_overrides(proj: Any, tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "recs.jsonl",
        [
            {"input": "a", "reference": "pos", "status": "corrected", "output": "neg"},
            {"input": "b", "reference": "neg"},
            {"input": "c", "status": "accepted"},
        ],
    )
    read = formats.read_file(f, proj.task("cls"))
    assert [r.status.value for r in read.records] == ["corrected", "accepted"]
    assert (
        read.rejected[0].message
        == f"{f}:3: reference: missing: a record with status accepted needs one"
    )
    read = formats.read_file(f, proj.task("cls"), status="unreviewed", source="teacher")
    assert {(r.status.value, r.source.value) for r in read.records} == {("unreviewed", "teacher")}
    with pytest.raises(InvalidInput, match="unknown source 'web'"):
        formats.read_file(f, proj.task("cls"), source="web")


# ---- preference pairs ---------------------------------------------------------------------
def test_preference_pairs_from_corrections(proj: Any, other: Any, tmp_path: Path) -> None:
    a = proj.capture("ext", "12 Main St, Springfield", '{"city": "Shelbyville"}')
    proj.correct(a, '{"city": "Springfield"}')
    same = proj.capture("ext", "1 Elm St, Ogdenville", '{"city":  "Ogdenville"}')
    proj.correct(same, '{"city": "Ogdenville"}')  # same answer up to whitespace: no pair
    ok = proj.capture("ext", "9 Oak Rd, Capital City", '{"city": "Capital City"}')
    proj.accept(ok)
    out = tmp_path / "dpo.jsonl"
    assert formats.export_records(proj, "ext", "preference", out) == 1
    (row,) = read_jsonl(out)
    assert row == {
        "prompt": [
            {"role": "system", "content": prompts.instruction(proj.task("ext"))},
            {"role": "user", "content": "12 Main St, Springfield"},
        ],
        "chosen": [{"role": "assistant", "content": '{"city":"Springfield"}'}],
        "rejected": [{"role": "assistant", "content": '{"city": "Shelbyville"}'}],
    }
    trl_utils = pytest.importorskip("trl.data_utils")
    assert trl_utils.is_conversational(row)

    formats.import_file(other, out, "ext")
    (rec,) = other.records("ext")
    assert (rec.input, rec.output, rec.reference, rec.status.value) == (
        "12 Main St, Springfield",
        '{"city": "Shelbyville"}',
        '{"city":"Springfield"}',
        "corrected",
    )


def test_export_defaults_skip_rejected_and_unlabelled(proj: Any, tmp_path: Path) -> None:
    seed(proj)
    out = tmp_path / "all.jsonl"
    assert formats.export_records(proj, "gen", "jsonl", out) == 3
    rows = read_jsonl(out)
    assert {r["status"] for r in rows} == {"accepted", "corrected", "unreviewed"}
    assert all(r["reference"] is not None for r in rows)
    # Writing over an earlier export takes --force (issue 14: exports never replace silently).
    assert formats.export_records(proj, "gen", "openai", out, ["unreviewed"], force=True) == 1
    flags = ["-o", str(out), "--status", "rejected", "--force"]
    r = cli(proj, "export", "-t", "gen", "-f", "openai", *flags)
    assert r.exit_code == 0 and "Exported 0 record(s)" in r.output
    assert read_jsonl(out) == []
    with pytest.raises(InvalidInput, match="unknown export format 'xml'"):
        formats.export_records(proj, "gen", "xml", out)
