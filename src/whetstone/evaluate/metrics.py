"""Metrics by task kind: pure functions of (prediction, reference) pairs.

Every aggregate metric is written as a function of *column sums* over per-record numbers
(`Columns`), so that the same formula gives the point value (plain sums) and every bootstrap
resample (count-weighted sums) without re-running anything: see `whetstone.evaluate.stats`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whetstone.errors import InvalidInput

# Label matching and the schema check live in prompts, below every stage, because the
# cascade's checks (`prompts.answer_fails_checks`) use the very same rules; re-exported here.
from whetstone.prompts import map_label as map_label
from whetstone.prompts import normalise_label as normalise_label
from whetstone.prompts import schema_valid
from whetstone.records import Kind, Task

# `S(column)` returns the (weighted) sum of one per-record column: a float for the point
# value, an array of shape (resamples,) inside the bootstrap.
Sums = Callable[[str], Any]
Formula = Callable[[Sums], Any]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


# ---------------------------------------------------------------- normalisation


def answer_for_scoring(s: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _field_value(v: Any) -> str:
    if isinstance(v, str):
        return " ".join(v.casefold().split())
    return json.dumps(v, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def present_fields(obj: Any) -> dict[str, str]:
    """Top-level keys with a value, normalised for comparison; null/"" count as absent so a
    model is not rewarded or punished for spelling out an empty field."""
    if not isinstance(obj, dict):
        return {}
    return {str(k): _field_value(v) for k, v in obj.items() if v is not None and v != ""}


def parse_json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, TypeError, ValueError):
        return False, None


# ---------------------------------------------------------------- per record


def token_f1(prediction: str, reference: str) -> float:
    p, r = answer_for_scoring(prediction).split(), answer_for_scoring(reference).split()
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


ITEM_F1 = "item_f1"
_ITEM_SEPARATORS = re.compile(r"[,\n]")


def answer_items(text: str) -> set[str]:
    """The items a list answer names, normalised like answers (`answer_for_scoring`): the
    elements of a JSON array, else the comma- or newline-separated parts of the text, so
    "Paris, Rome" and '["rome", "paris"]' name the same set. Empty items are dropped."""
    ok, parsed = parse_json(text)
    if ok and isinstance(parsed, list):
        parts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in parsed]
    else:
        parts = _ITEM_SEPARATORS.split(text)
    return {item for item in map(answer_for_scoring, parts) if item}


def item_f1(prediction: str, reference: str) -> float:
    """Set F1 between the items of two list answers; 1.0 when both name none."""
    got, want = answer_items(prediction), answer_items(reference)
    if not got and not want:
        return 1.0
    common = len(got & want)
    return 2 * common / (len(got) + len(want))


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (sacrebleu, character 6-grams, beta 2) on a 0..1 scale."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(prediction, [reference]).score / 100.0


def labels_of(task: Task, references: list[str] | None = None) -> list[str]:
    """The task's label set; a classify task without declared labels uses the references'."""
    if task.labels:
        return list(task.labels)
    return sorted({r.strip() for r in references or []})


def per_example(
    task: Task, prediction: str, reference: str, labels: list[str] | None = None
) -> dict[str, float]:
    """Every per-record metric value for one prediction (all floats, 0..1 or counts)."""
    if task.kind == Kind.generate:
        scores = {
            "exact_match": float(answer_for_scoring(prediction) == answer_for_scoring(reference)),
            "token_f1": token_f1(prediction, reference),
            "chrf": chrf(prediction, reference),
        }
        if task.metric == ITEM_F1:  # only where chosen: other tasks' reports stay as they were
            scores[ITEM_F1] = item_f1(prediction, reference)
        return scores
    if task.kind == Kind.classify:
        labels = labels if labels is not None else labels_of(task, [reference])
        got = map_label(prediction, labels)
        want = map_label(reference, labels) or reference.strip()
        return {
            "accuracy": float(got is not None and got == want),
            "valid_label": float(got is not None),
        }
    return _extract_example(task, prediction, reference)


def _extract_example(task: Task, prediction: str, reference: str) -> dict[str, float]:
    ok, obj = parse_json(prediction)
    schema_ok = ok and schema_valid(task, obj)
    _, ref_obj = parse_json(reference)
    got, want = present_fields(obj), present_fields(ref_obj)
    tp = sum(1 for k, v in got.items() if want.get(k) == v)
    fp, fn = len(got) - tp, len(want) - tp
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {
        "json_valid": float(ok),
        "schema_valid": float(schema_ok),
        "field_f1": f1,
        "object_exact": float(ok and got == want),
        "field_tp": float(tp),
        "field_fp": float(fp),
        "field_fn": float(fn),
    }


def main_key(task: Task) -> str:
    """The per-record value that says whether one record passed (1.0) or failed (<1)."""
    return task.main_metric


# ---------------------------------------------------------------- aggregates


@dataclass
class Columns:
    """Per-record numbers (one array of length n per column) plus the aggregate formulas
    over their sums. `main` names the task's main aggregate metric."""

    n: int
    data: dict[str, np.ndarray]
    formulas: dict[str, Formula]
    main: str
    # Aggregates that are 0/1 per record (a mean of a 0/1 column): McNemar applies to them.
    binary: dict[str, str] = field(default_factory=dict)  # metric -> column

    def point(self) -> dict[str, float]:
        sums = {k: float(v.sum()) for k, v in self.data.items()}
        return {name: float(f(sums.__getitem__)) for name, f in self.formulas.items()}


