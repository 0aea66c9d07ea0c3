"""What the curation steps share: the rows under curation, the decisions taken about them, and
the features (embeddings, MinHashes) computed once per run and cached across runs."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from whetstone.curate import cache
from whetstone.curate.config import CurateConfig
from whetstone.project import Project
from whetstone.records import Input, Message, Record, Task, input_text

if TYPE_CHECKING:
    from whetstone.models.types import CausalLM, Tokenizer

ACTIONS = ("kept", "removed", "flagged", "redacted", "normalised", "upweighted", "rewritten")

# (model, tokenizer, task, [(input, reference), ...]) -> each reference's loss under the
# model, taken as training takes it. Training owns that encoding, so curation is handed it
# (`whetstone.train.scoring.reference_losses`) by whoever composes the two.
# Quoted: the model types are imported for type checkers only, and this alias runs.
LossScorer = Callable[["CausalLM", "Tokenizer", Task, Sequence[tuple[Input, str]]], list[float]]


@dataclass
class Row:
    """One record under curation. `input`/`reference` are the curated (normalised, redacted)
    versions; the record itself is never changed."""

    record: Record
    input: Input
    reference: str
    weight: float = 1.0
    hard: list[str] = field(default_factory=list)
    loss: float | None = None
    prior_split: str | None = None  # the split earlier snapshots gave it
    split: str | None = None
    removed: bool = False

    @property
    def id(self) -> int:
        assert self.record.id is not None
        return self.record.id

    @property
    def text(self) -> str:
        return input_text(self.input)

    def map_input(self, fn: Any) -> Input:
        """Apply a str -> str function to the input text (every message of a chat)."""
        if isinstance(self.input, str):
            return fn(self.input)
        return [
            Message.model_validate({**m.model_dump(), "content": fn(m.content)}) for m in self.input
        ]


@dataclass
class Decision:
    record_id: int
    step: str
    action: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepReport:
    name: str
    before: int = 0
    removed: int = 0
    flagged: int = 0
    changed: int = 0  # redacted, normalised or up-weighted
    reasons: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def after(self) -> int:
        return self.before - self.removed

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "before": self.before,
            "after": self.after,
            "removed": self.removed,
            "flagged": self.flagged,
            "changed": self.changed,
            "reasons": dict(self.reasons),
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


class Run:
    """The state of one curation run."""

    def __init__(
        self,
        project: Project,
        task: Task,
        config: CurateConfig,
        rows: list[Row],
        scorer: LossScorer | None = None,
    ):
        self.project = project
        self.task = task
        self.config = config
        self.rows = rows
        self.scorer = scorer
        self.decisions: list[Decision] = []
        self.card: dict[str, Any] = {}  # material for the data card, filled by the steps
        self.embedding_model = config.embedding_model or project.embedding_model
        self._vectors: dict[int, Any] = {}
        self._minhashes: dict[int, Any] = {}
        self.step: StepReport = StepReport("")

    # ---- decisions ---------------------------------------------------------------------
    def decide(self, row: Row, action: str, reason: str, **detail: Any) -> None:
        self.decisions.append(Decision(row.id, self.step.name, action, reason, detail))
        self.step.reasons[reason] += 1
        if action == "removed":
            row.removed = True
            self.step.removed += 1
        elif action == "flagged":
            self.step.flagged += 1
        elif action in ("redacted", "normalised", "upweighted"):
            self.step.changed += 1

    def note(self, text: str) -> None:
        self.step.notes.append(text)

    def run_step(self, name: str, fn: Any) -> StepReport:
        self.step = StepReport(name, before=len(self.rows))
        t0 = time.perf_counter()
        fn(self)
        self.rows = [r for r in self.rows if not r.removed]
        self.step.seconds = time.perf_counter() - t0
        return self.step

    # ---- features, computed once per run and cached in the store across runs -----------
    def vectors(self, rows: list[Row]) -> Any:
        """Embeddings of the rows' curated input text (n x d, L2-normalised)."""
        import numpy as np

        missing = [r for r in rows if r.id not in self._vectors]
        if missing:
            vecs = cache.embeddings(
                self.project,
                self.embedding_model,
                [r.id for r in missing],
                [r.text for r in missing],
            )
            self._vectors.update({r.id: v for r, v in zip(missing, vecs, strict=True)})
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._vectors[r.id] for r in rows])

    def minhashes(self, rows: list[Row]) -> list[Any]:
        from whetstone.curate import dedup

        missing = [r for r in rows if r.id not in self._minhashes]
        if missing:
            found = dedup.minhashes(
                self, [r.id for r in missing], [dedup.match_text(r) for r in missing]
            )
            self._minhashes.update({r.id: m for r, m in zip(missing, found, strict=True)})
        return [self._minhashes[r.id] for r in rows]
