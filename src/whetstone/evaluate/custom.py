"""Custom metrics: a Python entry point `module:function` called once per record as
`fn(prediction, reference, record) -> float | dict[str, float]`."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

from whetstone.errors import InvalidInput

CustomMetric = Callable[[str, str, Any], Any]


def load_metric(spec: str) -> CustomMetric:
    """Import `module:function` (the project folder is importable when run from it)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InvalidInput(f"custom metric {spec!r}: write it as module:function")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise InvalidInput(f"custom metric {spec!r}: cannot import {module!r} ({e})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise InvalidInput(f"custom metric {spec!r}: {module!r} has no function {name!r}")
    return fn


def score_records(
    fn: CustomMetric,
    spec: str,
    predictions: list[str],
    references: list[str],
    records: list[Any],
) -> list[dict[str, float]]:
    """Per-record values of a custom metric. The metric's main value is stored under the
    function's name: a float result, or the dict's entry of that name (or 'score')."""
    name = spec.rsplit(":", 1)[-1]
    out: list[dict[str, float]] = []
    for pred, ref, rec in zip(predictions, references, records, strict=True):
        where = f"record {getattr(rec, 'id', None)}" if rec is not None else "a record"
        try:
            value = fn(pred, ref, rec)
        except Exception as e:  # any failure of user code is reported with the record
            raise InvalidInput(
                f"custom metric {spec!r} raised on {where}: {type(e).__name__}: {e}"
            ) from e
        out.append(_as_scores(value, name, spec, where))
    return out


def _as_scores(value: Any, name: str, spec: str, where: str) -> dict[str, float]:
    raw = value if isinstance(value, dict) else {name: value}
    scores: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(float(v)):
            raise InvalidInput(
                f"custom metric {spec!r} returned {v!r} for {k!r} on {where}; expected a number"
            )
        scores[str(k)] = float(v)
    if name not in scores:
        if "score" not in scores:
            raise InvalidInput(
                f"custom metric {spec!r} returned a dict without {name!r} or 'score' on {where}"
            )
        scores[name] = scores["score"]
    return scores
