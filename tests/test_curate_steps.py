"""Curation steps on small synthetic data: PII, normalisation, config errors, selection,
label noise (grounded extract values, robust loss cut-off, batched losses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from whetstone.curate import config as curate_config
from whetstone.curate.noise import robust_cutoff, ungrounded_keys
from whetstone.curate.normalise import clean_record_text
from whetstone.curate.pii import iban_ok, luhn_ok, redact
from whetstone.curate.select import k_center, quotas
from whetstone.curate.state import Row
from whetstone.errors import InvalidInput, NotFound
from whetstone.records import Kind, Record, Status, Task


def test_luhn_and_iban_checks() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32")
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82 WEST 1234 5698 7654 33")


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("write to jane.doe+x@mail.example.org today", "write to <EMAIL> today", {"email": 1}),
        ("card 4111 1111 1111 1111, thanks", "card <CARD>, thanks", {"card": 1}),
        ("card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn", {}),
        ("pay to DE89 3704 0044 0532 0130 00 now", "pay to <IBAN> now", {"iban": 1}),
        ("from 192.168.0.12 and 2001:db8::ff00:42:8329", "from <IP> and <IP>", {"ip": 2}),
        ("not an ip: 300.1.2.3, a time 10:30:00", "not an ip: 300.1.2.3, a time 10:30:00", {}),
        ("call +1 415 555 2671 or (555) 123-4567", "call <PHONE> or <PHONE>", {"phone": 2}),
        ("shipped 2024-01-15, order 12345", "shipped 2024-01-15, order 12345", {}),
        ("Springfield IL 62704-1234 or 627041234", "Springfield IL 62704-1234 or 627041234", {}),
        ("ring 912 345 678", "ring <PHONE>", {"phone": 1}),
    ],
)
def test_redact(text: str, expected: str, kinds: dict[str, int]) -> None:
    out, counts = redact(text)
    assert out == expected
    assert dict(counts) == kinds


def test_redact_only_chosen_types() -> None:
    out, counts = redact("a@b.io 4111111111111111", ["card"])
    assert out == "a@b.io <CARD>"
    assert dict(counts) == {"card": 1}


def test_normalise() -> None:
    assert (
        clean_record_text("  Ｆｕｌｌ\u200bwidth \t text \r\n\r\n\r\n\nnext  ")
        == "Fullwidth text\n\nnext"
    )


def _cfg(data: dict) -> curate_config.CurateConfig:
    return curate_config.parse(data, "curate.yaml")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"steps": ["validate", "dedupe"]}, "known steps: validate, filters"),
        ({"jaccard": 1.5}, "jaccard"),
        ({"cosine": -0.1}, "cosine"),
        ({"budget": 0}, "budget"),
        ({"deny": ["ok", "(unclosed"]}, "deny"),
        ({"tresholds": 1}, "tresholds"),
        ({"validation": 0.5, "test": 0.5}, "validation + test"),
        ({"pii_types": ["ssn"]}, "unknown PII type"),
        ({"grounded_values": "maybe"}, "grounded_values"),
        ({"grounded_values": [True]}, "grounded_values"),
        ({"loss_mad_k": 0}, "loss_mad_k"),
        ({"loss_z": 2.0}, "loss_z"),  # replaced by loss_mad_k: an error, not silently ignored
    ],
)
def test_bad_config(data: dict, needle: str) -> None:
    with pytest.raises(InvalidInput, match=r"curate\.yaml") as e:
        _cfg(data)
    assert needle in str(e.value)


def test_config_from_file(project, tmp_path: Path) -> None:
    f = tmp_path / "curate.yaml"
    f.write_text("steps: [validate, split]\njaccard: 0.9\n")
    cfg = curate_config.load(project, f, budget=10)
    assert cfg.steps == ["validate", "split"] and cfg.jaccard == 0.9 and cfg.budget == 10
    f.write_text("jaccard: 2\n")
    with pytest.raises(InvalidInput, match=r"curate\.yaml: jaccard"):
        curate_config.load(project, f)
    with pytest.raises(NotFound):
        curate_config.load(project, tmp_path / "missing.yaml")


def test_k_center_covers_every_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4]
    vecs = np.concatenate([c + 0.05 * rng.standard_normal((25, 8)) for c in centres]).astype(
        np.float32
    )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    picks = k_center(vecs, 4, [])
    assert sorted(p // 25 for p in picks) == [0, 1, 2, 3]
    # Seeds are kept and the rest still spreads out.
    picks = k_center(vecs, 4, [0, 1])
    rest = {p // 25 for p in picks[2:]}
    assert picks[:2] == [0, 1] and len(rest) == 2 and 0 not in rest


def test_quotas_are_proportional_and_complete() -> None:
    assert quotas({"a": 80, "b": 20}, 10) == {"a": 8, "b": 2}
    q = quotas({"a": 98, "b": 1, "c": 1}, 5)
    assert sum(q.values()) == 5 and q["b"] == 1 and q["c"] == 1
    assert quotas({"a": 2, "b": 50}, 10) == {"a": 1, "b": 9}
    assert quotas({"a": 3, "b": 3, "c": 3}, 2) == {"a": 1, "b": 1, "c": 0}


def test_config_grounded_values_defaults_on_and_can_be_turned_off() -> None:
    assert _cfg({}).grounded_values is True
    assert _cfg({"grounded_values": False}).grounded_values is False


# ---- label noise -----------------------------------------------------------------------------
ADDRESS_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("number", "street", "city", "zip")},
    "additionalProperties": False,
}
ADDRESSES = [
    (
        "12 Oak Street, Springfield 01101",
        {"number": "12", "street": "Oak Street", "city": "Springfield", "zip": "01101"},
    ),
    (
        "7 Elm Road, Shelbyville 02202",
        {"number": "7", "street": "Elm Road", "city": "Shelbyville", "zip": "02202"},
    ),
    (
        "300 Pine Avenue, Ogdenville 03303",
        {"number": "300", "street": "Pine Avenue", "city": "Ogdenville", "zip": "03303"},
    ),
    (
        "45 Maple Lane, North Haverbrook 04404",
        {"number": "45", "street": "Maple Lane", "city": "North Haverbrook", "zip": "04404"},
    ),
]


def test_ungrounded_keys_name_values_not_taken_from_the_input() -> None:
    text, ref = ADDRESSES[0]
    assert ungrounded_keys(text, json.dumps(ref)) == []
    # Swapped with another record: every value is foreign except what they share.
    assert ungrounded_keys(text, json.dumps(ADDRESSES[1][1])) == ["number", "street", "city", "zip"]
    assert ungrounded_keys(text, json.dumps({**ref, "city": "Shelbyville"})) == ["city"]
    # Case, unicode width and spacing do not matter; a value may join words the text keeps apart.
    assert (
        ungrounded_keys("12  OAK street, ＳＰＲＩＮＧＦＩＥＬＤ", json.dumps(ref | {"zip": "12"}))
        == []
    )
    assert ungrounded_keys("Route 30 & Route 45", json.dumps({"street": "30 45"})) == []
    # Nested values are named by their path; numbers and non-JSON are not checked.
    nested = {"a": {"b": ["Oak", "Birch"]}, "n": 99}
    assert ungrounded_keys(text, json.dumps(nested)) == ["a.b.1"]
    assert ungrounded_keys(text, '{"number": "12", "str') == []


def test_robust_cutoff_is_not_inflated_by_outliers() -> None:
    losses = [0.10, 0.12, 0.11, 0.09, 0.10, 0.13, 0.08, 5.0, 6.0]
    cut = robust_cutoff(losses, 3.0)
    assert 0.13 < cut < 1.0  # both outliers are above it, every typical loss below
    assert float(np.mean(losses) + 2 * np.std(losses)) > 5.0  # mean + 2 std would miss one
    # No spread in the majority: the mean absolute deviation still separates the odd one out.
    assert 1.0 < robust_cutoff([1.0, 1.0, 1.0, 1.0, 2.0], 3.0) < 2.0
    assert robust_cutoff([1.0, 1.0, 1.0], 3.0) == float("inf")
    assert robust_cutoff([1.0, 9.0], 3.0) == float("inf")


def test_batched_losses_equal_one_row_at_a_time(tiny_base_dir: Path) -> None:
    """Padded batches of mixed lengths give each row the loss training's own encoding gives it
    alone: padding carries no loss and changes no real token."""
    import torch

    from whetstone.models import base
    from whetstone.models.decoding import Decoder
    from whetstone.train.data import encode_example
    from whetstone.train.scoring import reference_losses

    model, tok = base.load(str(tiny_base_dir))
    stop_ids = Decoder.of(model, tok).stop_ids
    task = Task(name="addr", kind=Kind.extract, schema=ADDRESS_SCHEMA)
    items = [(t, json.dumps(r, sort_keys=True)) for t, r in ADDRESSES]
    items += [("a short one: 1 A St, B 2", json.dumps({"number": "1", "street": "A St"}))]
    items += [(t + " " + t, r) for t, r in items[:2]]  # longer prompts, so batches need padding
    rows = [
        Row(record=Record(id=i + 1, task="addr", input=t, reference=r), input=t, reference=r)
        for i, (t, r) in enumerate(items)
    ]
    expected = []
    with torch.inference_mode():
        for row in rows:
            ex = encode_example(tok, task, row.record, stop_ids=stop_ids)
            ids = torch.tensor([ex.ids])
            expected.append(float(model(input_ids=ids, labels=torch.tensor([ex.labels])).loss))
    assert len({len(encode_example(tok, task, r.record, stop_ids=stop_ids)) for r in rows}) > 3
    for batch_size in (16, 3, 1):
        pairs = [(r.input, r.reference) for r in rows]
        got = reference_losses(model, tok, task, pairs, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-4)


def test_swapped_extract_references_are_flagged_or_dropped_with_the_keys(project) -> None:
    from whetstone.curate import curate, decisions_for

    p = project
    p.create_task("addr", "extract", schema=ADDRESS_SCHEMA)
    refs = [r for _, r in ADDRESSES]
    refs[0], refs[1] = refs[1], refs[0]  # two records' references swapped
    ids = p.store.add_records(
        [
            Record(task="addr", input=t, reference=json.dumps(r), status=Status.accepted)
            for (t, _), r in zip(ADDRESSES, refs, strict=True)
        ]
    )
    steps = {"steps": ["validate", "noise", "split"], "test": 0.0, "validation": 0.0}
    res = curate(p, "addr", steps)
    assert set(res.snapshot.ids("all")) == set(ids)  # flagged, not dropped
    noise = next(s for s in res.steps if s.name == "noise")
    assert noise.flagged == 2 and noise.removed == 0
    why = [d for d in decisions_for(p, ids[0]) if d["step"] == "noise"]
    assert why[0]["action"] == "flagged"
    # Keys in the canonical (sorted) order validation stores references in.
    assert why[0]["reason"] == "reference values not found in the input: city, number, street, zip"
    assert why[0]["detail"]["keys"] == ["city", "number", "street", "zip"]
    assert not [d for d in decisions_for(p, ids[2]) if d["step"] == "noise"]

    dropped = curate(p, "addr", {**steps, "drop_noisy": True})
    assert set(dropped.snapshot.ids("all")) == set(ids[2:])
    newest = [d for d in decisions_for(p, ids[1]) if d["snapshot"] == dropped.snapshot.id]
    assert [d["action"] for d in newest if d["step"] == "noise"] == ["removed"]

    off = curate(p, "addr", {**steps, "drop_noisy": True, "grounded_values": False})
    assert set(off.snapshot.ids("all")) == set(ids)


def test_misfiled_values_finds_values_under_the_wrong_key() -> None:
    """Span-level confident disagreement on 200 bundled addresses: values of two keys exchanged,
    or a value moved to another key, are found; clean references are rarely suspected."""
    from whetstone.curate.spans import misfiled_values
    from whetstone.demo_data import demo_rows

    rows = demo_rows(200)
    texts = [t for t, _ in rows]
    refs = [dict(r) for _, r in rows]
    # Ten different slips, each made once: a systematic error repeated across many records is
    # what the data implies, and no rule that learns from the data can call it wrong.
    moves = [
        ("zip_code", "place_name"),
        ("address_number", "street_name_post_type"),
        ("place_name", "state_name"),
        ("street_name", "zip_code"),
        ("address_number", "occupancy_identifier"),
        ("state_name", "street_name"),
        ("zip_code", "address_number"),
        ("place_name", "recipient"),
        ("street_name_post_type", "place_name"),
        ("address_number", "zip_code"),
    ]
    bad = set()
    for i, ref in enumerate(refs):
        if not moves:
            break
        a, b = moves[0]
        if a not in ref or ref.get(b) == ref[a]:
            continue
        moves.pop(0)
        if b in ref:  # two keys' values exchanged
            ref[a], ref[b] = ref[b], ref[a]
        else:  # a value moved to a key the reference lacks
            ref[b] = ref.pop(a)
        bad.add(i)
    found = {m.row for m in misfiled_values(texts, [json.dumps(r) for r in refs], folds=5)}
    assert len(bad) == 10
    # Misses are values whose wrong key fits where they sit: "Evanston" as the state before a
    # zip code, "Main" as the state of "Main, Ashland, NH".
    assert len(found & bad) >= 8
    assert len(found - bad) <= 10  # at most 5% of the clean rows
    first = min(bad)
    one = next(
        m for m in misfiled_values(texts, [json.dumps(r) for r in refs], 5) if m.row == first
    )
    assert one.suggested != one.key and one.p_given < 0.01


def test_default_dedup_keeps_distinct_addresses_and_removes_real_near_copies(
    project: Any,
) -> None:
    from whetstone.curate import curate
    from whetstone.records import Source

    base = "Ship order 885440 to 6312 Lake Blvd, Springfield 43936"
    distinct = [
        "Ship order 885440 to 17 Lake Blvd, Springfield 43936",  # house number (cosine 0.975)
        "Ship order 735921 to 9298 Lake Blvd, Springfield 31715",  # other numbers (0.974)
        "Ship order 885440 to 6312 Maple Dr, Springfield 43936",  # street
    ]
    copies = [
        "SHIP ORDER 885440 TO 6312  LAKE BLVD, SPRINGFIELD 43936",  # case and whitespace
        "Ship order 885440 to 6312 Lake Blvd Springfield 43936",  # a comma dropped
        "Ship order 885440 to 6312 Lake Blvd; Springfield 43936.",  # other punctuation
        "Ship order 885440 to 6312 Lake Blvd, Sprngfield 43936",  # a typo
    ]
    project.create_task("ship", "generate")
    ids = project.store.add_records(
        [
            Record(task="ship", input=t, reference="ok", source=Source.imported)
            for t in [base, *distinct, *copies]
        ]
    )
    res = curate(project, "ship", {"steps": ["validate", "dedup"], "card": False})
    kept = set(res.snapshot.ids("all"))
    assert set(ids[1:4]) <= kept  # no distinct address is a duplicate
    assert len(kept & {ids[0], *ids[4:]}) == 1  # the original and its copies: one is left
