"""Whetstone: turn a small general model into a reliable specialist, and keep it improving.

import whetstone
p = whetstone.open()                       # the project of the current folder
rid = p.capture("addresses", "123 Main St", '{"city": ...}', model="addresses@3")
p.correct(rid, '{"city": "Springfield"}', error_category="wrong_field")
run = p.train("addresses", max_steps=60)   # the CLI's verbs: train, evaluate, compare, ...
p.evaluate("addresses", run.adapter).to_pandas()
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from whetstone.util import VERSION

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning. On a
# machine shared with other work (CI, a laptop, a server next to the serving process),
# spinning threads steal the time slices the busy ones need; measured here, a small training
# run took 88 s with the default policy and 5 s with this one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = VERSION

if TYPE_CHECKING:
    from whetstone.notebook import Workspace


def open(path: str | None = None, db: str | None = None) -> Workspace:
    """Open the project found from `path` (default: current folder, then upwards), with the
    CLI's verbs (`whetstone.notebook.Workspace`)."""
    from whetstone.notebook import Workspace

    return Workspace.find(path, db=db)


def init(path: str = ".", base_model: str | None = None, db: str | None = None) -> Workspace:
    """Create a project in `path` and return it (a `Workspace`)."""
    from whetstone.notebook import Workspace

    return Workspace.init(path, base_model=base_model, db=db)


__all__ = ["__version__", "init", "open"]
