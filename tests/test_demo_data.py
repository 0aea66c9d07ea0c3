"""The bundled demo addresses: the converter's parsing rules, the committed data against its
schema, the idempotent import and the `whetstone demo-data` command."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
from typer.testing import CliRunner

import whetstone
from whetstone import demo_data
from whetstone.cli.main import app
from whetstone.errors import InvalidInput
from whetstone.records import Kind, Source, Status

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "whetstone" / "data"
# What scripts/convert_usaddress.py makes of usaddress 0.5.16's labeled.xml: 1,513 elements,
# 25 of them exact repeats of an earlier one.
ROW_COUNT = 1488


@pytest.fixture(scope="module")
def convert() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "convert_usaddress", ROOT / "scripts" / "convert_usaddress.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Same shape as labeled.xml: raw text in texts and tails, indentation before the closing tag.
XML = """<AddressCollection>
  <AddressString><AddressNumber>1044</AddressNumber> <StreetName>Lake</StreetName> <StreetName>Shore</StreetName> <StreetNamePostType>Boulevard,</StreetNamePostType> <PlaceName>Evanston,</PlaceName> <ZipCode>60202</ZipCode></AddressString>
  <AddressString><Recipient>JASON</Recipient> <Recipient>SCHEYDER\n</Recipient> <AddressNumber>110</AddressNumber> <USPSBoxType>PO</USPSBoxType> <USPSBoxType>Box</USPSBoxType> <USPSBoxID>#</USPSBoxID> <USPSBoxID>63;</USPSBoxID> <StateName>NY</StateName></AddressString>
  <AddressString><NotAddress>According</NotAddress> <NotAddress>to:</NotAddress> <AddressNumber>6257A</AddressNumber> <StreetNamePreDirectional>N.</StreetNamePreDirectional> <StreetName>McCormick</StreetName>\n    </AddressString>
  <AddressString><AddressNumber>1044</AddressNumber> <StreetName>Lake</StreetName> <StreetName>Shore</StreetName> <StreetNamePostType>Boulevard,</StreetNamePostType> <PlaceName>Evanston,</PlaceName> <ZipCode>60202</ZipCode></AddressString>
