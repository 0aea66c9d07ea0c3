"""Server settings: command-line flags over the project's `serve:` section over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_adapters: int = 8
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    # How often the server checks the registry for a change (one cheap query); a promotion
    # is served within about this long of it, with no restart.
    route_poll_s: float = 1.0
    # Capture: how long the store may fail before pending records spill to disk, and how
    # much disk the spill may take before records are dropped (and counted).
    spool_after_s: float = 5.0
    spool_max_bytes: int = 256 * 1024 * 1024
    capture_max_memory: int = 10_000
    # Connections. A client has request_timeout_s to send a whole request (headers and body)
    # from opening its connection or starting the request, else the connection is closed:
    # half-open and trickling clients must not hold connections for good. An idle keep-alive
    # connection closes after keep_alive_s. Past max_connections (open connections, or
    # requests in flight) a request is answered 503.
    request_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 1000
    # Whether an extract task's answers are constrained to JSON that keeps its schema (any
    # JSON object without one; `models.constrain`) unless a request asks for another
    # `response_format` (`{"type": "text"}`: free text). true: every extract task; false: none;
    # a list of task names: those. On by default: an adapter's answer may write the task's
    # fields in any order (the order it was taught: where values appear in the input), the
    # base model is led through the schema's; the address adapter then answers as well
    # constrained as free (field F1 69.7 against 69.4, 32 of 100 exact either way) with no
    # invalid answer left (benchmarks/constrained.py). A task schema the grammar engine cannot
    # use leaves that task's answers free (logged once). A request's `response_format`
    # constrains whatever this says.
    constrain_extract: bool | list[str] = True

    @classmethod
    def load(cls, section: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `serve:` from whetstone.yaml, then WHETSTONE_API_KEY, then flags
        (None means "not given")."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (section or {}).items():
            if key not in known:
                raise InvalidInput(
                    f"whetstone.yaml: unknown serve setting {key!r} "
                    f"(known: {', '.join(sorted(known))})"
                )
            values[key] = value
        if os.environ.get("WHETSTONE_API_KEY"):
            values["api_key"] = os.environ["WHETSTONE_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        settings.check()
        return settings

    def constrains(self, task: str) -> bool:
        """Whether extract task `task`'s answers are constrained to its schema by default."""
        extract = self.constrain_extract
        return extract if isinstance(extract, bool) else task in extract

    def check(self) -> None:
        for name in (
            "max_batch_size",
            "max_adapters",
            "max_body_bytes",
            "max_tokens_limit",
            "default_max_tokens",
            "keep_alive_s",
            "max_connections",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(
                    f"serve setting {name} must be a positive integer, not {value!r}"
                )
        if not isinstance(self.request_timeout_s, int | float) or self.request_timeout_s <= 0:
            raise InvalidInput(
                f"serve setting request_timeout_s must be > 0, not {self.request_timeout_s}"
            )
        if not isinstance(self.route_poll_s, int | float) or self.route_poll_s <= 0:
            raise InvalidInput(f"serve setting route_poll_s must be > 0, not {self.route_poll_s!r}")
        if self.max_wait_ms < 0:
            raise InvalidInput(f"serve setting max_wait_ms must be >= 0, not {self.max_wait_ms}")
        extract = self.constrain_extract
        if not isinstance(extract, bool) and not (
            isinstance(extract, list) and all(isinstance(t, str) for t in extract)
        ):
            raise InvalidInput(
                "serve setting constrain_extract is true, false or a list of task names, "
                f"not {extract!r}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInput("the API key is empty")


def read_key_file(path: Path) -> str:
    """The API key kept in a file (its first line), so that it is not on a command line, where
    every user of the machine sees it in `ps`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read the API key file {path}: {e}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise InvalidInput(f"the API key file {path} is empty")
    return key
