"""Whetstone: turn a small general model into a reliable specialist, and keep it improving.

import whetstone
p = whetstone.open()                       # the project of the current folder
rid = p.capture("addresses", "123 Main St", '{"city": ...}', model="addresses@3")
p.correct(rid, '{"city": "Springfield"}', error_category="wrong_field")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning. On a
# machine shared with other work (CI, a laptop, a server next to the serving process),
# spinning threads steal the time slices the busy ones need; measured here, a small training
# run took 88 s with the default policy and 5 s with this one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

if TYPE_CHECKING:
    from whetstone.project import Project


def open(path: str | None = None, db: str | None = None) -> Project:
    """Open the project found from `path` (default: current folder, then upwards)."""
    from whetstone.project import Project

    return Project.find(path, db=db)


def init(path: str = ".", base_model: str | None = None, db: str | None = None) -> Project:
    """Create a project in `path` and return it."""
    from whetstone.project import Project

    return Project.init(path, base_model=base_model, db=db)


__all__ = ["__version__", "init", "open"]
