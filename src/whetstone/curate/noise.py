"""Step 5, label noise. Suspects are flagged for review, and dropped when `drop_noisy` is set
(never rows earlier snapshots put in test). Four rules, by task kind:

- classify: out-of-sample probabilities from a logistic regression on the embeddings (k-fold
  cross-validation, so no row scores itself), then confident learning (cleanlab) names the
  rows whose label disagrees with what the rest of the data implies.
- extract, `grounded_values`: a model-free check that every string value of the reference is
  copied from the input (after the same unicode/whitespace normalisation as the validate step,
  ignoring case). A value none of whose wording is in the input is not extracted from it: the
  typical sign of references swapped between records.
- extract, `misfiled_p`: span-level confident disagreement (`spans`): a value whose key a
  cross-validated classifier over every other record's values confidently contradicts, the
  sign of a value filed under the wrong key (valid JSON, grounded, memorised by a model).
- generate and extract: per-example loss of the reference under the current production
  adapter, encoded exactly as training encodes it (the run's `scorer`, which the caller takes
  from training: curation does not import it). Rows far above the typical loss are
  suspects. "Far" is robust: median + `loss_mad_k` x the scaled median absolute deviation,
  since the wrong labels this rule hunts would inflate a mean and standard deviation and hide
  themselves, and it is taken separately for the rows the adapter trained on and the rest. It
  memorised some wrong labels of its own training rows, so the loss rule finds what it
  failed to memorise, not every wrong label; test rows are not scored.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from whetstone.curate.spans import WORD, flat_text, misfiled_values, string_values
from whetstone.curate.state import Row, Run
from whetstone.records import Kind

if TYPE_CHECKING:
    from whetstone.models.types import InferenceModel, Tokenizer


def classify_suspects(vecs: Any, labels: list[str], folds: int) -> list[tuple[int, str, float]]:
    """(row position, suggested label, probability of the given label) per suspect, or []
    when there are too few examples per label to cross-validate."""
    import numpy as np
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes = sorted(set(labels))
    counts = Counter(labels)
    k = min(folds, min(counts.values()))
    if len(classes) < 2 or k < 2:
        return []
    y = np.array([classes.index(label) for label in labels])
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
    probs = cross_val_predict(
        LogisticRegression(max_iter=2000), vecs, y, cv=cv, method="predict_proba"
    )
    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    return [(int(i), classes[int(probs[i].argmax())], float(probs[i, y[i]])) for i in issues]


def robust_cutoff(losses: list[float], k: float) -> float:
    """median + k x scaled MAD (1.4826 x MAD estimates the standard deviation of normal data,
    so k reads like a z-score). With fewer than 3 losses, or no spread at all, nothing is
    far from typical: the cut-off is infinite."""
    import numpy as np

    arr = np.asarray(losses, dtype=float)
    if len(arr) < 3:
        return float("inf")
    med = float(np.median(arr))
    spread = 1.4826 * float(np.median(np.abs(arr - med)))
    if spread == 0:
        # Over half the losses are equal: fall back to the mean absolute deviation (scaled
        # the same way), as the modified z-score does.
        spread = 1.2533 * float(np.mean(np.abs(arr - med)))
    return med + k * spread if spread > 0 else float("inf")


def _words(text: str) -> tuple[str, set[str]]:
    flat = flat_text(text)
    return flat, set(WORD.findall(flat))


def ungrounded_keys(text: str, reference: str) -> list[str]:
    """Keys of the extract reference whose string value is not taken from `text`: neither the
    value nor every one of its words occurs in it (case and spacing ignored). Word by word,
    because a value may join words the text keeps apart ("Route 30 & Route 45" gives the
    street name "30 45"). A reference that is not JSON has no values to check."""
    try:
        obj = json.loads(reference)
    except json.JSONDecodeError:
        return []
    flat, words = _words(text)
    missing = []
    for key, value in string_values(obj):
        v_flat, v_words = _words(value)
        if v_flat in flat or v_words <= words:
            continue
        missing.append(key)
    return missing


def production_model(ctx: Run) -> tuple[InferenceModel, Tokenizer, str, set[int]] | None:
    """The production adapter loaded, its name, and the ids of the records it trained on."""
    from whetstone import registry, snapshots

    av = registry.production(ctx.project, ctx.task.name)
    if av is None:
        return None
    model, tok, name = registry.load_adapter_model(ctx.project, av.name, task=ctx.task.name)
    trained_on: set[int] = set()
    if av.snapshot_id is not None:
        trained_on = set(snapshots.load(ctx.project, av.snapshot_id).ids("train"))
    return model, tok, name, trained_on


def _act(ctx: Run, row: Row, reason: str, **detail: Any) -> None:
    drop = ctx.config.drop_noisy and row.prior_split != "test"
    ctx.decide(row, "removed" if drop else "flagged", reason, **detail)


def _grounding(ctx: Run, suspects: list[dict[str, Any]]) -> set[int]:
    """Flag extract rows whose reference values are not in their input; their ids."""
    from whetstone.progress import track

    found = set()
    for row in track(ctx.rows, "noise: grounded values"):
        keys = ungrounded_keys(row.text, row.reference)
        if not keys:
            continue
        found.add(row.id)
        suspects.append({"id": row.id, "text": row.text, "label": row.reference, "keys": keys})
        _act(ctx, row, "reference values not found in the input: " + ", ".join(keys), keys=keys)
    return found


def _loss_rule(ctx: Run, suspects: list[dict[str, Any]], skip: set[int]) -> None:
    if ctx.scorer is None:
        ctx.note("skipped: no scorer given to score references with (curate's `scorer`)")
        return
    loaded = production_model(ctx)
    if loaded is None:
        ctx.note("skipped: no production adapter to score references with")
        return
    model, tok, name, trained_on = loaded
    from whetstone.models.label_head import LabelHeadModel

    # Label heads are classify adapters, and classify tasks use confident learning instead.
    assert not isinstance(model, LabelHeadModel)
    # Test rows are never dropped and scoring them is a third of the step's time on a typical
    # project; they are left out.
    rows = [r for r in ctx.rows if r.prior_split != "test"]
    losses = ctx.scorer(model, tok, ctx.task, [(r.input, r.reference) for r in rows])
    for row, loss in zip(rows, losses, strict=True):
        row.loss = loss
    # Rows the adapter trained on score far lower than rows it never saw (validation rows,
    # new records), so each group gets its own cut-off; one shared cut-off would flag the
    # unseen rows for being unseen. Rows already suspected stay in the statistics: the
    # cut-off is robust to them.
    cuts = {}
    for seen in (True, False):
        group = [loss for r, loss in zip(rows, losses, strict=True) if (r.id in trained_on) == seen]
        cuts[seen] = robust_cutoff(group, ctx.config.loss_mad_k)
    ctx.card["loss_model"] = name
    ctx.card["loss_cutoff"] = {"trained on": cuts[True], "not trained on": cuts[False]}
    for row, loss in zip(rows, losses, strict=True):
        cut = cuts[row.id in trained_on]
        if loss > cut and row.id not in skip:
            suspects.append({"id": row.id, "text": row.text, "label": row.reference, "loss": loss})
            _act(
                ctx,
                row,
                f"reference has an unusually high loss under {name}",
                loss=round(loss, 4),
                cutoff=round(cut, 4),
            )


def _misfiled(ctx: Run, suspects: list[dict[str, Any]], skip: set[int]) -> set[int]:
    """Flag extract rows with a value filed under the wrong key (`spans`); their ids."""
    rows = ctx.rows
    found: dict[int, list[Any]] = {}
    for m in misfiled_values(
        [r.text for r in rows],
        [r.reference for r in rows],
        ctx.config.noise_folds,
        ctx.config.misfiled_p,
    ):
        if rows[m.row].id not in skip:
            found.setdefault(m.row, []).append(m)
    for i, ms in found.items():
        row = rows[i]
        moves = [{"value": m.value, "key": m.key, "suggested": m.suggested} for m in ms]
        suspects.append({"id": row.id, "text": row.text, "label": row.reference, "misfiled": moves})
        _act(
            ctx,
            row,
            "value under an unlikely key: "
            + ", ".join(f"{m.value!r} as {m.key} (looks like {m.suggested})" for m in ms),
            misfiled=moves,
        )
    return {rows[i].id for i in found}


def run(ctx: Run) -> None:
    rows = ctx.rows
    suspects: list[dict[str, Any]] = []
    if ctx.task.kind == Kind.classify:
        labels = [r.reference for r in rows]
        mislabelled = classify_suspects(ctx.vectors(rows), labels, ctx.config.noise_folds)
        if not mislabelled and len(set(labels)) > 1 and min(Counter(labels).values()) < 2:
            ctx.note("skipped: every label needs at least 2 examples to cross-validate")
        for i, suggested, p in mislabelled:
            row = rows[i]
            suspects.append(
                {"id": row.id, "text": row.text, "label": row.reference, "suggested": suggested}
            )
            _act(
                ctx,
                row,
                "label looks wrong (confident learning)",
                label=row.reference,
                suggested=suggested,
                p_given=round(p, 4),
            )
    else:
        from whetstone.progress import status

        found: set[int] = set()
        if ctx.task.kind == Kind.extract and ctx.config.grounded_values:
            found = _grounding(ctx, suspects)
        if ctx.task.kind == Kind.extract and ctx.config.misfiled_p > 0:
            # One cross-validated classifier fit: no count to show, only that it is running.
            with status("noise: misfiled values (cross-validated classifier)"):
                found |= _misfiled(ctx, suspects, skip=found)
        _loss_rule(ctx, suspects, skip=found)
    ctx.card["suspects"] = suspects
