"""The Python door with the CLI's verbs: `whetstone.open()` and `whetstone.init()` return a
`Workspace`, a `Project` that also trains, evaluates, compares, promotes, predicts, curates,
exports, distils and calibrates. Each verb is a thin call of the function its CLI command
calls, and returns that function's typed result; the results that are tables (evaluations,
comparisons, curation decisions, records) have `to_pandas()` and `to_dataset()`.

    import whetstone
    ws = whetstone.open()
    run = ws.train("addresses", max_steps=60)
    ev = ws.evaluate("addresses", run.adapter)
    ev.to_pandas()                    # one row per test record, a column per metric
    ws.compare("addresses", "base", run.adapter).to_pandas()

This module sits beside the CLI, on top of every stage: `Project` stays a low layer that no
stage has to look past."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.project import Project
from whetstone.records import Input, Record
from whetstone.tables import Table

if TYPE_CHECKING:
    from whetstone.curate.pipeline import CurationResult
    from whetstone.distill import LabelSummary
    from whetstone.evaluate.cascade import Calibration
    from whetstone.evaluate.compare import Comparison
    from whetstone.evaluate.gate import Promotion
    from whetstone.evaluate.runner import Evaluation
    from whetstone.models.generate import Generation
    from whetstone.registry.export import Export
    from whetstone.train.api import TrainResult


class Records(list[Record], Table):
    """A list of records that is also a table: the columns of `whetstone export --format csv`."""

    def rows(self) -> list[dict[str, Any]]:
        from whetstone.formats.tabular import flat_rows

        return list(flat_rows(self))


class Workspace(Project):
    """A project with the CLI's verbs (see the module). Every `Project` method works as well."""

    def records(self, task: str | None = None, **filters: Any) -> Records:
        return Records(super().records(task, **filters))

    def train(
        self,
        task: str,
        *,
        config: str | Path | None = None,
        from_snapshot: str | None = None,
        progress: bool = True,
        **settings: Any,
    ) -> TrainResult:
        """`whetstone train`: settings are the training options (`method="dora"`,
        `max_steps=60`, `lr=1e-3` ...) over `config` (a train.yaml, or an Axolotl /
        LLaMA-Factory YAML whose ignored keys come as a warning) over `train:` in whetstone.yaml."""
        from whetstone.evaluate.metrics import main_score
        from whetstone.train import train_task
        from whetstone.train.config import project_config

        cfg, notes = project_config(self, config, settings, flags_where="train() settings")
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return train_task(
            self, task, cfg, snapshot_id=from_snapshot, progress=progress, metric=main_score
        )

    def resume(self, run_id: str) -> TrainResult:
        """`whetstone train --resume RUN_ID`: continue a run from its last checkpoint."""
        from whetstone.evaluate.metrics import main_score
        from whetstone.train import resume_run

        return resume_run(self, run_id, metric=main_score)

    def evaluate(
        self,
        task: str,
        model: str = "base",
        split: str = "test",
        *,
        snapshot: str | None = None,
        rerun: bool = False,
        **options: Any,
    ) -> Evaluation:
        """`whetstone eval`: options are `evaluate.runner.evaluate`'s (limit, batch_size,
        max_new_tokens, base_model, metric, judge, rubric)."""
        from whetstone.evaluate.runner import evaluate

        return evaluate(self, task, model, split, snapshot, reuse=not rerun, **options)

    def queue_failures(self, evaluation: Evaluation) -> int:
        """`whetstone eval --queue-failures`: queue each failed held-out input for review."""
        from whetstone.evaluate.runner import queue_failures

        return queue_failures(self, evaluation)

    def compare(
        self,
        task: str,
        a: str,
        b: str,
        split: str = "test",
        *,
        snapshot: str | None = None,
        rerun: bool = False,
        **options: Any,
    ) -> Comparison:
        """`whetstone compare`: options are batch_size, max_new_tokens, base_model."""
        from whetstone.evaluate.compare import compare

        return compare(self, task, a, b, split, snapshot, reuse=not rerun, **options)

    def promote(
        self,
        ref: str,
        *,
        force: bool = False,
        reason: str | None = None,
        actor: str | None = None,
        **gate: Any,
    ) -> Promotion:
        """`whetstone promote`: gate settings (min_delta, slice_tolerance, split ...) override
        `gate:` in whetstone.yaml. A refusal is returned (`.promoted` False), not raised."""
        from whetstone.evaluate.gate import gate_config, promote

        return promote(
            self, ref, gate_config(self, **gate), force=force, actor=actor, reason=reason
        )

    def predict(
        self,
        task: str,
        inputs: str | list[Input],
        model: str = "base",
        *,
        base_model: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 256,
    ) -> list[Generation]:
        """`whetstone predict`: the model's answer to each input (one text is one input)."""
        from whetstone.predict import load_predictor

        self.task(task)
        batch: list[Input] = [inputs] if isinstance(inputs, str) else inputs
        predictor = load_predictor(self, task, model, base_model=base_model)
        return predictor(batch, batch_size=batch_size, max_new_tokens=max_new_tokens)

    def curate(
        self,
        task: str,
        config: Any = None,
        budget: int | None = None,
        **overrides: Any,
    ) -> CurationResult:
        """`whetstone curate`: a snapshot, its step reports, and the decisions as a table."""
        from whetstone.curate.pipeline import curate
        from whetstone.train.scoring import reference_losses

        return curate(self, task, config, budget, scorer=reference_losses, **overrides)

    def export(
        self,
        task: str,
        format: str,
        out: str | Path,
        *,
        statuses: list[str] | None = None,
        force: bool = False,
    ) -> int:
        """`whetstone export`: the task's records in `format`; returns how many were written."""
        from whetstone.formats import export_records

        return export_records(self, task, format, out, statuses=statuses, force=force)

    def export_model(
        self,
        ref: str | list[str] | None = None,
        format: str = "peft",
        out: str | Path | None = None,
    ) -> Export:
        """`whetstone export-model` for peft, merged and vllm (vllm with no ref: every
        production adapter). GGUF: use the CLI, which checks the file against the adapter."""
        from whetstone.errors import InvalidInput
        from whetstone.registry import export

        refs = [ref] if isinstance(ref, str) else list(ref or [])
        if format == "vllm":
            return export.export_vllm(self, refs, Path(out or "vllm-export"))
        writers = {"peft": export.export_peft, "merged": export.export_merged}
        if format not in writers or len(refs) != 1:
            raise InvalidInput(
                f"export_model writes one adapter version (T@N) as peft or merged, or adapters "
                f"as vllm; not {format!r} of {len(refs)} (GGUF: `whetstone export-model`)"
            )
        return writers[format](self, refs[0], Path(out or f"{refs[0].replace('@', '-v')}-{format}"))

    def distill(
        self, task: str, n: int = 100, *, samples: int = 1, min_agreement: float | None = None
    ) -> LabelSummary:
        """`whetstone distill`: the project's hero labels up to `n` unlabelled records."""
        from whetstone.distill import DEFAULT_MIN_AGREEMENT, label
        from whetstone.models.hero import project_hero

        agreement = DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
        return label(self, task, project_hero(self), n=n, samples=samples, min_agreement=agreement)

    def calibrate(self, task: str, model: str | None = None, **options: Any) -> Calibration:
        """`whetstone route calibrate`: options are target, max_escalation, limit,
        snapshot_id, split."""
        from whetstone.evaluate.cascade import calibrate

        return calibrate(self, task, model, **options)
