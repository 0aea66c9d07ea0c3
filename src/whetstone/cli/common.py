"""What every command shares: the global options, finding the project, printing."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from whetstone.project import Project

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class State:
    project: str | None = None
    db: str | None = None
    debug: bool = False


state = State()


def project() -> Project:
    from whetstone.project import Project

    return Project.find(state.project, db=state.db)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def parse_record_id(value: str) -> int:
    from whetstone.errors import InvalidInput

    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"record ids are numbers, not {value!r}") from None
