"""The teacher labels records: `whetstone distill`.

Each unlabelled record (production traffic first, then imports, then synthetic inputs) is put
to the hero exactly as the workhorse sees it (`prompts.chat`), K samples at once. Where the
majority answer reaches the agreement bar it becomes a teacher label: a new `source=teacher`
record with the same input (the original stays as it was, tagged `distilled`), or, for a
synthetic input, the label on that record itself. Below the bar nothing is labelled: the record
is tagged `teacher-disagreed` for a person (`curate next` ranks those first).

Teacher labels train, never evaluate (`records.human_reference`). Every step is keyed by the
original record, so a rerun or a resumed run asks the hero nothing twice and adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from whetstone import prompts
from whetstone.distill.vote import DEFAULT_MIN_AGREEMENT, Vote, majority
from whetstone.errors import InvalidInput
from whetstone.models.hero import Hero, HeroError, HeroReply
from whetstone.progress import progress
from whetstone.project import Project
from whetstone.records import TEACHER_DISAGREED, Record, Source, Status, Task, content_key

DISTILLED = "distilled"  # the original of a teacher label
DISAGREED = TEACHER_DISAGREED  # the teacher's samples disagreed: a person should label it
# Where unlabelled records come from, in the order they are labelled.
SOURCES = (Source.production, Source.imported, Source.synthetic)
DEFAULT_MAX_FAILURES = 10  # consecutive records the hero failed on before giving up


@dataclass
class LabelSummary:
    task: str
    model: str
    samples: int
    min_agreement: float
    asked: int = 0  # records put to the teacher
    labelled: int = 0
    disagreed: int = 0  # sent to human review instead
    failed: int = 0  # the hero gave no answer
    reused: int = 0  # answered from the hero's answer the cascade already captured (free)
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_error: str | None = None  # masked by the hero client: never holds the key

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def count(self, reply: HeroReply) -> None:
        self.cost += reply.cost
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


def teacher_key(original: Record) -> str:
    """The source key of the teacher label of `original`: one label per record, ever."""
    return content_key("teacher", original.task, original.id)


def labelled_originals(project: Project, task: str) -> set[int]:
    """Records a teacher label already names as its original."""
    out: set[int] = set()
    for r in project.store.iter_records(task, source=Source.teacher.value):
        of = (r.meta.get("teacher") or {}).get("of")
        if isinstance(of, int):
            out.add(of)
    return out


def unlabelled(project: Project, task: str, n: int) -> list[Record]:
    """Up to `n` records the teacher has not seen: no reference, not rejected, not labelled or
    sent to review by an earlier run; production first, then imports, then synthetic inputs."""
    done = labelled_originals(project, task)
    out: list[Record] = []
    for source in SOURCES:
        for r in project.store.iter_records(task, source=source.value, has_reference=False):
            if r.status == Status.rejected or r.id in done or {DISTILLED, DISAGREED} & set(r.tags):
                continue
            out.append(r)
            if len(out) >= n:
                return out
    return out


def label(
    project: Project,
    task: str,
    hero: Hero,
    *,
    n: int = 100,
    samples: int = 1,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> LabelSummary:
    """Have the teacher label up to `n` unlabelled records of `task` (see the module)."""
    if n < 1:
        raise InvalidInput(f"--n must be at least 1, not {n}")
    t = project.task(task)
    return label_records(
        project,
        t,
        hero,
        unlabelled(project, task, n),
        samples=samples,
        min_agreement=min_agreement,
        max_failures=max_failures,
    )


def label_records(
    project: Project,
    task: Task,
    hero: Hero,
    records: Sequence[Record],
    *,
    samples: int = 1,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> LabelSummary:
    """Label `records` (stored, unlabelled) with the teacher's majority vote. A record the hero
    fails on is counted and left for a rerun; `max_failures` in a row stop the run (the hero is
    down, or refuses everything) with what was done so far kept."""
    if samples < 1:
        raise InvalidInput(f"--samples must be at least 1, not {samples}")
    if not 0 <= min_agreement <= 1:
        raise InvalidInput(f"--min-agreement must be between 0 and 1, not {min_agreement}")
    summary = LabelSummary(task.name, hero.config.model, samples, min_agreement)
    # Batches a few times the hero's concurrency: results are written as they come, and a dead
    # hero is noticed after a batch rather than after the whole list.
    batch = max(hero.config.max_concurrency * 4, 1)
    in_a_row = 0
    with progress() as bars:
        bar = bars.add_task(f"distill {task.name}", total=len(records), info="")
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            replies = _answers(task, hero, chunk, samples, lambda: bars.advance(bar))
            summary.reused += sum(1 for r in replies if isinstance(r, HeroReply) and not r.calls)
            for rec, reply in zip(chunk, replies, strict=True):
                summary.asked += 1
                if isinstance(reply, HeroError):
                    summary.failed += 1
                    summary.last_error = str(reply)
                    in_a_row += 1
                    if in_a_row >= max_failures:
                        raise HeroError(
                            f"the teacher failed on {in_a_row} records in a row, so distillation "
                            f"stopped ({summary.labelled} labelled, {summary.disagreed} sent to "
                            f"review so far; a rerun resumes). Last failure: {reply}"
                        )
                    continue
                in_a_row = 0
                summary.count(reply)
                _write(project, task, rec, reply, majority(task, reply.texts), summary)
            bars.update(
                bar,
                info=f"{summary.labelled} labelled · {summary.disagreed} to review · "
                f"{summary.failed} failed",
            )
    return summary


def captured_answer(rec: Record) -> HeroReply | None:
    """The hero's answer an escalation already captured on `rec` (serving's meta.cascade):
    a teacher label paid for once, not asked again."""
    hero = (rec.meta.get("cascade") or {}).get("hero") or {}
    text = hero.get("output")
    if not isinstance(text, str):
        return None
    model = str(hero.get("model") or "")
    return HeroReply([text], model, 0, 0, 0.0, 0.0, calls=0)


def _answers(
    task: Task, hero: Hero, chunk: Sequence[Record], samples: int, advance: Callable[[], None]
) -> list[HeroReply | HeroError]:
    """The teacher's answers for `chunk`: one sample already captured by the cascade is
    reused; the rest are asked."""
    known = [captured_answer(r) if samples == 1 else None for r in chunk]
    ask = [i for i, k in enumerate(known) if k is None]
    asked = hero.answer_many(
        [prompts.chat(task, chunk[i].input) for i in ask], n=samples, on_done=lambda _: advance()
    )
    out: list[HeroReply | HeroError | None] = list(known)
    for i, reply in zip(ask, asked, strict=True):
        out[i] = reply
    for _ in range(len(chunk) - len(ask)):
        advance()
    return [r for r in out if r is not None]


def _write(
    project: Project,
    task: Task,
    rec: Record,
    reply: HeroReply,
    vote: Vote,
    summary: LabelSummary,
) -> None:
    """Store one record's outcome: a teacher label, or the record sent to human review."""
    assert rec.id is not None, "records to label are stored ones"
    in_place = rec.source == Source.synthetic  # a synthetic input has no human original
    info = {
        "model": reply.model,
        "samples": summary.samples,
        "agreement": round(vote.agreement, 4),
        "answers": vote.answers,
        "of": None if in_place else rec.id,
    }
    store = project.store
    if vote.answer is None or not vote.agrees(summary.min_agreement):
        store.update_meta(rec.id, teacher=info)
        store.add_tags(rec.id, DISAGREED)
        summary.disagreed += 1
        return
    annotator = f"teacher:{reply.model}"
    if in_place:
        # Recorded as an event of the record's history, so a reviewer sees who labelled it;
        # the status stays unreviewed: nobody has confirmed it.
        store.review(
            rec.id,
            Status.unreviewed,
            reference=vote.answer,
            annotator=annotator,
            comment=f"teacher label, agreement {vote.agreement:.2f} of {summary.samples}",
        )
        store.update_meta(rec.id, teacher=info)
    else:
        label_rec = Record(
            task=task.name,
            input=rec.input,
            # The workhorse's answer stays beside the teacher's: where they differ the record
            # is a mistake the workhorse made, which curation mines as a hard example.
            output=rec.output,
            model=rec.model,
            confidence=rec.confidence,
            reference=vote.answer,
            source=Source.teacher,
            annotator=annotator,
            meta={"teacher": info},
            source_key=teacher_key(rec),
        )
        store.add_records([label_rec])
        store.add_tags(rec.id, DISTILLED)
    summary.labelled += 1