</AddressCollection>
"""


def test_parse_reproduces_raw_string_and_names_fields(convert: ModuleType) -> None:
    rows = convert.parse_labeled_xml(XML)
    # The fourth element repeats the first exactly and is kept once, under the first's id.
    assert [r["id"] for r in rows] == ["usaddress-0001", "usaddress-0002", "usaddress-0003"]
    first, second, third = rows
    assert first["input"] == "1044 Lake Shore Boulevard, Evanston, 60202"
    assert first["reference"] == {
        "address_number": "1044",
        "street_name": "Lake Shore",
        "street_name_post_type": "Boulevard",
        "place_name": "Evanston",
        "zip_code": "60202",
    }
    # A multi-line address keeps its newline; tokens are trimmed before joining.
    assert second["input"] == "JASON SCHEYDER\n 110 PO Box # 63; NY"
    assert second["reference"] == {
        "recipient": "JASON SCHEYDER",
        "address_number": "110",
        "usps_box_type": "PO Box",
        "usps_box_id": "# 63",
        "state_name": "NY",
    }
    # NotAddress text stays in the input but never in the reference; "N." keeps its period.
    assert third["input"] == "According to: 6257A N. McCormick"
    assert third["reference"] == {
        "address_number": "6257A",
        "street_name_pre_directional": "N.",
        "street_name": "McCormick",
    }


def test_parse_rejects_unknown_labels(convert: ModuleType) -> None:
    xml = "<C><AddressString><AddressNumber>1</AddressNumber> <Floor>2</Floor></AddressString></C>"
    with pytest.raises(convert.ConvertError, match=r"#1: unknown label <Floor>"):
        convert.parse_labeled_xml(xml)


def test_converter_reads_an_sdist_tarball(convert: ModuleType, tmp_path: Path) -> None:
    sdist = tmp_path / "usaddress-0.5.16.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("training/labeled.xml", XML), ("LICENSE", "MIT, (c) someone\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"usaddress-0.5.16/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out" / "addresses.jsonl"
    assert convert.main(["--sdist", str(tmp_path), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert list(rows[0]) == ["id", "input", "reference"]  # sorted keys
    schema = json.loads((out.parent / "addresses.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["usps_box_id"]["type"] == "string"
    assert "MIT, (c) someone" in (out.parent / "NOTICE-usaddress.txt").read_text()
    # Same input, same bytes.
    before = out.read_bytes()
    assert convert.main(["--sdist", str(sdist), "-o", str(out)]) == 0
    assert out.read_bytes() == before


def test_committed_data_fits_its_schema() -> None:
    schema = json.loads((DATA / "addresses.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    lines = (DATA / "addresses.jsonl").read_text().splitlines()
    assert len(lines) == ROW_COUNT
    seen: Counter[str] = Counter()
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"id", "input", "reference"}
        assert row["input"] == row["input"].strip() and row["reference"]
        assert not list(validator.iter_errors(row["reference"])), row["id"]
        seen.update(row["reference"].keys())
    assert len({json.loads(line)["id"] for line in lines}) == ROW_COUNT
    # Every property of the schema occurs in the data, and the common ones often.
    assert set(seen) == set(schema["properties"])
    assert seen["street_name"] > 1000 and seen["zip_code"] > 900
    assert "MIT License" in (DATA / "NOTICE-usaddress.txt").read_text()


def test_demo_rows_and_instruction() -> None:
    rows = demo_data.demo_rows()
    assert len(rows) == ROW_COUNT
    text, ref = rows[0]
    assert text == "8128 S. DR MARTIN LUTHER KING JR Drive"
    assert ref["street_name"] == "DR MARTIN LUTHER KING JR"
    ref["street_name"] = "changed"  # callers get copies, not the cached rows
    assert demo_data.demo_rows(1)[0][1]["street_name"] == "DR MARTIN LUTHER KING JR"
    instruction = demo_data.demo_instruction()
    assert "single-line JSON object" in instruction
    assert set(demo_data.COMMON_KEYS) <= set(demo_data.demo_schema()["properties"])
    assert all(key in instruction for key in demo_data.COMMON_KEYS)


def test_load_demo_data_is_idempotent(tmp_path: Path) -> None:
    p = whetstone.init(tmp_path)
    task, added = demo_data.load_demo_data(p, limit=20)
    assert (task.name, task.kind, added) == ("addresses", Kind.extract, 20)
    assert task.schema_ == demo_data.demo_schema()
    assert demo_data.load_demo_data(p, limit=20)[1] == 0
    # A larger run adds only the rows it did not have.
    assert demo_data.load_demo_data(p)[1] == ROW_COUNT - 20
    records = p.records("addresses")
    assert len(records) == ROW_COUNT
    rec = next(r for r in records if r.input == demo_data.demo_rows(1)[0][0])
    assert (rec.status, rec.source, rec.tags) == (Status.accepted, Source.imported, ["demo"])
    assert rec.reference is not None
    assert json.loads(rec.reference) == demo_data.demo_rows(1)[0][1]
    assert rec.reference == task.check_reference(rec.reference)  # canonical form


def test_load_demo_data_refuses_a_task_of_another_kind(tmp_path: Path) -> None:
    p = whetstone.init(tmp_path)
    p.create_task("addresses", "generate")
    with pytest.raises(InvalidInput, match="generate task"):
        demo_data.load_demo_data(p)
    narrow = {"type": "object", "properties": {"city": {}}, "additionalProperties": False}
    p.create_task("narrow", "extract", schema=narrow)
    with pytest.raises(InvalidInput, match="usaddress-0001 does not fit task 'narrow'"):
        demo_data.load_demo_data(p, "narrow")
    assert p.store.count_records("narrow") == 0


def test_cli_demo_data(tmp_path: Path) -> None:
    whetstone.init(tmp_path)
    runner = CliRunner()
    args = ["--project", str(tmp_path), "demo-data", "--task", "addr", "--limit", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Added 7 demo addresses to task addr" in result.output
    assert 'whetstone predict --task addr "123 Main St, Springfield IL 62704"' in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "Added 0 demo addresses" in again.output
    bad = runner.invoke(app, ["--project", str(tmp_path), "demo-data", "--limit", "-1"])
    assert isinstance(bad.exception, InvalidInput)


# What scripts/convert_intents.py makes of bigbench 1.0.0's intent_recognition task.json.
INTENT_COUNTS = {
    "add_to_playlist": 122,
    "book_restaurant": 92,
    "get_weather": 103,
    "play_music": 86,
    "rate_book": 80,
    "search_creative_work": 104,
    "search_screening_event": 106,
}


def test_committed_intents_have_the_expected_labels_and_counts() -> None:
    rows = [json.loads(line) for line in (DATA / "intents.jsonl").read_text().splitlines()]
    assert len(rows) == sum(INTENT_COUNTS.values()) == 693
    assert Counter(r["reference"] for r in rows) == INTENT_COUNTS
    assert all(set(r) == {"id", "input", "reference"} for r in rows)
    assert len({r["id"] for r in rows}) == len({r["input"] for r in rows}) == len(rows)
    # Short prompts for a small model: one sentence each, no BIG-bench prefix left.
    assert max(len(r["input"]) for r in rows) < 200
    assert not any(r["input"].startswith("Utterance:") for r in rows)
    assert demo_data.intent_labels() == tuple(sorted(INTENT_COUNTS))
    assert all(label in demo_data.intents_instruction() for label in INTENT_COUNTS)
    notice = (DATA / "NOTICE-intents.txt").read_text()
    assert "Apache License" in notice and "canary GUID" in notice


def test_intents_converter_on_a_tiny_sdist(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("conv", ROOT / "scripts" / "convert_intents.py")
    assert spec is not None and spec.loader is not None
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    task = {
        "canary": "canary GUID x",
        "examples": [
            {"input": "Utterance: play jazz", "target_scores": {"play_music": 1, "rate_book": 0}},
            {"input": "Utterance: play jazz", "target_scores": {"play_music": 1, "rate_book": 0}},
            {"input": "Utterance: 5 stars", "target_scores": {"play_music": 0, "rate_book": 1}},
        ],
    }
    data = json.dumps(task).encode()
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"bigbench-1.0.0/{conv.TASK_JSON}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    rows = conv.convert(conv.find_task_json(tmp_path))
    assert rows == [
        {"id": "intents-001", "input": "play jazz", "reference": "play_music"},
        {"id": "intents-003", "input": "5 stars", "reference": "rate_book"},
    ]
    task["examples"][0]["target_scores"]["rate_book"] = 1
    with pytest.raises(SystemExit, match="example 1 has 2 correct intents"):
        conv.convert(task)


def test_load_demo_classify(tmp_path: Path) -> None:
    p = whetstone.init(tmp_path)
    task, added = demo_data.load_demo_classify(p, limit=30)
    assert (task.kind, added) == (Kind.classify, 30)
    assert task.labels == sorted(INTENT_COUNTS) and task.instruction
    assert demo_data.load_demo_classify(p, limit=30)[1] == 0
    rec = p.store.list_records("intents")[0]
    assert (rec.input, rec.reference) == demo_data.intent_rows(1)[0]
    assert (rec.status, rec.source, rec.tags) == (Status.accepted, Source.imported, ["demo"])
    p.create_task("two", "classify", labels=["play_music", "rate_book"])
    with pytest.raises(InvalidInput, match="demo row intents-001: label 'add_to_playlist'"):
        demo_data.load_demo_classify(p, "two")
    with pytest.raises(InvalidInput, match="is a generate task"):
        p.create_task("gen", "generate")
        demo_data.load_demo_classify(p, "gen")


def test_cli_demo_data_intents(tmp_path: Path) -> None:
    whetstone.init(tmp_path)
    runner = CliRunner()
    args = ["--project", str(tmp_path), "demo-data", "--dataset", "intents", "--limit", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Added 5 demo requests to task intents (classify, metric accuracy)" in result.output
    assert f'whetstone predict --task intents "{demo_data.INTENTS_TRY_IT}"' in result.output
    bad = runner.invoke(app, ["--project", str(tmp_path), "demo-data", "--dataset", "nope"])
    assert isinstance(bad.exception, InvalidInput) and "choose from addresses, intents" in str(
        bad.exception
    )
