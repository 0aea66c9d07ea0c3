"""Step 9, leakage-free split.

- Near-duplicate groups (exact or near at `group_jaccard` by `whetstone.neardup`, cosine at
  `cosine`) stay inside one split, so no test row has a paraphrase in training.
- A record keeps the split earlier snapshots gave it (test first), so test numbers stay
  comparable across iterations; `reshuffle_test` starts afresh. A new near-duplicate of a test
  row does not join test: the contamination check keeps it out, and the test set stays put.
- New groups fill each split up to its fraction, stratified by label for classify, in the
  order of a stable hash of their text: the same data always splits the same way.
- Only human references (`records.human_reference`) are tested or validated on: teacher and
  synthetic labels train, and are removed where their group is tested or validated on.
- Contamination check: no training or validation row may near-duplicate a test row of *any*
  snapshot of the task, including rows this run left out; offenders are removed and counted.
  "Near-duplicate" is the gate's leakage rule's own definition (`whetstone.neardup`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from whetstone import neardup
from whetstone.curate import dedup
from whetstone.curate.normalise import clean_record_text
from whetstone.curate.state import Row, Run
from whetstone.project import Project
from whetstone.records import Kind, human_reference
from whetstone.snapshots import held_out_ids, is_held_out, split_bucket
from whetstone.store import snapshots as stored_snapshots

_PRIORITY = {"test": 3, "validation": 2, "train": 1}


def prior_splits(project: Project, task: str) -> dict[int, str]:
    """The split each record had in earlier snapshots of the task (test wins, then validation)."""
    out: dict[int, str] = {}
    for rid, split in stored_snapshots.record_splits(project.store, task):
        if _PRIORITY.get(split, 0) > _PRIORITY.get(out.get(rid, ""), 0):
            out[rid] = split
    return out


def _groups(ctx: Run, rows: list[Row]) -> list[list[int]]:
    cfg = ctx.config
    uf = neardup.Clusters(len(rows))
    pairs = [
        *((m.i, m.j) for m in dedup.duplicate_pairs(ctx, rows, cfg.group_jaccard)),
        *dedup.semantic_pairs(
            ctx.vectors(rows), cfg.cosine, texts=[dedup.match_text(r) for r in rows]
        ),
    ]
    for a, b in pairs:
        uf.union(a, b)
    return uf.groups()


def _place_by_history(rows: list[Row], members: list[int]) -> None:
    """A group's split from earlier snapshots (None: a new group, placed by `assign`)."""
    pinned = [i for i in members if rows[i].prior_split == "test" or is_held_out(rows[i].record)]
    if pinned:
        # The test split stays the same records: a newcomer to a test row's group goes to
        # training, where the contamination check removes it if it near-duplicates a test
        # row (joining test would change the test set, and every stored evaluation on it
        # would stop being comparable or reusable).
        for i in members:
            rows[i].split = "test" if i in pinned else "train"
    else:
        prior = max((rows[i].prior_split or "" for i in members), key=lambda s: _PRIORITY.get(s, 0))
        for i in members:
            rows[i].split = prior or None


def _teacher_rows(ctx: Run, groups: list[tuple[list[int], list[int]]]) -> None:
    """Teacher and synthetic labels (not `human_reference`) train only: in a group whose
    human records are tested or validated on they would be a near copy of what is scored,
    so they are removed, like any other leak; elsewhere they train."""
    rows = ctx.rows
    for members, humans in groups:
        scored = any(rows[i].split in ("test", "validation") for i in humans)
        for i in set(members) - set(humans):
            rows[i].split = "train"
            if scored:
                ctx.decide(
                    rows[i],
                    "removed",
                    "teacher label near a test or validation record (teacher labels train only)",
                    near=[rows[j].id for j in humans],
                )


