"""The curation-value benchmark's noise: the corruption it claims is the corruption it makes."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from curation_value import corrupt, near_duplicate

from whetstone.demo_data import demo_rows, demo_schema


def _canon(ref: dict[str, str]) -> str:
    return json.dumps(ref, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_corrupt_makes_the_noise_it_names() -> None:
    rows = demo_rows(300)
    refs = [r for _, r in rows]
    schema = demo_schema()
    out, kinds = corrupt(refs, list(schema["properties"]), 0.3, seed=0)
    assert sum(k is not None for k in kinds) == 90
    assert {k for k in kinds if k} == {"wrong_field", "swapped", "truncated"}
    for ref, new, kind in zip(refs, out, kinds, strict=True):
        if kind is None:
            assert new == _canon(ref)
        elif kind == "truncated":
            assert _canon(ref).startswith(new) and new != _canon(ref)
        else:
            # Wrong fields and swaps are valid JSON that passes the schema: only a model's
            # loss can find them, not validation.
            obj = json.loads(new)
            jsonschema.validate(obj, schema)
            assert obj != ref
    swapped = [i for i, k in enumerate(kinds) if k == "swapped"]
    assert len(swapped) % 2 == 0
    assert sorted(out[i] for i in swapped) == sorted(_canon(refs[i]) for i in swapped)
    assert corrupt(refs, list(schema["properties"]), 0.3, seed=0) == (out, kinds)
    assert corrupt(refs, list(schema["properties"]), 0.3, seed=1)[0] != out


def test_near_duplicates_keep_a_correct_reference() -> None:
    rng = random.Random(0)
    for text, ref in demo_rows(200):
        dup, dup_ref, kind = near_duplicate(text, ref, rng)
        assert dup != text
        flat, dup_flat = " ".join(text.split()), " ".join(dup.split())
        for key, value in ref.items():
            # A value copied from the address is still copied from the changed address.
            if value in flat:
                assert dup_ref[key] in dup_flat, (kind, dup, dup_ref[key])
        if kind == "case":
            assert dup_ref in (
                {k: v.upper() for k, v in ref.items()},
                {k: v.lower() for k, v in ref.items()},
            )
        else:
            assert dup_ref == ref
