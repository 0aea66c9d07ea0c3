"""The active-learning benchmark's strategies and summary on synthetic embeddings: each arm
picks what it claims to, and the labels-saved number reads the curves it is given."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from active_learning import (
    ARMS,
    TASKS,
    auc,
    bootstrap_labels,
    candidates,
    choose,
    labels_to_reach,
    parse_args,
    pick_cluster_uncertainty,
    pick_diversity,
    steps_for,
    summarise,
)


def _clusters(k: int = 4, per: int = 25, seed: int = 0) -> tuple[Any, Any]:
    """Unit vectors in k tight, far-apart clusters; the cluster of each row."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:k] * 3
    x = np.concatenate([c + 0.05 * rng.normal(size=(per, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(k), per)


def test_k_center_greedy_picks_one_point_per_cluster() -> None:
    x, cluster = _clusters()
    picks = pick_diversity(x, [], 4, random.Random(0))
    assert sorted(cluster[picks]) == [0, 1, 2, 3]
    # From what is labelled: the clusters already covered are not picked again first.
    labelled = [0, 30]  # clusters 0 and 1
    more = pick_diversity(x, labelled, 2, random.Random(0))
    assert sorted(cluster[more]) == [2, 3] and not set(more) & set(labelled)


def test_cluster_then_uncertainty_covers_clusters_and_takes_the_most_uncertain() -> None:
    x, cluster = _clusters()
    unc = np.random.default_rng(1).random(len(x))
    picks = pick_cluster_uncertainty(x, list(range(len(x))), unc, 4, seed=0)
    assert sorted(cluster[picks]) == [0, 1, 2, 3]
    for p in picks:
        members = np.flatnonzero(cluster == cluster[p])
        assert unc[p] == unc[members].max()


def test_uncertainty_alone_can_crowd_one_cluster_where_clustering_does_not() -> None:
    x, cluster = _clusters()
    unc = np.where(cluster == 2, 0.9, 0.1) + np.random.default_rng(2).random(len(x)) * 0.01
    assert set(cluster[choose("uncertainty", x, [], unc, 4, 0)]) == {2}
    assert len(set(cluster[choose("cluster-uncertainty", x, [], unc, 4, 0)])) == 4


def test_random_is_seeded_and_skips_labelled_records() -> None:
    x, _ = _clusters()
    a = choose("random", x, [1, 2, 3], None, 10, seed=0)
    assert a == choose("random", x, [1, 2, 3], None, 10, seed=0)
    assert a != choose("random", x, [1, 2, 3], None, 10, seed=1)
    assert not set(a) & {1, 2, 3} and len(set(a)) == 10


def test_curate_next_arm_runs_the_curate_next_ranking() -> None:
    x, cluster = _clusters()
    unc = np.full(len(x), 0.5)
    picks = choose("curate-next", x, [0], unc, 3, seed=0)
    # Equal uncertainty: novelty spreads the batch away from the labelled cluster 0.
    assert 0 not in picks and sorted(cluster[picks]) == [1, 2, 3]
    with pytest.raises(ValueError, match="needs the pool's uncertainty"):
        choose("curate-next", x, [], None, 3, seed=0)


def test_candidate_sample_limits_the_uncertainty_arms() -> None:
    x, _ = _clusters()
    cands = candidates(len(x), [5], 20, seed=0)
    assert len(cands) == 20 and 5 not in cands
    # At cold start every seed considers the same candidates (one base-model pass for all).
    assert candidates(len(x), [], 20, seed=0) == candidates(len(x), [], 20, seed=3)
    unc = np.random.default_rng(0).random(len(x))
    for arm in ("uncertainty", "curate-next", "cluster-uncertainty"):
        assert set(choose(arm, x, [5], unc, 4, 0, limit=20)) <= set(cands), arm
    assert set(ARMS) >= {"random", "curate-next", "uncertainty", "diversity"}


def test_labels_to_reach_and_area_under_the_curve() -> None:
    budgets = [40, 80, 160]
    assert labels_to_reach(budgets, [0.1, 0.3, 0.5], 0.4) == pytest.approx(120.0)
    assert labels_to_reach(budgets, [0.5, 0.6, 0.7], 0.4) == 40.0
    assert labels_to_reach(budgets, [0.1, 0.2, 0.3], 0.4) is None
    assert auc([40, 80], [0.2, 0.4]) == pytest.approx(0.3)
    # Random ends at 0.5; the other arm is there at 80 labels in every seed.
    curves = {
        "random": {40: [0.2, 0.21, 0.19], 80: [0.3, 0.31, 0.29], 160: [0.5, 0.5, 0.5]},
        "better": {40: [0.3, 0.3, 0.3], 80: [0.5, 0.5, 0.5], 160: [0.6, 0.6, 0.6]},
    }
    out = bootstrap_labels(curves, budgets, resamples=200)
    assert out["random"]["labels"] == 160.0
    assert out["better"]["labels"] == 80.0 and out["better"]["interval_95"] == [80.0, 80.0]
    assert out["better"]["of_random_budget"] == 0.5


def test_steps_are_fixed_or_grow_with_the_labels() -> None:
    assert [steps_for(b, None) for b in (40, 320)] == [40, 80]
    assert [steps_for(b, 60) for b in (40, 320)] == [60, 60]
    assert [steps_for(b, None, 1.5) for b in (20, 80, 320)] == [40, 120, 480]
    assert parse_args(["--steps-per-label", "1"]).steps_per_label == 1.0


def test_addresses_keep_their_settings_and_other_tasks_get_their_own() -> None:
    a = parse_args([])
    assert (a.task, a.out, a.budgets) == ("addresses", "active_learning", "40,80,160,320")
    assert (a.test, a.test_max, a.validation, a.pool) == (400, 400, 40, 900)
    assert a.work == Path.home() / ".cache" / "whetstone-bench" / "active-learning"
    i = parse_args(["--task", "intents", "--test-max", "60", "--out", "/tmp/x"])
    assert (i.out, i.test_max, i.test, i.budgets) == ("/tmp/x", 60, 150, "20,40,80,160")
    assert "intents" in str(i.work) and parse_args(["--task", "intents"]).out.endswith("intents")
    for spec in TASKS.values():
        rows = spec.rows()
        # The split fits the task's data and every reference is stored as text.
        assert spec.test + spec.validation + spec.pool <= len(rows)
        assert max(spec.budgets) <= spec.pool and isinstance(rows[0][1], str)


def test_summary_follows_the_tasks_main_metric() -> None:
    def state(arm: str, budget: int, seed: int, acc: float) -> dict[str, Any]:
        m = {"accuracy": {"value": acc}, "macro_f1": {"value": acc / 2}}
        return {"arm": arm, "budget": budget, "seed": seed, "metrics": m}

    states = [
        state(arm, b, s, acc)
        for s in (0, 1)
        for arm, accs in (("random", (0.4, 0.6)), ("curate-next", (0.6, 0.8)))
        for b, acc in zip((20, 40), accs, strict=True)
    ]
    out = summarise(states, None, [20, 40], TASKS["intents"].metrics)
    row = out["arms"]["curate-next"]
    assert row["auc_accuracy"] == pytest.approx(0.7)
    assert row["points"]["40"]["macro_f1"]["mean"] == pytest.approx(0.4)
    assert out["labels_to_reach_random_final"]["curate-next"]["labels"] == 20.0
