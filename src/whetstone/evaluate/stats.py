"""Confidence intervals and paired tests, vectorised with numpy.

0/1 metrics get the Wilson score interval; every other aggregate a percentile bootstrap.

Every aggregate metric is a function of column sums (see `metrics.Columns`). A bootstrap
resample is a vector of counts (how often each record was drawn), so one matrix product
`counts @ columns` gives the sums of every column for every resample at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from statistics import NormalDist
from typing import Any

import numpy as np

from whetstone.evaluate.metrics import Columns

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
# Cap on resamples x records per block, so large evaluations do not need gigabytes.
_BLOCK_CELLS = 2_000_000


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of shape (b, n): row j counts how often each record is in resample j."""
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, _BLOCK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)
        done += b


def _sums(cols: Columns, counts: np.ndarray) -> Any:
    names = list(cols.data)
    sums = counts @ np.column_stack([cols.data[k] for k in names])
    index = {k: i for i, k in enumerate(names)}
    return lambda col: sums[:, index[col]]


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap(
    cols: Columns,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Percentile-bootstrap interval for every aggregate: {name: {value, low, high}}."""
    if cols.n == 0:
        raise ValueError("no records to compute intervals over")
    point = cols.point()
    draws: dict[str, list[np.ndarray]] = {k: [] for k in cols.formulas}
    for counts in resample_counts(cols.n, resamples, seed):
        S = _sums(cols, counts)
        for name, f in cols.formulas.items():
            draws[name].append(np.broadcast_to(np.asarray(f(S), dtype=float), (len(counts),)))
    out = {}
    for name in cols.formulas:
        low, high = _interval(np.concatenate(draws[name]), alpha)
        out[name] = {"value": point[name], "low": low, "high": high}
    return out


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n.

    Used instead of the bootstrap for 0/1 metrics: a percentile bootstrap of 0/100 resamples
    only zeros and claims [0, 0], while Wilson gives [0, 0.037]. Wilson rather than
    Clopper-Pearson because its coverage stays close to the nominal level where the exact
    interval is conservative (Brown, Cai & DasGupta 2001), and it is closed-form."""
    if n <= 0:
        raise ValueError("no records to compute an interval over")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def intervals(
    cols: Columns,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Every aggregate with its interval: Wilson for the means of a 0/1 column (exact match,
    accuracy, validity rates, 0/1 custom metrics), percentile bootstrap for the others."""
    out = bootstrap(cols, resamples=resamples, seed=seed, alpha=alpha)
    for metric, column in cols.binary.items():
        low, high = wilson(round(float(cols.data[column].sum())), cols.n, alpha)
        out[metric] = {**out[metric], "low": low, "high": high}
    return out


def paired_bootstrap(
    a: Columns,
    b: Columns,
    metric: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Interval for metric(a) - metric(b) over the same records, resampled together, so the
    noise both models share (easy or hard records) cancels. `p_value` is the two-sided
    bootstrap probability that the difference has the other sign (or is zero)."""
    if a.n != b.n:
        raise ValueError(f"paired comparison needs the same records ({a.n} vs {b.n})")
    if a.n == 0:
        raise ValueError("no records to compare")
    fa, fb = a.formulas[metric], b.formulas[metric]
    diff = a.point()[metric] - b.point()[metric]
    parts = []
    for counts in resample_counts(a.n, resamples, seed):
        d = np.asarray(fa(_sums(a, counts)), dtype=float) - np.asarray(
            fb(_sums(b, counts)), dtype=float
        )
        parts.append(np.broadcast_to(d, (len(counts),)))
    samples = np.concatenate(parts)
    low, high = _interval(samples, alpha)
    if diff > 0:
        p = 2 * float(np.mean(samples <= 0))
    elif diff < 0:
        p = 2 * float(np.mean(samples >= 0))
    else:
        p = 1.0
    return {"diff": diff, "low": low, "high": high, "p_value": min(1.0, p)}


def mcnemar(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> dict[str, Any]:
    """McNemar's test for paired 0/1 outcomes. Exact two-sided binomial test when there are
    fewer than 25 discordant pairs, else chi-square with continuity correction."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("McNemar needs paired outcomes of the same length")
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0, "method": "none"}
    if n < 25:
        k = min(only_a, only_b)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return {
            "only_a": only_a,
            "only_b": only_b,
            "p_value": min(1.0, 2 * tail),
            "method": "exact",
        }
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n
    p = math.erfc(math.sqrt(chi2 / 2))  # survival function of chi-square with 1 dof
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "method": "chi2"}


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
