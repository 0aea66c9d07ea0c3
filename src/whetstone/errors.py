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
