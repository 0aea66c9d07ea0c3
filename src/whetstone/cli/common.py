"""What every command shares: the global options, finding the project, printing."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
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
    verbose: bool = False


state = State()

# `eval` and `predict` answer as the server does when asked.
Constrained = Annotated[
    bool,
    typer.Option(
        "--constrained", help="Constrain an extract task's answers to its JSON schema, as served."
    ),
]

# Libraries whose warnings, log lines and progress bars a user did not ask for: deprecation
# notices addressed to their callers ("`is_gradient_checkpointing` is deprecated" on every
# adapter load) and per-load bars (GGUF conversion, weight loading) under Whetstone's own.
THIRD_PARTY = (
    "transformers",
    "peft",
    "torch",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "sentence_transformers",
    "tokenizers",
    "safetensors",
    "sklearn",
    "cleanlab",
)
# What those libraries read when they are first imported; a value the user set is kept.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    # transformers' GGUF conversion uses tqdm directly, past its own progress-bar switch.
    "TQDM_DISABLE": "1",
}


def quiet_third_party() -> None:
    """Silence the `THIRD_PARTY` libraries' warnings, logging and progress bars (not
    Whetstone's own warnings); `--verbose` skips this. Environment variables and warning
    filters, so `whetstone --help` imports none of them; a library already imported (the
    tests import them first) is told directly."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    pattern = r"(" + "|".join(THIRD_PARTY) + r")(\.|$)"
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=pattern)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()


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
