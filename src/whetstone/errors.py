"""Errors a user can act on. The CLI prints their message as one line and exits non-zero;
anything else is a bug and shows a traceback."""

from __future__ import annotations


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


def from_validation(e: Exception, where: str, section: str = "") -> InvalidInput:
    """A pydantic ValidationError as one line that names where the settings came from and the
    offending key."""
    errors = e.errors() if hasattr(e, "errors") else []
    if not errors:
        return InvalidInput(f"{where}: {e}")
    err = errors[0]
    key = ".".join(
        [section, *(str(p) for p in err["loc"])] if section else [str(p) for p in err["loc"]]
    )
    key = key or "(settings)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return InvalidInput(f"{where}: {key}: {msg}")
