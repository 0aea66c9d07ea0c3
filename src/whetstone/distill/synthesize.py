"""New inputs written by the teacher: `whetstone synthesize`.

The hero is shown a few of the task's real inputs (a different random few per request, for
variety) and an optional steer ("rural addresses with PO boxes"), and asked for new ones. What
comes back is parsed leniently (a JSON list, or one input per line), and anything that
duplicates a stored record, or comes near the test split by the gate's own leakage rule
(`whetstone.neardup`), is dropped before it is stored: a synthetic copy of a test input would
teach the model its exam. The rest are stored as `source=synthetic` records, with the shots
that prompted them as lineage, and labelled by the teacher through `distill`'s path.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from whetstone import neardup, prompts
from whetstone.distill.label import (
    DEFAULT_MAX_FAILURES,
    LabelSummary,
    label_records,
)
from whetstone.distill.vote import DEFAULT_MIN_AGREEMENT
from whetstone.errors import InvalidInput
from whetstone.models.hero import Hero, HeroError
from whetstone.progress import progress
from whetstone.project import Project
from whetstone.records import MODEL_SOURCES, Record, Source, Task, content_key
from whetstone.snapshots import held_out_ids

PER_REQUEST = 10  # inputs asked for in one request: short enough to stay varied and parse
MAX_ROUNDS = 3  # more requests when duplicates left too few, at most this many times

SYSTEM = (
    "You write new, realistic example inputs for a task that another model will perform. "
    "Write only inputs, never their answers. Reply with a JSON list of strings, one input "
    "per string, and nothing else."
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.):])\s+")
_FENCE = re.compile(r"^```[A-Za-z]*\s*|\s*```$")


@dataclass
class SynthSummary:
    task: str
    model: str
    asked: int  # inputs the user asked for
    requests: int = 0  # calls to the hero for inputs
    failed_requests: int = 0
    parsed: int = 0  # inputs parsed from the answers
    duplicates: int = 0  # dropped: duplicates of stored records or of each other
    near_test: int = 0  # dropped: near a test (or held-out) record
    stored: int = 0
    cost: float = 0.0  # of the requests for inputs; labelling's is in `labels`
    tokens: int = 0
    labels: LabelSummary | None = None
    last_error: str | None = None

    @property
    def labelled(self) -> int:
        return self.labels.labelled if self.labels else 0


def request(task: Task, shots: list[Record], k: int, steer: str | None) -> list[dict[str, str]]:
    """The chat asking the teacher for `k` new inputs like `shots`."""
    lines = [f"The model will be told: {prompts.instruction(task)}"]
    if shots:
        lines += ["", "Inputs it has been given:"]
        lines += [json.dumps(r.input_text, ensure_ascii=False) for r in shots]
    lines += [
        "",
        f"Write {k} new inputs in the same style"
        + (f", all of this kind: {steer}" if steer else "")
        + ". Make them varied and realistic; do not copy the examples.",
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _strings(value: Any) -> list[str] | None:
    """Inputs in a parsed JSON answer: a list of strings (or of one-field objects), or an
    object holding such a list; None when it is neither."""
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        return _strings(lists[0]) if len(lists) == 1 else None
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, dict) and len(item) == 1:
            item = next(iter(item.values()))
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
    return out


def parse_inputs(text: str) -> list[str]:
    """The inputs in a teacher's answer: its JSON list (inside code fences or prose too), else
    one input per line, list bullets, numbering and quotes removed, a heading line
    ("Here are five:") skipped."""
    text = _FENCE.sub("", text.strip())
    start, end = text.find("["), text.rfind("]")
    for chunk in (text, text[start : end + 1] if 0 <= start < end else ""):
        try:
            found = _strings(json.loads(chunk))
        except (json.JSONDecodeError, ValueError):
            continue
        if found is not None:
            return found
    out = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip().rstrip(",").strip()
        if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
            line = line[1:-1].strip()
        if line and line not in "[]" and not line.endswith(":"):
            out.append(line)
    return out


def _drop_duplicates(
    candidates: list[tuple[str, list[int]]],
    known: list[str],
    tests: list[str],
    summary: SynthSummary,
) -> list[tuple[str, list[int]]]:
    """The candidates that are neither near a test input nor a duplicate of a known input or
    of an earlier candidate (exact or near, `neardup.THRESHOLD`: the gate's leakage rule)."""
    texts = [c[0] for c in candidates]
    near_test = {m.i for m in neardup.best_matches(texts, tests)}
    dropped = {m.i for m in neardup.best_matches(texts, known)}
    dropped |= {m.j for m in neardup.pairs_within(texts)}
    summary.near_test += len(near_test)
    summary.duplicates += len(dropped - near_test)
    return [c for i, c in enumerate(candidates) if i not in near_test | dropped]


def _ask(
    hero: Hero,
    task: Task,
    pool: list[Record],
    want: int,
    *,
    shots: int,
    steer: str | None,
    rng: random.Random,
    summary: SynthSummary,
) -> list[tuple[str, list[int]]]:
    """One round of requests for `want` inputs: (input, ids of the shots that prompted it)."""
    sizes = [PER_REQUEST] * (want // PER_REQUEST) + (
        [want % PER_REQUEST] if want % PER_REQUEST else []
    )
    shot_sets = [rng.sample(pool, min(shots, len(pool))) for _ in sizes]
    with progress() as bars:
        bar = bars.add_task(f"synthesize {task.name}", total=len(sizes), info="")
        replies = hero.answer_many(
            [request(task, s, k, steer) for s, k in zip(shot_sets, sizes, strict=True)],
            # Sampled: the same shots asked twice should not give the same inputs.
            temperature=1.0,
            on_done=lambda _: bars.advance(bar),
        )
    out: list[tuple[str, list[int]]] = []
    for used, reply in zip(shot_sets, replies, strict=True):
        summary.requests += 1
        if isinstance(reply, HeroError):
            summary.failed_requests += 1
            summary.last_error = str(reply)
            continue
        summary.cost += reply.cost
        summary.tokens += reply.prompt_tokens + reply.completion_tokens
        ids = [int(r.id or 0) for r in used]
        out += [(text, ids) for text in parse_inputs(reply.text)]
    return out


def synthesize(
    project: Project,
    task: str,
    hero: Hero,
    *,
    n: int,
    steer: str | None = None,
    shots: int = 8,
    seed: int = 0,
    samples: int = 1,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> SynthSummary:
    """Ask the teacher for up to `n` new inputs of `task`, keep the new ones, store them as
    `source=synthetic` records and have the teacher label them (see the module)."""
    if n < 1:
        raise InvalidInput(f"--n must be at least 1, not {n}")
    if shots < 0:
        raise InvalidInput(f"--shots must be 0 or more, not {shots}")
    t = project.task(task)
    existing = list(project.store.iter_records(task))
    # Shots from real inputs: copying the teacher's own inputs would narrow every round.
    pool = [r for r in existing if r.source not in MODEL_SOURCES] or existing
    if not pool and not steer:
        raise InvalidInput(
            f"task {task!r} has no records to take example inputs from: import some, or "
            "describe the inputs wanted with --steer"
        )
    held = held_out_ids(project, task)
    tests = [neardup.input_for_matching(r.input) for r in existing if r.id in held]
    known = [neardup.input_for_matching(r.input) for r in existing]
    summary = SynthSummary(task, hero.config.model, n)
    rng = random.Random(seed)
    stored: list[Record] = []
    for _ in range(MAX_ROUNDS):
        want = n - len(stored)
        if want <= 0:
            break
        found = _ask(hero, t, pool, want, shots=shots, steer=steer, rng=rng, summary=summary)
        summary.parsed += len(found)
        kept = _drop_duplicates(found, known, tests, summary)[:want]
        new = _store(project, t, kept, hero.config.model, steer)
        stored += new
        known += [c[0] for c in kept]
        if not new:
            break  # nothing new came back: more requests would cost without adding
    summary.stored = len(stored)
    if not stored and summary.failed_requests == summary.requests and summary.requests:
        raise HeroError(f"the teacher failed on every request for inputs: {summary.last_error}")
    summary.labels = label_records(
        project,
        t,
        hero,
        stored,
        samples=samples,
        min_agreement=min_agreement,
        max_failures=max_failures,
    )
    return summary


def _store(
    project: Project, task: Task, kept: list[tuple[str, list[int]]], model: str, steer: str | None
) -> list[Record]:
    """Store the new inputs (unlabelled for now); return them as stored."""
    recs = [
        Record(
            task=task.name,
            input=text,
            source=Source.synthetic,
            meta={"synthetic": {"model": model, "steer": steer, "shots": ids}},
            # The same text twice is one record, whichever run asked for it.
            source_key=content_key("synthetic", task.name, neardup.dedup_key_text(text)),
        )
        for text, ids in kept
    ]
    ids = project.store.add_records(recs)
    new = [rid for rid in ids if rid is not None]
    return list(project.store.iter_records(task.name, ids=new)) if new else []
