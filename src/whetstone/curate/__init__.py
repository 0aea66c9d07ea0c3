"""Curation: small and clean beats big and noisy. A pipeline of named steps (validate, filters,
pii, dedup, noise, hard, split, select) turns a task's records into a dataset snapshot, keeps
every decision per record, and writes a data card. `next_to_label` ranks what to review next.

The functions below import their modules on first use, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from whetstone.curate.pipeline import CurationResult
    from whetstone.curate.state import LossScorer
    from whetstone.project import Project
    from whetstone.records import Record


def curate(
    project: Project,
    task: str,
    config: Any = None,
    budget: int | None = None,
    *,
    scorer: LossScorer | None = None,
    **overrides: Any,
) -> CurationResult:
    from whetstone.curate.pipeline import curate as run

    return run(project, task, config, budget, scorer=scorer, **overrides)


def decisions_for(project: Project, record_id: int) -> list[dict[str, Any]]:
    from whetstone.curate.pipeline import decisions_for as run

    return run(project, record_id)


def next_to_label(
    project: Project, task: str, n: int = 50, **kw: Any
) -> list[tuple[Record, float, dict[str, float]]]:
    from whetstone.curate.next import next_to_label as run

    return run(project, task, n, **kw)


__all__ = ["curate", "decisions_for", "next_to_label"]
