"""Errors a user can act on. The CLI prints their message as one line and exits non-zero;
anything else is a bug and shows a traceback."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


class WhetstoneError(Exception):
    """Base for every error whose message is meant for the user."""

    exit_code = 1


class NotFound(WhetstoneError):
    """An unknown task, record, snapshot, adapter or project."""


class InvalidInput(WhetstoneError):
    """Bad data or arguments; the message names the file, line and field where it can."""

    exit_code = 2


class StoreError(WhetstoneError):
    """The store cannot be reached, or is from a newer schema version."""


class InvalidValue(InvalidInput):
    """Invalid input that pydantic found: `where: field: reason`. The field and reason of the
    first problem are kept for callers that report them apart (an HTTP error's `param`, a row
    of an import file)."""

    def __init__(self, message: str, field: str, reason: str):
        super().__init__(message)
        self.field = field
        self.reason = reason


def from_validation(
    e: Exception, where: str = "", section: str = "", *, skip: Collection[str] = ()
) -> InvalidValue:
    """A pydantic ValidationError as one line: `where` (the file, the layer of settings, the
    line), then each problem as `field: reason`, the field prefixed with `section` (the key
    the settings sit under) and without the location parts in `skip` (FastAPI's "body")."""
    # pydantic's ValidationError and FastAPI's RequestValidationError both list their problems.
    listed = getattr(e, "errors", None)
    errors = listed() if callable(listed) else []
    problems = [(_field(err["loc"], section, skip), _reason(err)) for err in errors]
    if not problems:
        problems = [(section, str(e))]
    text = "; ".join(f"{field}: {reason}" if field else reason for field, reason in problems)
    field, reason = problems[0]
    return InvalidValue(f"{where}: {text}" if where else text, field, reason)


def _field(loc: Sequence[Any], section: str, skip: Collection[str]) -> str:
    return ".".join([*([section] if section else []), *(str(p) for p in loc if p not in skip)])


def _reason(err: Mapping[str, Any]) -> str:
    # A validator's ValueError reaches pydantic's message with this prefix; the user wrote none.
    return str(err["msg"]).removeprefix("Value error, ")


def first_line(e: BaseException) -> str:
    """One line naming what failed: the driver's own message where a library wrapped it
    (SQLAlchemy's `.orig`), never a statement or its parameters on the lines after."""
    msg = str(getattr(e, "orig", None) or e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__
