"""Step 5, label noise. For classify: out-of-sample probabilities from a logistic regression on
the embeddings (k-fold cross-validation, so no row scores itself), then confident learning
(cleanlab) names the rows whose label disagrees with what the rest of the data implies.
For generate and extract: per-example loss of the reference under the current production
adapter; rows far above the typical loss are suspects. Suspects are flagged for review, and
dropped when `drop_noisy` is set (never those earlier snapshots put in test)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from whetstone.curate.state import Row, Run
from whetstone.records import Kind, Task


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


def per_example_loss(model: Any, tok: Any, task: Task, rows: list[Row]) -> list[float]:
    """Mean token cross-entropy of each row's reference after its prompt, as training sees it."""
    import torch

    from whetstone.models.generate import encode_prompts
    from whetstone.prompts import chat

    prompts = encode_prompts(tok, [chat(task, r.input) for r in rows])
    dev = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for prompt, row in zip(prompts, rows, strict=True):
            answer = tok(row.reference, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + answer], device=dev)
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            out.append(float(model(input_ids=ids, labels=labels).loss))
    return out


def production_model(ctx: Run) -> tuple[Any, Any, str] | None:
    from whetstone import registry

    av = registry.production(ctx.project, ctx.task.name)
    if av is None:
        return None
    return registry.load_adapter_model(ctx.project, av.name, task=ctx.task.name)


def _act(ctx: Run, row: Row, reason: str, **detail: Any) -> None:
    drop = ctx.config.drop_noisy and row.prior_split != "test"
    ctx.decide(row, "removed" if drop else "flagged", reason, **detail)


def run(ctx: Run) -> None:
    rows = ctx.rows
    suspects: list[dict[str, Any]] = []
    if ctx.task.kind == Kind.classify:
        labels = [r.reference for r in rows]
        found = classify_suspects(ctx.vectors(rows), labels, ctx.config.noise_folds)
        if not found and len(set(labels)) > 1 and min(Counter(labels).values()) < 2:
            ctx.note("skipped: every label needs at least 2 examples to cross-validate")
        for i, suggested, p in found:
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
        loaded = production_model(ctx)
        if loaded is None:
            ctx.note("skipped: no production adapter to score references with")
        else:
            import numpy as np

            model, tok, name = loaded
            losses = per_example_loss(model, tok, ctx.task, rows)
            for row, loss in zip(rows, losses, strict=True):
                row.loss = loss
            arr = np.array(losses)
            cut = (
                float(arr.mean() + ctx.config.loss_z * arr.std()) if len(arr) > 2 else float("inf")
            )
            ctx.card["loss_model"] = name
            for row, loss in zip(rows, losses, strict=True):
                if loss > cut:
                    suspects.append(
                        {"id": row.id, "text": row.text, "label": row.reference, "loss": loss}
                    )
                    _act(
                        ctx,
                        row,
                        f"reference has an unusually high loss under {name}",
                        loss=round(loss, 4),
                        cutoff=round(cut, 4),
                    )
        ctx.note("teacher disagreement: no teacher configured")
    ctx.card["suspects"] = suspects
