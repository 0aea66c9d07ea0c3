"""Curation steps on small synthetic data: PII, normalisation, config errors, selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whetstone.curate import config as curate_config
from whetstone.curate.normalise import normalise
from whetstone.curate.pii import iban_ok, luhn_ok, redact
from whetstone.curate.select import k_center, quotas
from whetstone.errors import InvalidInput, NotFound


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
        normalise("  Ｆｕｌｌ\u200bwidth \t text \r\n\r\n\r\n\nnext  ") == "Fullwidth text\n\nnext"
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
