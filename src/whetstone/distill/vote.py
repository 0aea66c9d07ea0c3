"""The teacher's vote: K sampled answers to one record, normalised the way every model's answer
is (`prompts.normalise_answer`, labels mapped onto the task's set) and counted. The majority
answer is the label; the share of samples that gave it is its confidence (self-consistency,
Wang et al. 2023)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from whetstone import prompts
from whetstone.errors import InvalidInput
from whetstone.records import Kind, Task

DEFAULT_MIN_AGREEMENT = 2 / 3
# Agreement is a ratio of small counts: 2/3 computed twice must compare equal.
_EPS = 1e-9


def vote_of(task: Task, text: str) -> str | None:
    """One sample as a vote: the canonical answer, or None when it fails the task's own checks
    (a label outside the set, JSON that breaks the schema, nothing at all), which can then
    never be the majority: such a sample counts against every answer."""
    answer = prompts.normalise_answer(task, text)
    if not answer or prompts.answer_fails_checks(task, answer) is not None:
        return None
    if task.kind == Kind.classify and task.labels:
        return prompts.map_label(answer, list(task.labels))
    try:
        return task.check_reference(answer)
    except InvalidInput:
        return None


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the majority answer (None when no sample was usable)
    agreement: float  # samples that gave it / samples asked
    answers: list[str]  # what each sample said, normalised (its vote where it had one)

    def agrees(self, min_agreement: float) -> bool:
        return self.answer is not None and self.agreement + _EPS >= min_agreement


def majority(task: Task, texts: list[str]) -> Vote:
    """The majority of the samples' votes; a tie goes to the answer given first."""
    votes = [vote_of(task, t) for t in texts]
    # A reviewer sees what an unusable sample said, not a blank.
    shown = [
        v if v is not None else prompts.normalise_answer(task, t)
        for v, t in zip(votes, texts, strict=True)
    ]
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return Vote(None, 0.0, shown)
    # Counter.most_common keeps first-seen order among equal counts.
    answer, count = counts.most_common(1)[0]
    return Vote(answer, count / len(texts), shown)