def _mean(col: str) -> Formula:
    return lambda S: _div(S(col), S("_n"))


def _div(a: Any, b: Any) -> Any:
    """a / b with 0 where b is 0 (sklearn's zero_division=0), for floats and arrays alike."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)
    return out if out.ndim else float(out)


def _f1(tp: str, fp: str, fn: str) -> Formula:
    return lambda S: _div(2 * S(tp), 2 * S(tp) + S(fp) + S(fn))


# A kind's own columns (beyond the per-record scores), its aggregate formulas and which of
# them are 0/1 per record.
KindColumns = tuple[dict[str, np.ndarray], dict[str, Formula], dict[str, str]]


def columns(
    task: Task,
    predictions: list[str],
    references: list[str],
    scores: list[dict[str, float]] | None = None,
) -> Columns:
    """Build the per-record columns and aggregate formulas for a task's built-in metrics.
    `scores` are the `per_example` dicts when already computed (they are not recomputed)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    labels = labels_of(task, references) if task.kind == Kind.classify else None
    if scores is None:
        scores = [
            per_example(task, p, r, labels) for p, r in zip(predictions, references, strict=True)
        ]
    data: dict[str, np.ndarray] = {"_n": np.ones(n)}
    for key in scores[0] if scores else _empty_keys(task):
        data[key] = np.array([s[key] for s in scores], dtype=float)

    if task.kind == Kind.generate:
        kind_columns = _generate_columns(task)
        main = "exact_match"
    elif task.kind == Kind.classify:
        assert labels is not None
        kind_columns = _classify_columns(labels, predictions, references)
        main = "accuracy"
    else:
        kind_columns = _extract_columns(task, predictions, references)
        main = "field_f1"
    extra, formulas, binary = kind_columns
    data |= extra
    _add_custom_means(data, formulas, binary)
    return Columns(
        n=n, data=data, formulas=formulas, main=_main_metric(task, formulas, main), binary=binary
    )


def _generate_columns(task: Task) -> KindColumns:
    formulas = {k: _mean(k) for k in ("exact_match", "token_f1", "chrf")}
    if task.metric == ITEM_F1:
        formulas[ITEM_F1] = _mean(ITEM_F1)
    return {}, formulas, {"exact_match": "exact_match"}


