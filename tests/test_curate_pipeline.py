"""The curation pipeline end to end on small synthetic tasks, with the real bundled MiniLM."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from curate_data import FINANCE, FOOD, SPORT, WEATHER
from whetstone import snapshots
from whetstone.curate import curate, decisions_for, next_to_label
from whetstone.errors import InvalidInput, NotFound
from whetstone.records import Record, Source, Status, utcnow


def _add(p: Any, task: str, items: list[tuple[str, str]], **kw: Any) -> list[int]:
    recs = [
        Record(
            task=task,
            input=i,
            reference=r,
            source=kw.get("source", Source.imported),
            status=kw.get("status", Status.accepted),
            tags=kw.get("tags", []),
            output=kw.get("output"),
            confidence=kw.get("confidence"),
        )
        for i, r in items
    ]
    return [i for i in p.store.add_records(recs) if i is not None]


@pytest.fixture
def topics(project: Any) -> Any:
    project.create_task("topic", "classify", labels=["sport", "food"])
    return project


def _dump(p: Any) -> list[dict]:
    return [r.model_dump(mode="json") for r in p.store.iter_records()]


def test_dedup_keeps_best_member_and_store_is_untouched(topics: Any) -> None:
    p = topics
    _add(p, "topic", [(s, "sport") for s in SPORT] + [(f, "food") for f in FOOD])
    # A cluster: an older imported copy, a corrected near-copy, a whitespace variant.
    base = "The striker scored twice in the second half of the derby match."
    old = _add(p, "topic", [(base, "sport")], status=Status.accepted)[0]
    best = _add(
        p,
        "topic",
        [(base.replace("twice", "twice,"), "sport")],
        status=Status.corrected,
        output="food",
    )[0]
    ws = _add(p, "topic", [("  " + base.replace(" ", "  ") + " ", "sport")])[0]
    # Semantic duplicate: different words, same meaning (caught by MiniLM, not by MinHash).
    sem = _add(p, "topic", [("Simmer the tomato sauce with garlic for 20 minutes.", "food")])[0]
    before = _dump(p)
    res = curate(p, "topic", {"steps": ["validate", "dedup", "split"], "cosine": 0.9})
    assert _dump(p) == before  # curation never edits the store
    kept = set(res.snapshot.ids("all"))
    assert best in kept and old not in kept and ws not in kept
    sport0 = next(r.id for r in p.store.iter_records("topic") if r.input == SPORT[0])
    assert sport0 not in kept  # "... the derby." is a near copy of "... the derby match."
    reasons = {d["reason"] for d in decisions_for(p, old)}
    assert reasons & {"near duplicate", "exact duplicate", "semantic duplicate"}
    why_ws = decisions_for(p, ws)
    assert why_ws[0]["snapshot"] == res.snapshot.id and why_ws[-1]["detail"]["kept"] == best
    dedup = next(s for s in res.steps if s.name == "dedup")
    assert dedup.removed >= 4  # old, ws, sem or its twin, SPORT[0]
    food_twins = {sem, next(r.id for r in p.store.iter_records("topic") if r.input == FOOD[0])}
    assert len(food_twins & kept) == 1
    assert res.card_path is not None and res.card_path.exists()
    html = res.card_path.read_text()
    assert "data:image/png;base64," in html and "Duplicate clusters" in html
    assert (res.card_path.parent / "lengths.png").exists()


def test_pii_is_redacted_in_training_view_only(project: Any) -> None:
    p = project
    p.create_task("reply", "generate")
    rid = _add(
        p,
        "reply",
        [
            (
                "Mail me at ann@example.com or call +1 415 555 2671",
                "Sure, I will write to ann@example.com.",
            )
        ],
    )[0]
    _add(p, "reply", [(s, "ok") for s in SPORT[:8]])
    res = curate(p, "reply", {"steps": ["validate", "pii", "split"]})
    pii = next(s for s in res.steps if s.name == "pii")
    assert pii.changed == 1 and pii.notes == ["redacted 2 email, 1 phone"]
    view = {r.id: r for r in snapshots.records(p, res.snapshot, "all")}
    assert view[rid].input == "Mail me at <EMAIL> or call <PHONE>"
    assert view[rid].reference == "Sure, I will write to <EMAIL>."
    assert "ann@example.com" in p.record(rid).input_text  # the store keeps the original
    no_pii = curate(p, "reply", {"steps": ["validate", "split"]})
    assert no_pii.snapshot.id != res.snapshot.id
    assert {r.id: r for r in snapshots.records(p, no_pii.snapshot, "all")}[rid].input == p.record(
        rid
    ).input


def test_validate_and_filters_leave_out_bad_rows_with_reasons(project: Any) -> None:
    p = project
    p.create_task(
        "ex",
        "extract",
        schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    good = _add(
        p,
        "ex",
        [
            (f"Ship to {c}", json.dumps({"city": c}))
            for c in ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Vienna", "Prague"]
        ],
    )
    bad_schema = _add(p, "ex", [("Ship to nowhere", json.dumps({"town": "x"}))])[0]
    denied = _add(p, "ex", [("Ship to Lisbon, password hunter2", json.dumps({"city": "Lisbon"}))])[
        0
    ]
    long_ = _add(p, "ex", [("Ship to " + "very " * 80 + "far", json.dumps({"city": "Far"}))])[0]
    res = curate(
        p,
        "ex",
        {"steps": ["validate", "filters", "split"], "deny": ["(?i)password"], "max_tokens": 60},
    )
    kept = set(res.snapshot.ids("all"))
    assert set(good) <= kept and not {bad_schema, denied, long_} & kept
    assert decisions_for(p, bad_schema)[0]["reason"] == "reference fails the task schema"
    removed = {
        i: next(d for d in decisions_for(p, i) if d["action"] == "removed") for i in (denied, long_)
    }
    assert removed[denied]["detail"]["pattern"] == "(?i)password"
    assert (
        removed[long_]["reason"] == "example too long" and removed[long_]["detail"]["tokens"] > 60
    )


def test_cleanlab_flags_planted_label_flips(topics: Any) -> None:
    p = topics
    flips = {2, 7, 13}
    items = [(s, "food" if i in flips else "sport") for i, s in enumerate(SPORT)]
    items += [(f, "food") for f in FOOD]
    ids = _add(p, "topic", items)
    res = curate(p, "topic", {"steps": ["validate", "noise", "split"]})
    flagged = {i for i in ids if any(d["action"] == "flagged" for d in decisions_for(p, i))}
    planted = {ids[i] for i in flips}
    assert planted <= flagged
    assert len(flagged - planted) <= 2
    assert set(res.snapshot.ids("all")) == set(ids)  # flagged, not dropped
    dropped = curate(p, "topic", {"steps": ["validate", "noise", "split"], "drop_noisy": True})
    assert not planted & set(dropped.snapshot.ids("all"))
    suggestion = next(d for d in decisions_for(p, ids[2]) if d["action"] == "removed")
    assert suggestion["detail"]["suggested"] == "sport"


def test_dedup_keeps_the_human_label_over_a_newer_teacher_copy(topics: Any) -> None:
    """A teacher's label of the same input, newer and of the same review status, must not
    displace the person's: only a human reference can be evaluated and gated on."""
    p = topics
    _add(p, "topic", [(s, "sport") for s in SPORT] + [(f, "food") for f in FOOD])
    text = "The keeper saved a penalty in the last minute of the cup final."
    human = _add(p, "topic", [(text, "sport")], status=Status.unreviewed)[0]
    teacher = _add(p, "topic", [(text, "sport")], source=Source.teacher, status=Status.unreviewed)[
        0
    ]
    res = curate(p, "topic", {"steps": ["validate", "dedup", "split"]})
    kept = set(res.snapshot.ids("all"))
    assert human in kept and teacher not in kept