def assign(ctx: Run) -> None:
    cfg = ctx.config
    rows = ctx.rows
    strata: dict[str, list[list[int]]] = defaultdict(list)
    groups: list[tuple[list[int], list[int]]] = []
    for members in _groups(ctx, rows):
        # Only human references are placed (and counted towards the split's fractions).
        humans = [i for i in members if human_reference(rows[i].record)]
        groups.append((members, humans))
        if not humans:
            continue
        _place_by_history(rows, humans)
        key = rows[humans[0]].reference if ctx.task.kind == Kind.classify else ""
        strata[key].append(humans)
    for stratum in strata.values():
        total = sum(len(g) for g in stratum)
        have: Counter[str] = Counter()
        for g in stratum:
            for i in g:
                if split := rows[i].split:
                    have[split] += 1
        need = {
            "test": round(cfg.test * total) - have["test"],
            "validation": round(cfg.validation * total) - have["validation"],
        }
        new = [g for g in stratum if rows[g[0]].split is None]
        new.sort(key=lambda g: min(split_bucket(rows[i].text) for i in g))
        for g in new:
            # A group goes where it brings a split closer to its target; one that would
            # overshoot by more than it fills stays in train.
            split = next((s for s in ("test", "validation") if need[s] * 2 >= len(g)), "train")
            if split != "train":
                need[split] -= len(g)
            for i in g:
                rows[i].split = split
    _teacher_rows(ctx, groups)


def _held_out_rows(ctx: Run) -> list[Row]:
    """Test rows of every snapshot of the task (and held-out records) not in this run."""
    ids = held_out_ids(ctx.project, ctx.task.name) - {r.id for r in ctx.rows}
    if not ids:
        return []
    recs = ctx.project.store.iter_records(ctx.task.name, ids=sorted(ids))
    return [
        Row(record=r, input=clean_record_text(r.input_text), reference=r.reference or "")
        for r in recs
    ]


def duplicates_of_test_rows(ctx: Run, others: list[Row], tests: list[Row]) -> list[neardup.Match]:
    """The rows of `others` that exactly or nearly duplicate a test row (at `group_jaccard`),
    each with its closest test row: the gate's leakage rule, run before training."""
    return neardup.best_matches(
        [dedup.match_text(r) for r in others],
        [dedup.match_text(r) for r in tests],
        ctx.config.group_jaccard,
        query_signatures=lambda: ctx.minhashes(others),
        corpus_signatures=lambda: ctx.minhashes(tests),
    )


def contamination(ctx: Run) -> None:
    """Remove training/validation rows that near-duplicate any test row of the task."""
    cfg = ctx.config
    tests = [r for r in ctx.rows if r.split == "test"] + _held_out_rows(ctx)
    others = [r for r in ctx.rows if r.split != "test" and not r.removed]
    ctx.card["contamination_checked"] = len(tests)
    if not tests or not others:
        ctx.note(
            f"contamination check: {len(others)} rows against {len(tests)} test rows, none found"
        )
        return
    hits = {
        others[m.i].id: (tests[m.j].id, m.kind) for m in duplicates_of_test_rows(ctx, others, tests)
    }
    for i, j in dedup.semantic_pairs(
        ctx.vectors(others),
        cfg.cosine,
        ctx.vectors(tests),
        texts=[dedup.match_text(r) for r in others],
        other_texts=[dedup.match_text(r) for r in tests],
    ):
        hits.setdefault(others[i].id, (tests[j].id, "semantic"))
    for r in others:
        if r.id in hits:
            test_id, how = hits[r.id]
            ctx.decide(
                r,
                "removed",
                f"{how} duplicate of a test record (contamination)",
                test_record=test_id,
            )
    ctx.note(
        f"contamination check: {len(others)} rows against {len(tests)} test rows, {len(hits)} removed"
    )
    ctx.card["contaminated"] = len(hits)


def run(ctx: Run) -> None:
    assign(ctx)
    contamination(ctx)
    counts: Counter[str] = Counter(r.split for r in ctx.rows if not r.removed and r.split)
    ctx.note("split " + ", ".join(f"{s} {counts[s]}" for s in ("train", "validation", "test")))
    total = sum(counts.values())
    for name, frac in (("test", ctx.config.test), ("validation", ctx.config.validation)):
        if counts[name] * 2 < round(frac * total):
            ctx.note(
                f"{name} has {counts[name]} rows, under half its target {round(frac * total)}: "
                "near-duplicate groups are large; raise group_jaccard to split them finer"
            )