def _classify_columns(
    labels: list[str], predictions: list[str], references: list[str]
) -> KindColumns:
    """Accuracy, and per label the true/false positive and false negative columns that
    precision, recall and macro-F1 are summed from."""
    data: dict[str, np.ndarray] = {}
    formulas = {"accuracy": _mean("accuracy"), "valid_label": _mean("valid_label")}
    got = [map_label(p, labels) for p in predictions]
    want = [map_label(r, labels) or r.strip() for r in references]
    for lab in labels:
        p = np.array([g == lab for g in got], dtype=float)
        r = np.array([w == lab for w in want], dtype=float)
        data[f"tp:{lab}"], data[f"fp:{lab}"], data[f"fn:{lab}"] = (
            p * r,
            p * (1 - r),
            (1 - p) * r,
        )
        formulas[f"precision[{lab}]"] = _precision(lab)
        formulas[f"recall[{lab}]"] = _recall(lab)
    formulas["macro_f1"] = _macro_f1(labels)
    return data, formulas, {"accuracy": "accuracy"}


def _extract_columns(task: Task, predictions: list[str], references: list[str]) -> KindColumns:
    """Field-level F1 (micro over fields, and per field), JSON and schema validity."""
    data: dict[str, np.ndarray] = {}
    formulas: dict[str, Formula] = {
        "field_f1": _f1("field_tp", "field_fp", "field_fn"),
        "field_precision": lambda S: _div(S("field_tp"), S("field_tp") + S("field_fp")),
        "field_recall": lambda S: _div(S("field_tp"), S("field_tp") + S("field_fn")),
    }
    binary: dict[str, str] = {}
    for k in ("json_valid", "schema_valid", "object_exact"):
        formulas[k] = _mean(k)
        binary[k] = k
    for name in field_names(task, references):
        tp, fp, fn = _field_counts(name, predictions, references)
        data[f"tp:{name}"], data[f"fp:{name}"], data[f"fn:{name}"] = tp, fp, fn
        formulas[f"f1[{name}]"] = _f1(f"tp:{name}", f"fp:{name}", f"fn:{name}")
    return data, formulas, binary


def _add_custom_means(
    data: dict[str, np.ndarray], formulas: dict[str, Formula], binary: dict[str, str]
) -> None:
    """Per-record values from a custom metric or a judge: their aggregate is the mean."""
    for key in data:
        if key not in formulas and key not in _COUNT_KEYS and key != "_n" and ":" not in key:
            formulas[key] = _mean(key)
            if np.isin(data[key], (0.0, 1.0)).all():
                binary[key] = key


def _main_metric(task: Task, formulas: dict[str, Formula], default: str) -> str:
    """The task's configured main metric (it must be one of the aggregates), or the kind's."""
    if not task.metric:
        return default
    wanted = metric_value_key(task.metric) if ":" in task.metric else task.metric
    if wanted not in formulas:
        raise InvalidInput(
            f"task {task.name!r}: metric {task.metric!r} is not one of {sorted(formulas)}"
        )
    return wanted


_COUNT_KEYS = {"field_tp", "field_fp", "field_fn"}


def _empty_keys(task: Task) -> list[str]:
    item = [ITEM_F1] if task.metric == ITEM_F1 else []
    return {
        Kind.generate: ["exact_match", "token_f1", "chrf", *item],
        Kind.classify: ["accuracy", "valid_label"],
        Kind.extract: [
            "json_valid",
            "schema_valid",
            "field_f1",
            "object_exact",
            "field_tp",
            "field_fp",
            "field_fn",
        ],
    }[task.kind]


def _precision(lab: str) -> Formula:
    return lambda S: _div(S(f"tp:{lab}"), S(f"tp:{lab}") + S(f"fp:{lab}"))


def _recall(lab: str) -> Formula:
    return lambda S: _div(S(f"tp:{lab}"), S(f"tp:{lab}") + S(f"fn:{lab}"))


def _macro_f1(labels: list[str]) -> Formula:
    def f(S: Sums) -> Any:
        parts = [_f1(f"tp:{lab}", f"fp:{lab}", f"fn:{lab}")(S) for lab in labels]
        return sum(parts) / len(parts) if parts else 0.0

    return f


