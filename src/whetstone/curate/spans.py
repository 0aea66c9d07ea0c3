"""Confident learning for extract references, one value at a time: a value filed under the
wrong key.

An extract reference is a set of labelled spans: each string value is copied from the input
and filed under a key. Spans are what cleanlab's token-classification mode checks in NER
data; here the "token" is the whole value. Every span gets cheap, model-free features (what
the value looks like: character n-grams of its text and of its shape, its word count; where it
sits: word position from either end of the input, the words around it), a logistic
regression predicts its key out of sample (k-fold, grouped by record, so no row scores
itself), and confident learning names the spans whose key disagrees with what the rest of the
data implies. A record with such a span is a suspect: the typical wrong-field error (a city
under `street_name`, two keys' values exchanged) keeps valid JSON that passes the schema and
is copied from the input, so neither the schema nor the grounding check can see it, and a
model trained on the row memorises it, so its loss cannot either.

"Disagrees" is a confident disagreement: the given key's out-of-sample probability is under
`p_given` and another key is more likely than not. Confident learning's per-class thresholds
(cleanlab's `find_label_issues`) are not used here: with a few hundred records most keys are
rare, their thresholds are low, and they flagged half the clean rows of the curation-value
benchmark; the rule above caught 19 of its 20 wrong-field rows at 8 of 164 clean ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from whetstone.curate.normalise import clean_record_text

WORD = re.compile(r"\w+")
_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


@dataclass(frozen=True)
class Misfiled:
    row: int  # position in the rows given
    key: str  # the key the reference files the value under
    value: str
    suggested: str  # the key the rest of the data implies
    p_given: float  # out-of-sample probability of the given key


def flat_text(text: str) -> str:
    """Normalised (as the validate step does), case-folded, single-spaced."""
    return " ".join(clean_record_text(text).casefold().split())


def string_values(value: Any, key: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every non-empty string in a JSON value, e.g. ("items.0.name", ...)."""
    if isinstance(value, str):
        return [(key, value)] if value.strip() else []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []  # numbers and booleans may be written differently in the text
    return [kv for k, v in items for kv in string_values(v, f"{key}.{k}" if key else str(k))]


def _shape(text: str) -> str:
    """Digits to 0, letters to a, runs collapsed: "Suite 12B" -> "a 0a"."""
    s = re.sub(r"\d", "0", re.sub(r"[^\W\d_]", "a", text))
    return re.sub(r"(.)\1+", r"\1", s)


def _grams(prefix: str, text: str, sizes: tuple[int, ...]) -> dict[str, float]:
    t = f"^{text}$"
    return {f"{prefix}{t[i : i + n]}": 1.0 for n in sizes for i in range(len(t) - n + 1)}


def span_features(text_words: list[str], start: int, end: int, value: str) -> dict[str, float]:
    """Features of the value found at words [start, end) of the input."""
    n = len(text_words)
    return {
        **_grams("c:", value, (1, 2, 3)),
        **_grams("s:", _shape(value), (1, 2, 3)),
        f"shape={_shape(value)[:12]}": 1.0,
        f"words={min(end - start, 4)}": 1.0,
        f"from_start={min(start, 6)}": 1.0,
        f"from_end={min(n - end, 6)}": 1.0,
        f"prev={text_words[start - 1] if start else '<s>'}": 1.0,
        f"next={text_words[end] if end < n else '</s>'}": 1.0,
        f"prev_shape={_shape(text_words[start - 1]) if start else '<s>'}": 1.0,
        f"next_shape={_shape(text_words[end]) if end < n else '</s>'}": 1.0,
    }


def _locate(words: list[str], value_words: list[str]) -> tuple[int, int] | None:
    """Word span [start, end) of the value's words in the input, or None when they are not
    there in order."""
    k = len(value_words)
    for i in range(len(words) - k + 1):
        if words[i : i + k] == value_words:
            return i, i + k
    return None


def _spans(text: str, reference: str) -> list[tuple[str, str, dict[str, float]]]:
    """(key, value, features) for each string value of a JSON reference that occurs in the
    input as whole words. List indices in key paths are generalised ("items.*.name")."""
    try:
        obj = json.loads(reference)
    except json.JSONDecodeError:
        return []
    words = WORD.findall(flat_text(text))
    out = []
    for key, value in string_values(obj):
        v_words = WORD.findall(flat_text(value))
        at = _locate(words, v_words) if v_words else None
        if at is None:
            continue
        out.append((_INDEX.sub("*", key), value, span_features(words, *at, " ".join(v_words))))
    return out


def misfiled_values(
    texts: list[str], references: list[str], folds: int, p_given: float = 0.01
) -> list[Misfiled]:
    """Values whose key the other records confidently contradict, most doubtful first; []
    when there are too few records or keys to cross-validate."""
    import warnings

    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    rows, keys, values, feats = [], [], [], []
    for i, (text, ref) in enumerate(zip(texts, references, strict=True)):
        for key, value, f in _spans(text, ref):
            rows.append(i)
            keys.append(key)
            values.append(value)
            feats.append(f)
    classes = sorted(set(keys))
    k = min(folds, len(set(rows)))
    if len(classes) < 2 or k < 2:
        return []
    y = np.array([classes.index(key) for key in keys])
    model = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=2000))
    # A key no other fold has gets probability 0 there (cross_val_predict fills the missing
    # column, with a warning): only a confident prediction of another key makes it a suspect.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(
            model, feats, y, groups=rows, cv=GroupKFold(n_splits=k), method="predict_proba"
        )
    given = probs[np.arange(len(y)), y]
    issues = np.where((given < p_given) & (probs.max(axis=1) > 0.5))[0]
    return [
        Misfiled(
            row=rows[j],
            key=keys[j],
            value=values[j],
            suggested=classes[int(probs[j].argmax())],
            p_given=float(given[j]),
        )
        for j in sorted(issues.tolist(), key=lambda j: given[j])
    ]
