"""Metrics, bootstrap intervals and paired tests on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from whetstone.errors import InvalidInput
from whetstone.evaluate import metrics as m
from whetstone.evaluate.stats import bootstrap, intervals, mcnemar, paired_bootstrap, wilson
from whetstone.records import Task

GEN = Task(name="gen", kind="generate")
CLS = Task(name="cls", kind="classify", labels=["positive", "negative", "not sure"])
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]+$"}},
    "required": ["city"],
}
EXT = Task(name="ext", kind="extract", schema=SCHEMA)


def test_generate_normalised_exact_match_and_token_f1() -> None:
    s = m.per_example(GEN, "The  Eiffel Tower!", "eiffel tower")
    assert s["exact_match"] == 1.0 and s["token_f1"] == 1.0
    s = m.per_example(GEN, "Eiffel tower in Paris", "the Eiffel Tower")
    assert s["exact_match"] == 0.0
    # 2 shared tokens; precision 2/4, recall 2/2 -> F1 = 2/3
    assert s["token_f1"] == pytest.approx(2 / 3)
    assert m.per_example(GEN, "", "")["token_f1"] == 1.0
    assert m.per_example(GEN, "abc", "xyz")["token_f1"] == 0.0


def test_generate_chrf_ranks_closer_answers_higher() -> None:
    same = m.per_example(GEN, "hello world", "hello world")["chrf"]
    near = m.per_example(GEN, "hello wrld", "hello world")["chrf"]
    far = m.per_example(GEN, "zzz", "hello world")["chrf"]
    assert same == pytest.approx(1.0) and 0 < near < same and far < near


def test_main_score_by_kind() -> None:
    assert m.main_score(GEN, ["a cat", "dog"], ["cat", "cat"]) == 0.5
    assert m.main_score(CLS, ["Positive.", "negative"], ["positive", "positive"]) == 0.5
    # extract: micro F1 over fields (tp=1, fp=0, fn=1 -> 2/3)
    assert m.main_score(
        EXT, ['{"city": "Paris"}'], ['{"city": "paris", "zip": "75"}']
    ) == pytest.approx(2 / 3)


def test_label_normalisation_and_unmapped_answers() -> None:
    assert m.map_label("  POSITIVE. ", CLS.labels or []) == "positive"
    assert m.map_label("Not-sure", CLS.labels or []) is None  # the hyphen joins the words
    assert m.map_label("not  sure!", CLS.labels or []) == "not sure"
    assert m.map_label("positive, I think", CLS.labels or []) is None
    preds = ["positive", "negative!", "maybe", "Negative", "positive"]
    refs = ["positive", "negative", "negative", "positive", "negative"]
    agg = m.aggregate(CLS, preds, refs)
    assert agg["accuracy"] == pytest.approx(2 / 5)
    assert agg["valid_label"] == pytest.approx(4 / 5)
    assert agg["precision[positive]"] == pytest.approx(1 / 2)
    assert agg["recall[negative]"] == pytest.approx(1 / 3)
    # per-label F1: positive 1/2, negative 2*1/(2+1+2)=2/5, not sure 0 -> mean
    assert agg["macro_f1"] == pytest.approx((0.5 + 0.4 + 0.0) / 3)
    conf = m.confusion(CLS, preds, refs)
    assert conf["matrix"]["negative"] == {"positive": 1, "negative": 1, "not sure": 0, "(none)": 1}
    assert conf["unmapped_count"] == 1 and conf["unmapped_examples"] == ["maybe"]


def test_extract_invalid_json_schema_failure_and_field_f1() -> None:
    ref = '{"city": "Springfield", "zip": "12345"}'
    bad = m.per_example(EXT, "city: Springfield", ref)
    assert bad["json_valid"] == 0 and bad["schema_valid"] == 0 and bad["field_f1"] == 0
    assert (bad["field_tp"], bad["field_fp"], bad["field_fn"]) == (0, 0, 2)
    schema_fail = m.per_example(EXT, '{"city": "springfield", "zip": "12a"}', ref)
    assert schema_fail["json_valid"] == 1 and schema_fail["schema_valid"] == 0
    assert (schema_fail["field_tp"], schema_fail["field_fp"], schema_fail["field_fn"]) == (1, 1, 1)
    ok = m.per_example(EXT, '{"zip": "12345", "city": " SPRINGFIELD ", "state": null}', ref)
    assert ok["schema_valid"] == 1 and ok["object_exact"] == 1 and ok["field_f1"] == 1
    agg = m.aggregate(
        EXT,
        ['{"city": "Springfield"}', '{"city": "Paris", "zip": "1"}', "nope"],
        [ref, '{"city": "Paris", "zip": "2"}', '{"city": "Rome"}'],
    )
    # tp = 1 + 1, fp = 0 + 1, fn = 1 + 1 + 1
    assert agg["field_precision"] == pytest.approx(2 / 3)
    assert agg["field_recall"] == pytest.approx(2 / 5)
    assert agg["field_f1"] == pytest.approx(4 / 8)
    assert agg["f1[city]"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert agg["f1[zip]"] == pytest.approx(0.0)
    assert agg["json_valid"] == pytest.approx(2 / 3)


def test_custom_metric_entry_point_and_errors(tmp_path, monkeypatch) -> None:
    from whetstone.errors import InvalidInput

    (tmp_path / "mymetrics.py").write_text(
        "def length_ok(pred, ref, rec):\n    return float(len(pred) <= len(ref))\n"
        "def broken(pred, ref, rec):\n    raise ZeroDivisionError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = Task(name="gen", kind="generate", metric="mymetrics:length_ok")
    assert m.main_score(task, ["ab", "abcdef"], ["abc", "abc"]) == 0.5
    with pytest.raises(InvalidInput, match=r"mymetrics:broken.*ZeroDivisionError"):
        m.main_score(Task(name="g", kind="generate", metric="mymetrics:broken"), ["a"], ["b"])
    with pytest.raises(InvalidInput, match="no function 'nope'"):
        m.main_score(Task(name="g", kind="generate", metric="mymetrics:nope"), ["a"], ["b"])


def test_bootstrap_interval_contains_point_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400, 4000):
        hits = rng.random(n) < 0.7
        preds = ["yes" if h else "no" for h in hits]
        ci = bootstrap(m.columns(GEN, preds, ["yes"] * n))["exact_match"]
        assert ci["low"] <= ci["value"] <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    cols = m.columns(GEN, ["a", "b", "c", "a"], ["a", "a", "c", "b"])
    assert bootstrap(cols, seed=3) == bootstrap(cols, seed=3)


def test_binary_metrics_get_wilson_intervals_not_a_degenerate_bootstrap() -> None:
    # 0/100: a percentile bootstrap only ever resamples zeros and claims [0, 0]; Wilson's upper
    # bound is z^2 / (n + z^2) = 3.8415 / 103.8415 (the exact one would be 3.6%).
    none = intervals(m.columns(GEN, ["no"] * 100, ["yes"] * 100))
    assert none["exact_match"]["value"] == 0.0 and none["exact_match"]["low"] == 0.0
    assert none["exact_match"]["high"] == pytest.approx(0.036994, abs=1e-6)
    every = intervals(m.columns(GEN, ["yes"] * 100, ["yes"] * 100))["exact_match"]
    assert every["value"] == 1.0 and every["low"] == pytest.approx(1 - 0.036994, abs=1e-6)
    assert every["high"] == 1.0
    # A non-0/1 aggregate keeps its bootstrap interval.
    cols = m.columns(GEN, ["yes no", "no"] * 20, ["yes"] * 40)
    assert intervals(cols, seed=3)["token_f1"] == bootstrap(cols, seed=3)["token_f1"]


def test_wilson_matches_a_reference_implementation() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 100), (37, 120), (7, 9), (250, 250)):
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    # Wilson's textbook example (Newcombe 1998, table I): 81/263 -> 0.2553 .. 0.3662
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_paired_bootstrap_sign_and_mcnemar() -> None:
    n = 200
    refs = ["yes"] * n
    better = ["yes" if i % 10 else "no" for i in range(n)]  # 90% right
    worse = ["yes" if i % 2 else "no" for i in range(n)]  # 50% right
    a, b = m.columns(GEN, better, refs), m.columns(GEN, worse, refs)
    d = paired_bootstrap(a, b, "exact_match")
    assert d["diff"] == pytest.approx(0.4) and 0 < d["low"] <= d["diff"] <= d["high"]
    r = paired_bootstrap(b, a, "exact_match")
    assert r["high"] < 0 and r["diff"] == pytest.approx(-0.4)
    assert paired_bootstrap(a, a, "exact_match")["diff"] == 0


def test_mcnemar_known_values() -> None:
    # 1 vs 6 discordant pairs: exact two-sided binomial p = 2 * (1 + 7) / 2**7
    r = mcnemar([1] + [0] * 6 + [1] * 5, [0] + [1] * 6 + [1] * 5)
    assert (r["only_a"], r["only_b"], r["method"]) == (1, 6, "exact")
    assert r["p_value"] == pytest.approx(0.125)
    assert mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    # 30 vs 10 discordant: chi2 = (20 - 1)^2 / 40 = 9.025, p = 0.002663 (scipy.stats.chi2.sf)
    big = mcnemar([1] * 30 + [0] * 10, [0] * 30 + [1] * 10)
    assert big["method"] == "chi2" and big["p_value"] == pytest.approx(0.0026636, rel=1e-3)


# ---- calibration -------------------------------------------------------------------------
def test_ece_of_calibrated_answers_is_zero() -> None:
    # 20 answers at probability 0.75 of which 15 are right, 20 at 0.35 of which 7 are right.
    conf = [math.log(0.75)] * 20 + [math.log(0.35)] * 20
    correct = [1.0] * 15 + [0.0] * 5 + [1.0] * 7 + [0.0] * 13
    cal = m.calibration(conf, correct)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9) and cal["n"] == 40
    assert [b["n"] for b in cal["bins"]] == [0, 0, 0, 20, 0, 0, 0, 20, 0, 0]
    assert cal["bins"][7]["accuracy"] == pytest.approx(0.75)
    assert cal["bins"][7]["confidence"] == pytest.approx(0.75)
    assert cal["bins"][0]["confidence"] is None and cal["bins"][0]["accuracy"] is None


def test_ece_of_overconfident_answers() -> None:
    # Certain (log-prob 0, in the top bin) and right half the time: ECE 0.5.
    assert m.calibration([0.0] * 4, [1.0, 0.0, 1.0, 0.0])["ece"] == pytest.approx(0.5)
    # 10 at 0.93 (6 right), 10 at 0.97 (all right): one bin of mean 0.95 and accuracy 0.8 at
    # 10 bins; at 20 bins two: |0.6 - 0.93| / 2 + |1.0 - 0.97| / 2.
    conf = [math.log(0.93)] * 10 + [math.log(0.97)] * 10
    correct = [1.0] * 6 + [0.0] * 4 + [1.0] * 10
    cal = m.calibration(conf, correct)
    assert cal["ece"] == pytest.approx(0.15) and cal["bins"][-1]["n"] == 20
    assert m.calibration(conf, correct, bins=20)["ece"] == pytest.approx(0.18)


def test_ece_leaves_out_answers_without_confidence() -> None:
    cal = m.calibration([None, None, math.log(0.55), math.log(0.55)], [0.0, 0.0, 1.0, 0.0])
    assert cal["n"] == 2 and cal["ece"] == pytest.approx(0.05)
    assert m.calibration([None], [1.0])["ece"] is None
    with pytest.raises(InvalidInput, match="at least one bin"):
        m.calibration([0.0], [1.0], bins=0)


ITEMS = Task(name="items", kind="generate", metric="item_f1")


def test_item_f1_on_list_answers() -> None:
    # JSON arrays and comma / newline lists name the same normalised items, in any order.
    assert m.item_f1('["Paris", "Rome"]', "rome, paris") == 1.0
    assert m.item_f1("- Paris\n- The Rome.\n", '["paris","rome"]') == 1.0
    # 1 shared item of 2 predicted and 3 wanted: 2*1 / (2+3).
    assert m.item_f1("Paris, Oslo", "Paris\nRome\nMadrid") == pytest.approx(0.4)
    assert m.item_f1("Oslo", "Paris") == 0.0
    assert m.item_f1("", "[]") == 1.0 and m.item_f1("", "Paris") == 0.0
    # Repeats count once: it is a set F1.
    assert m.item_f1("Paris, paris, Rome", "Paris, Rome") == 1.0
    assert m.answer_items('[1, 2.5, "x, y"]') == {"1", "25", "x y"}  # an element stays whole


def test_item_f1_is_the_main_metric_only_where_chosen() -> None:
    preds, refs = ["Paris, Rome", "Oslo"], ["rome, paris", "Oslo, Bern"]
    assert m.main_score(ITEMS, preds, refs) == pytest.approx((1.0 + 2 / 3) / 2)
    assert m.columns(ITEMS, preds, refs).main == "item_f1"
    assert "item_f1" not in m.aggregate(GEN, preds, refs)
    assert m.main_score(GEN, preds, refs) == 0.0  # exact match: neither answer is verbatim
    bad = Task(name="c", kind="classify", labels=["a"], metric="item_f1")
    with pytest.raises(InvalidInput, match="metric 'item_f1' is not one of"):
        m.main_score(bad, ["a"], ["a"])