def field_names(task: Task, references: list[str]) -> list[str]:
    """Schema properties first, then any other key a reference uses."""
    names = list((task.schema_ or {}).get("properties", {}))
    for r in references:
        for k in present_fields(parse_json(r)[1]):
            if k not in names:
                names.append(k)
    return names


def _field_counts(
    name: str, predictions: list[str], references: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.zeros(len(predictions)) for _ in range(3))
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        got, want = present_fields(parse_json(p)[1]), present_fields(parse_json(r)[1])
        hit = name in got and got[name] == want.get(name)
        tp[i] = hit
        fp[i] = name in got and not hit
        fn[i] = name in want and not hit
    return tp, fp, fn


def aggregate(task: Task, predictions: list[str], references: list[str]) -> dict[str, float]:
    """Point values of every built-in aggregate metric."""
    return columns(task, predictions, references).point()


def main_score(task: Task, predictions: list[str], references: list[str]) -> float:
    """The task's main metric on 0..1: normalised exact match (generate), accuracy (classify)
    or field-level micro F1 (extract). A custom `module:function` metric is averaged."""
    if not predictions:
        raise ValueError("main_score needs at least one prediction")
    metric = task.metric
    if metric and ":" in metric:
        from whetstone.evaluate.custom import load_metric, score_records

        fn = load_metric(metric)
        values = score_records(fn, metric, predictions, references, [None] * len(predictions))
        return float(np.mean([v[metric_value_key(metric)] for v in values]))
    cols = columns(task, predictions, references)
    return cols.point()[cols.main]


def metric_value_key(metric: str) -> str:
    """The per-record key under which a custom metric's main value is stored."""
    return metric.rsplit(":", 1)[-1]


# ---------------------------------------------------------------- reports without intervals


def confusion(task: Task, predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Confusion matrix (rows = reference label, columns = predicted label or '(none)') and
    the answers that mapped to no label, with counts and a few examples."""
    labels = labels_of(task, references)
    cols = [*labels, "(none)"]
    matrix = {r: dict.fromkeys(cols, 0) for r in labels}
    unmapped: Counter[str] = Counter()
    for p, r in zip(predictions, references, strict=True):
        got = map_label(p, labels)
        want = map_label(r, labels) or r.strip()
        matrix.setdefault(want, dict.fromkeys(cols, 0))
        matrix[want][got or "(none)"] += 1
        if got is None:
            unmapped[p.strip()] += 1
    return {
        "labels": labels,
        "matrix": matrix,
        "unmapped_count": sum(unmapped.values()),
        "unmapped_examples": [a for a, _ in unmapped.most_common(5)],
    }


CALIBRATION_BINS = 10


def calibration(
    confidences: list[float | None], correct: list[float], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Expected calibration error of answers whose confidence is a log-probability (0 =
    certain), over `bins` equal-width bins of exp(confidence) on [0, 1]: the record-weighted
    mean of |accuracy - mean probability| per bin. Answers without a confidence are left out;
    `ece` is None when none has one. Each bin: low, high, n, mean probability, accuracy (None
    when the bin is empty)."""
    if bins < 1:
        raise InvalidInput(f"calibration needs at least one bin, not {bins}")
    pairs = [
        (float(np.exp(min(0.0, c))), float(ok))
        for c, ok in zip(confidences, correct, strict=True)
        if c is not None
    ]
    n = len(pairs)
    table: list[dict[str, Any]] = []
    ece = 0.0
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        # Bins are [low, high) except the last, which holds certainty (probability 1) too.
        inside = [(p, ok) for p, ok in pairs if low <= p < high or (i == bins - 1 and p == high)]
        row: dict[str, Any] = {"low": low, "high": high, "n": len(inside)}
        row["confidence"] = sum(p for p, _ in inside) / len(inside) if inside else None
        row["accuracy"] = sum(ok for _, ok in inside) / len(inside) if inside else None
        if inside:
            ece += len(inside) / n * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return {"ece": ece if n else None, "n": n, "bins": table}