def test_split_keeps_groups_fixes_test_and_checks_contamination(
    project: Any, monkeypatch: Any
) -> None:
    from whetstone.models import embeddings

    p = project
    p.create_task("news", "generate")
    texts = SPORT + FOOD
    ids = _add(p, "news", [(t, "x") for t in texts])
    twins = _add(p, "news", [(t.replace(".", " today."), "x") for t in texts[:10]])
    calls: list[int] = []
    real = embeddings.embed
    monkeypatch.setattr(
        embeddings, "embed", lambda t, spec=None, **kw: calls.append(len(t)) or real(t, spec, **kw)
    )
    cfg = {"steps": ["validate", "split"], "test": 0.25, "validation": 0.1}
    first = curate(p, "news", cfg)
    assert sum(calls) == len(ids) + len(twins)
    split_of = {rid: s for s in snapshots.SPLITS for rid in first.snapshot.ids(s)}
    for orig, twin in zip(ids[:10], twins, strict=True):
        assert split_of[orig] == split_of[twin]  # a near-duplicate pair never straddles splits
    assert first.snapshot.counts()["test"] > 0 and first.snapshot.counts()["train"] > 0
    # New records arrive; one earlier test record is rejected (so absent from this run) and a
    # paraphrase of it arrives: the contamination check must keep it out of training.
    new = _add(p, "news", [(t, "x") for t in WEATHER + FINANCE])
    gone = next(i for i in first.snapshot.ids("test") if i not in ids[:10] + twins)
    p.reject(gone)
    leak = _add(p, "news", [(p.record(gone).input_text.replace(".", "!"), "x")])[0]
    # A paraphrase of a test record that stays: it must not join (and so change) the test set.
    kept = next(i for i in first.snapshot.ids("test") if i not in ids[:10] + twins + [gone])
    twin = _add(p, "news", [(p.record(kept).input_text.replace(".", "!"), "x")])[0]
    calls.clear()
    # A smaller test fraction: earlier test rows still stay in test, new rows go to training,
    # so the paraphrase of the rejected test row would leak without the contamination check.
    second = curate(p, "news", {**cfg, "test": 0.05})
    assert sum(calls) == len(new) + 2  # only the new records were embedded
    assert set(second.snapshot.ids("test")) == set(first.snapshot.ids("test")) - {gone}
    assert twin not in second.snapshot.ids("all")
    assert "contamination" in decisions_for(p, twin)[0]["reason"]
    assert not set(first.snapshot.ids("train")) & set(second.snapshot.ids("test"))
    assert leak not in second.snapshot.ids("all")
    assert "contamination" in decisions_for(p, leak)[0]["reason"]


