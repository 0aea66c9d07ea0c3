"""The hero as teacher, against a real local HTTP stand-in: majority labels with their
agreement, disagreement sent to people, reruns that add nothing, failures counted, synthetic
inputs that stay clear of the test split, and teacher labels that never reach a test split."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.hero_stub import StubHero, serving

from curate_data import FOOD, SPORT
from whetstone import distill, neardup, snapshots
from whetstone.distill import majority, parse_inputs
from whetstone.errors import InvalidInput
from whetstone.models.hero import Hero, HeroConfig, HeroError
from whetstone.records import Record, Source, Status, human_reference

KEY = "sk-test-SECRET-distill"
LABELS = ["billing", "shipping"]


def _answer(text: str, i: int) -> str:
    """Agreed inputs get 'Billing.' every time; 'mixed' two of three; 'split' one of three."""
    if "mixed" in text:
        return ["billing", "Billing", "shipping"][i % 3]
    if "split" in text:
        return ["billing", "shipping", "no idea"][i % 3]
    if "boom" in text:
        raise RuntimeError("the stub fails on this record")
    return "Billing."


@pytest.fixture
def hero_url() -> Iterator[tuple[StubHero, str]]:
    stub = StubHero(answer=_answer)
    with serving(stub) as url:
        yield stub, url


def _hero(url: str, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Hero:
    monkeypatch.setenv("HERO_KEY", KEY)
    cfg = {
        "base_url": url,
        "model": "stub-large",
        "api_key_env": "HERO_KEY",
        "price_input_per_1k": 1.0,
        "price_output_per_1k": 2.0,
        "timeout_s": 5,
        "max_retries": 0,
        **kw,
    }
    return Hero(HeroConfig.model_validate(cfg))


@pytest.fixture
def tickets(project: Any) -> Any:
    project.create_task("tickets", "classify", labels=LABELS)
    return project


def _dump(p: Any) -> str:
    return json.dumps([r.model_dump(mode="json") for r in p.store.iter_records()])


def _by_source(p: Any, task: str, source: Source) -> list[Record]:
    return list(p.store.iter_records(task, source=source.value))


# ---------------------------------------------------------------- the vote


def test_majority_vote_agreement_and_unusable_samples(project: Any) -> None:
    t = project.create_task("tickets", "classify", labels=LABELS)
    v = majority(t, ["billing", "Billing.", "shipping"])
    assert (v.answer, round(v.agreement, 3)) == ("billing", 0.667)
    assert v.answers == ["billing", "billing", "shipping"]
    assert v.agrees(2 / 3) and not v.agrees(0.7)
    # A sample naming no label counts against every answer and cannot win.
    v = majority(t, ["billing", "what?", "dunno"])
    assert v.answer == "billing" and v.agreement == pytest.approx(1 / 3) and "what?" in v.answers
    assert majority(t, ["what?", "what?"]).answer is None
    assert majority(t, ["shipping"]).agrees(1.0)  # one sample always agrees with itself
    x = project.create_task("ex", "extract", schema={"type": "object", "required": ["a"]})
    v = majority(x, ['{"a": 1, "b": 2}', '{"b":2,"a":1}', '{"b": 2}'])
    assert v.answer == '{"a":1,"b":2}' and v.agreement == pytest.approx(
        2 / 3
    )  # schema-breaker lost


# ---------------------------------------------------------------- labelling


def test_distill_labels_the_majority_and_sends_disagreement_to_review(
    tickets: Any, hero_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, (stub, url) = tickets, hero_url
    imported = p.store.add_records(
        [
            Record(task="tickets", input="refund please, mixed", source=Source.imported),
            Record(task="tickets", input="split decision", source=Source.imported),
            Record(task="tickets", input="ignored", source=Source.imported, status=Status.rejected),
        ]
    )
    prod = p.capture("tickets", "card declined", "shipping", model="tickets@1")
    labelled_already = p.capture("tickets", "has a label", "billing", reference="billing")
    hero = _hero(url, monkeypatch)
    first = distill.label(p, "tickets", hero, n=1, samples=3)
    assert first.labelled == 1 and stub.calls[0]["messages"][-1]["content"] == "card declined"
    s = distill.label(p, "tickets", hero, n=10, samples=3)
    assert (s.asked, s.labelled, s.disagreed, s.failed) == (2, 1, 1, 0)
    assert s.cost == pytest.approx(2 * (10 * 1.0 + 15 * 2.0) / 1000) and s.tokens == 50
    # The hero is asked exactly as the workhorse: the task's instruction, then the input.
    assert stub.calls[0]["messages"][0]["role"] == "system" and stub.calls[0]["n"] == 3
    teacher = {r.meta["teacher"]["of"]: r for r in _by_source(p, "tickets", Source.teacher)}
    assert set(teacher) == {prod, imported[0]}
    t = teacher[imported[0]]
    assert (t.reference, t.status, t.annotator, t.input) == (
        "billing",
        Status.unreviewed,
        "teacher:stub-large",
        "refund please, mixed",
    )
    assert t.meta["teacher"]["agreement"] == pytest.approx(0.6667, abs=1e-4)
    assert t.meta["teacher"]["answers"] == ["billing", "billing", "shipping"]
    assert t.meta["teacher"]["samples"] == 3 and t.meta["teacher"]["model"] == "stub-large"
    assert "distilled" in p.store.get_record(imported[0]).tags
    assert p.store.get_record(prod).reference is None  # the original is left as it was
    low = p.store.get_record(imported[1])
    assert low.reference is None and "teacher-disagreed" in low.tags
    assert low.meta["teacher"]["agreement"] == pytest.approx(1 / 3, abs=1e-3)
    assert not human_reference(t) and human_reference(p.store.get_record(labelled_already))
    # Everything is labelled or sent to review: nothing is left to ask about.
    assert distill.label(p, "tickets", hero, n=10, samples=3).asked == 0


def test_an_escalation_already_answered_is_a_free_teacher_label_keeping_the_mistake(
    tickets: Any, hero_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, (stub, url) = tickets, hero_url
    escalated = p.capture("tickets", "where is my parcel", "billing", model="tickets@1")
    p.store.update_meta(
        escalated,
        cascade={"answered_by": "hero", "hero": {"output": "shipping", "model": "stub-large"}},
    )
    s = distill.label(p, "tickets", _hero(url, monkeypatch), n=5)
    assert (s.asked, s.labelled, s.reused, s.cost) == (1, 1, 1, 0.0)
    assert stub.calls == []  # paid for once, when the server escalated
    (t,) = _by_source(p, "tickets", Source.teacher)
    # The workhorse's wrong answer stays beside the teacher's: a hard example for curation.
    assert (t.reference, t.output, t.model) == ("shipping", "billing", "tickets@1")
    # With several samples wanted, the one captured answer is not enough: the hero is asked.
    other = p.capture("tickets", "parcel lost, mixed", "billing", model="tickets@1")
    p.store.update_meta(other, cascade={"hero": {"output": "shipping", "model": "stub-large"}})
    assert distill.label(p, "tickets", _hero(url, monkeypatch), n=5, samples=3).reused == 0
    assert len(stub.calls) == 1


def test_rerun_adds_nothing_and_resumes_a_half_written_run(
    tickets: Any, hero_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, (stub, url) = tickets, hero_url
    ids = [p.capture("tickets", f"ticket {i}", "billing") for i in range(4)]
    # A run that stored its label but died before tagging the original.
    p.store.add_records(
        [
            Record(
                task="tickets",
                input="ticket 0",
                reference="billing",
                source=Source.teacher,
                meta={"teacher": {"of": ids[0]}},
            )
        ]
    )
    hero = _hero(url, monkeypatch)
    assert distill.label(p, "tickets", hero, n=10).labelled == 3
    calls, before = len(stub.calls), _dump(p)
    again = distill.label(p, "tickets", hero, n=10)
    assert (again.asked, len(stub.calls), _dump(p)) == (0, calls, before)
    assert len(_by_source(p, "tickets", Source.teacher)) == 4


def test_hero_failures_are_counted_then_stop_the_run(
    tickets: Any, hero_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, (_, url) = tickets, hero_url
    p.capture("tickets", "boom one", "billing")
    ok = p.capture("tickets", "fine", "billing")
    p.capture("tickets", "boom two", "billing")
    hero = _hero(url, monkeypatch)
    s = distill.label(p, "tickets", hero, n=10)
    assert (s.asked, s.labelled, s.failed) == (3, 1, 2)
    assert s.last_error and "stub-large" in s.last_error and KEY not in s.last_error
    assert [r.meta["teacher"]["of"] for r in _by_source(p, "tickets", Source.teacher)] == [ok]
    with pytest.raises(HeroError, match="2 records in a row") as e:
        distill.label(p, "tickets", hero, n=10, max_failures=2)
    assert KEY not in str(e.value)
    # Failed records were not marked: a later run retries them.
    assert len(distill.unlabelled(p, "tickets", 10)) == 2
    assert KEY not in _dump(p)


# ---------------------------------------------------------------- splits


def _human(texts: list[str], ref: str) -> list[Record]:
    return [
        Record(task="topic", input=t, reference=ref, source=Source.imported, status=Status.accepted)
        for t in texts
    ]


def _teacher(texts: list[str], ref: str, source: Source = Source.teacher) -> list[Record]:
    return [Record(task="topic", input=t, reference=ref, source=source) for t in texts]


def _teacherish(p: Any, ids: list[int]) -> set[int]:
    recs = p.store.iter_records("topic", ids=ids)
    return {int(r.id or 0) for r in recs if r.source in (Source.teacher, Source.synthetic)}


def test_teacher_labels_never_enter_test_or_validation(project: Any) -> None:
    p = project
    p.create_task("topic", "classify", labels=["sport", "food"])
    humans = [i for i in p.store.add_records(_human(SPORT, "sport") + _human(FOOD, "food")) if i]
    # Copies of every human input (one group each with its human), plus new ones of their own.
    copies = _teacher([s + "!" for s in SPORT + FOOD], "sport")
    own = _teacher([f"teacher only sentence number {i} about football" for i in range(10)], "sport")
    synth = _teacher(["a synthetic input about pasta and sauces"], "food", Source.synthetic)
    p.store.add_records(copies + own + synth)
    snap = snapshots.snapshot_task(p, "topic", validation=0.2, test=0.3)
    scored = snap.ids("test") + snap.ids("validation")
    assert scored and not _teacherish(p, scored)
    trained = set(snap.ids("train"))
    assert len(_teacherish(p, list(trained))) == 10 + 1 + sum(
        1 for i in humans if i in trained
    )  # teacher-only groups train; copies of scored records are left out
    assert snap.info["left_out_near_test"] == len(scored)
    # A teacher label a person confirmed counts as human from then on.
    confirmed = next(r for r in p.store.iter_records("topic", source="teacher"))
    assert human_reference(p.store.review(int(confirmed.id or 0), Status.accepted))


def test_curation_keeps_teacher_labels_out_of_test(project: Any) -> None:
    from whetstone.curate import curate

    p = project
    p.create_task("topic", "classify", labels=["sport", "food"])
    p.store.add_records(_human(SPORT, "sport") + _human(FOOD, "food"))
    # Near copies of the sport records: each joins its human record's group.
    p.store.add_records(_teacher([s.replace(".", " today.") for s in SPORT], "sport"))
    cfg = {"test": 0.3, "validation": 0.2, "card": False, "steps": ["validate", "split"]}
    snap = curate(p, "topic", cfg).snapshot
    assert snap.ids("test") and not _teacherish(p, snap.ids("test") + snap.ids("validation"))
    sport_train = [r for r in snapshots.records(p, snap, "train") if r.reference == "sport"]
    assert len(_teacherish(p, [int(r.id or 0) for r in sport_train])) * 2 == len(sport_train)


# ---------------------------------------------------------------- synthetic inputs


def test_parse_inputs_is_lenient() -> None:
    assert parse_inputs('```json\n["a b", "c"]\n```') == ["a b", "c"]
    assert parse_inputs('Here they are: ["x", {"input": "y"}] hope that helps') == ["x", "y"]
    assert parse_inputs('{"inputs": ["p", " "]}') == ["p"]
    assert parse_inputs('Here are three:\n1. first one\n- second\n* "third",\n') == [
        "first one",
        "second",
        "third",
    ]


def _synth_stub(batch: list[str]) -> Callable[[str, int], str]:
    def answer(text: str, i: int) -> str:
        if "new inputs" in text:
            return "Sure! " + json.dumps(batch)
        return "sport"

    return answer


def test_synthesize_drops_duplicates_and_near_test_and_keeps_lineage(
    project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project
    p.create_task("topic", "classify", labels=["sport", "food"])
    p.store.add_records(_human(SPORT, "sport"))
    snap = snapshots.snapshot_task(p, "topic", validation=0.0, test=0.3)
    test_text = snapshots.records(p, snap, "test")[0].input_text
    train_text = snapshots.records(p, snap, "train")[0].input_text
    near_test = test_text.replace(".", ", again.")
    assert neardup.similarity(near_test, test_text) >= neardup.THRESHOLD
    new = ["The goalkeeper saved a penalty in extra time.", "Rowing crews raced at dawn."]
    batch = [train_text.upper(), near_test, new[0], new[0] + " ", new[1]]
    stub = StubHero(answer=_synth_stub(batch))
    with serving(stub) as url:
        hero = _hero(url, monkeypatch)
        s = distill.synthesize(p, "topic", hero, n=5, steer="water sports", shots=3)
        again = distill.synthesize(p, "topic", hero, n=2, shots=3)
    # Round one keeps two of five; round two (asked for the three missing) finds nothing new
    # and stops.
    assert (s.asked, s.requests, s.parsed, s.stored, s.labelled) == (5, 2, 10, 2, 2)
    assert (s.duplicates, s.near_test) == (2 + 4, 1 + 1)
    assert "water sports" in stub.calls[0]["messages"][-1]["content"]
    assert stub.calls[0]["temperature"] == 1.0
    recs = _by_source(p, "topic", Source.synthetic)
    assert sorted(r.input_text for r in recs) == sorted(new)
    human_ids = {int(r.id or 0) for r in p.store.iter_records("topic", source="import")}
    for r in recs:
        assert r.meta["synthetic"]["model"] == "stub-large"
        assert r.meta["synthetic"]["steer"] == "water sports"
        assert (
            len(r.meta["synthetic"]["shots"]) == 3
            and set(r.meta["synthetic"]["shots"]) <= human_ids
        )
        assert (r.reference, r.annotator, r.status) == (
            "sport",
            "teacher:stub-large",
            Status.unreviewed,
        )
        assert r.meta["teacher"]["of"] is None
        assert p.store.get_record(int(r.id or 0)).history[-1].annotator == "teacher:stub-large"
    # Everything the second run was offered is known now: nothing stored, nothing labelled.
    assert (again.stored, again.labelled, again.duplicates) == (0, 0, 4)
    assert not _teacherish(p, snapshots.snapshot_task(p, "topic").ids("test"))
    assert KEY not in _dump(p)


def test_synthesize_needs_examples_or_a_steer(
    project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.create_task("topic", "classify", labels=["sport", "food"])
    with pytest.raises(InvalidInput, match="--steer"):
        distill.synthesize(project, "topic", _hero("http://127.0.0.1:9", monkeypatch), n=3)


# ---------------------------------------------------------------- review queue and CLI


def test_curate_next_ranks_teacher_disagreed_first(tickets: Any) -> None:
    from whetstone.curate import next_to_label

    p = tickets
    for i, text in enumerate(SPORT[:6]):
        p.capture("tickets", text, "billing", confidence=-3.0 - i)  # very unsure
    low, lower = p.store.add_records(
        [
            Record(
                task="tickets",
                input=FOOD[0],
                source=Source.imported,
                tags=["teacher-disagreed"],
                meta={"teacher": {"agreement": 0.5}},
            ),
            Record(
                task="tickets",
                input=FOOD[1],
                source=Source.imported,
                tags=["teacher-disagreed"],
                meta={"teacher": {"agreement": 0.34}},
            ),
        ]
    )
    queue = [r.id for r, _, _ in next_to_label(p, "tickets", 4)]
    assert queue[:2] == [lower, low] and len(queue) == 4


def _run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    from whetstone.cli import main

    monkeypatch.setattr(sys, "argv", ["whetstone", *args])
    with pytest.raises(SystemExit) as e:
        main.run()
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_cli_distill_and_synthesize(
    tickets: Any,
    hero_url: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p, (_, url) = tickets, hero_url
    monkeypatch.delenv("WHETSTONE_PROJECT", raising=False)
    monkeypatch.delenv("WHETSTONE_DB", raising=False)
    p.capture("tickets", "where is my parcel, mixed", "billing")
    p.capture("tickets", "split it", "billing")
    root = str(p.root)
    code, _, err = _run_cli(capsys, monkeypatch, "--project", root, "distill", "--task", "tickets")
    assert code == 2 and "no hero configured" in err and "hero:" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("HERO_KEY", KEY)
    with open(p.config_path, "a") as f:
        f.write(f"hero:\n  base_url: {url}\n  model: stub-large\n  api_key_env: HERO_KEY\n")
    code, out, err = _run_cli(
        capsys, monkeypatch, "--project", root, "distill", "--task", "tickets", "--samples", "3"
    )
    assert code == 0, err
    assert "labelled" in out and "teacher-disagreed" in out and KEY not in out + err
    code, out, err = _run_cli(
        capsys, monkeypatch, "--project", root, "synthesize", "--task", "tickets", "--n", "2"
    )
    assert code == 0, err
    assert "near test" in out and KEY not in out + err
    code, _, err = _run_cli(
        capsys,
        monkeypatch,
        "--project",
        root,
        "distill",
        "--task",
        "tickets",
        "--min-agreement",
        "2",
    )
    assert code == 2 and "--min-agreement" in err