def test_budget_selection_prefers_hard_and_covers_topics(project: Any) -> None:
    p = project
    p.create_task("news", "generate")
    ids = _add(p, "news", [(t, "x") for t in SPORT + FOOD + WEATHER + FINANCE])
    hard = _add(
        p,
        "news",
        [("The umpire's decision was overturned after a long review.", "x")],
        tags=["hard"],
    )[0]
    res = curate(
        p,
        "news",
        {"steps": ["validate", "hard", "split", "select"], "test": 0.2, "validation": 0.0},
        budget=6,
    )
    train = set(res.snapshot.ids("train"))
    assert len(train) == 6
    if hard in set(res.snapshot.ids("all")) and hard not in res.snapshot.ids("test"):
        assert hard in train and res.snapshot.weights.get(hard) == 2.0
    topic = {
        i: n
        for n, group in enumerate([SPORT, FOOD, WEATHER, FINANCE])
        for i, t in zip(ids, SPORT + FOOD + WEATHER + FINANCE, strict=True)
        if t in group
    }
    assert len({topic[i] for i in train if i in topic}) >= 3
    with pytest.raises(InvalidInput, match="budget 500 is larger than"):
        curate(p, "news", {"steps": ["validate", "split", "select"]}, budget=500)
    assert len(list(p.store.iter_records("news"))) == len(ids) + 1


def test_unknown_embedding_model_is_a_clear_error(topics: Any, tmp_path: Any) -> None:
    _add(topics, "topic", [(s, "sport") for s in SPORT[:4]])
    with pytest.raises(NotFound, match="embedding model"):
        curate(topics, "topic", {"embedding_model": "no-such-model"})
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(NotFound, match="cannot load embedding model"):
        curate(topics, "topic", {"embedding_model": str(empty)})


def test_next_to_label_ranks_uncertain_and_novel(topics: Any) -> None:
    p = topics
    _add(p, "topic", [(s, "sport") for s in SPORT[:10]])
    now = utcnow()
    pool = [
        Record(task="topic", input=SPORT[10], output="sport", confidence=-0.01, created_at=now),
        Record(task="topic", input=FOOD[0], output="sport", confidence=-2.0, created_at=now),
        Record(
            task="topic",
            input=FOOD[1],
            output="food",
            confidence=-0.01,
            created_at=now + timedelta(seconds=1),
        ),
        Record(task="topic", input=SPORT[0], output="sport", confidence=-2.0),
    ]
    ids = p.store.add_records(pool)
    queue = next_to_label(p, "topic", 3)
    assert next(r.id for r, _, _ in queue) == ids[1]  # unsure and unlike anything labelled
    assert queue[0][2]["uncertainty"] > 0.8 and queue[0][2]["distance"] > 0.3
    scores = [s for _, s, _ in queue]
    assert scores == sorted(scores, reverse=True)
    assert next_to_label(p, "topic", 50)[-1][1] >= 0


def test_next_to_label_prefers_typical_records_and_ignores_held_out_labels(topics: Any) -> None:
    """Density keeps a one-off outlier from heading the queue when nothing is labelled yet; a
    held-out (test) label of the same text does not make a record look already covered."""
    p = topics
    outlier = "Quantum flux capacitors hum beneath the lighthouse at midnight."
    ids = p.store.add_records(
        [
            Record(task="topic", input=t, output="sport", confidence=-1.0)
            for t in [outlier, *SPORT[:6]]
        ]
    )
    plain = next_to_label(p, "topic", 2, density=0)
    assert plain[0][0].id == ids[0]  # every score ties on uncertainty x distance: first wins
    dense = next_to_label(p, "topic", 2)
    assert ids[0] not in [r.id for r, _, _ in dense]
    assert dense[0][2]["density"] > next_to_label(p, "topic", 7)[-1][2]["density"]
    before = [(r.id, parts) for r, _, parts in next_to_label(p, "topic", 7)]
    _add(p, "topic", [(SPORT[0], "sport")], tags=["heldout"])
    assert [(r.id, parts) for r, _, parts in next_to_label(p, "topic", 7)] == before


def test_cli_curate_and_next(topics: Any, tmp_path: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from whetstone.cli import common
    from whetstone.cli import curate as curate_cli

    p = topics
    _add(p, "topic", [(s, "sport") for s in SPORT] + [(f, "food") for f in FOOD])
    p.store.add_records([Record(task="topic", input=WEATHER[0], output="sport", confidence=-1.0)])
    app = typer.Typer()
    curate_cli.register(app)

    @app.callback()
    def main() -> None:
        common.state.project = str(p.root)

    runner = CliRunner()
    out = runner.invoke(app, ["curate", "--task", "topic", "--budget", "10", "--no-pii"])
    assert out.exit_code == 0, out.output
    assert "from-snapshot" in out.output
    steps = [line.split("│")[1].strip() for line in out.output.splitlines() if line.startswith("│")]
    assert "select" in steps and "dedup" in steps and "pii" not in steps
    queue = tmp_path / "q.jsonl"
    out = runner.invoke(app, ["curate", "next", "--task", "topic", "--n", "5", "-o", str(queue)])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in queue.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["input"] == WEATHER[0] and "score" in rows[0]


def test_generate_noise_uses_the_production_adapter_loss(
    project: Any, tiny_base_dir: Any, monkeypatch: Any
) -> None:
    from whetstone.curate import noise
    from whetstone.models import base
    from whetstone.train.scoring import reference_losses

    p = project
    p.create_task("reply", "generate")
    _add(p, "reply", [(t, t.upper()) for t in SPORT[:6]])
    res = curate(p, "reply", {"steps": ["validate", "noise", "split"]}, scorer=reference_losses)
    assert "no production adapter" in next(s for s in res.steps if s.name == "noise").notes[0]
    model, tok = base.load(str(tiny_base_dir))
    monkeypatch.setattr(noise, "production_model", lambda ctx: (model, tok, "reply@1", set()))
    cfg = {"steps": ["validate", "noise", "hard", "split"], "hard_loss_quantile": 0.5}
    # Curation does not import training: without the scorer its caller passes, no loss rule.
    unscored = curate(p, "reply", cfg)
    assert "no scorer given" in next(s for s in unscored.steps if s.name == "noise").notes[0]
    res = curate(p, "reply", cfg, scorer=reference_losses)
    # Nothing to report: no note either about a teacher, which Whetstone does not have.
    assert next(s for s in res.steps if s.name == "noise").notes == []
    hard = next(s for s in res.steps if s.name == "hard")
    assert hard.changed >= 1  # the highest-loss half is up-weighted as hard examples
    # With drop_noisy, a high loss is read as a suspect label, never as a hard example.
    res = curate(p, "reply", {**cfg, "drop_noisy": True}, scorer=reference_losses)
    assert next(s for s in res.steps if s.name == "hard").changed == 0
