"""What the store can hold, checked where data comes in (HTTP bodies, imports, record writes).

PostgreSQL refuses text with a NUL character, and no store can encode a lone UTF-16
surrogate (JSON lets a client send one as `"\\ud800"`) as UTF-8. Ids are signed 64-bit
integers. JSON nested deeper than any record needs is refused before Python's parser runs out
of stack. Each check names the field, so the error can be one line a person can act on.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

# Ids and offsets: the widest integer the store's drivers bind (SQLite's INTEGER, BIGINT).
MAX_ID = 2**63 - 1
MAX_JSON_DEPTH = 64  # a chat body is 4 deep; meta a few more

_SURROGATE = re.compile("[\ud800-\udfff]")


class Unstorable(NamedTuple):
    """Where (a path such as `messages[0].content`) and why a value cannot be stored."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field} {self.reason}"


class TooDeep(ValueError):
    """JSON nested deeper than `MAX_JSON_DEPTH`."""

    def __init__(self, limit: int):
        super().__init__(f"nested deeper than {limit} levels")


def unstorable(text: str) -> str | None:
    """Why the store cannot hold `text`, or None when it can."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    m = _SURROGATE.search(text)
    if m:
        return f"contains a lone surrogate (\\u{ord(m.group()):04x}), which cannot be stored"
    return None


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def find_unstorable(value: Any, field: str = "") -> Unstorable | None:
    """The first text in a JSON-like value (dict keys included), in document order, that the
    store cannot hold. Iterative, so no nesting depth can overflow the stack."""
    # (path, value, is_key): a dict key is checked just before its value, under its own path
    # with the bad character escaped, so the message holds no NUL itself.
    stack: list[tuple[str, Any, bool]] = [(field, value, False)]
    while stack:
        path, v, is_key = stack.pop()
        if isinstance(v, str):
            reason = unstorable(v)
            if reason is not None:
                if is_key:
                    return Unstorable(_child(path, json.dumps(v)[1:-1]), f"is a key that {reason}")
                return Unstorable(path or "(value)", reason)
        elif isinstance(v, dict):
            for k, c in reversed(list(v.items())):
                stack.append((_child(path, str(k)), c, False))
                stack.append((path, str(k), True))
        elif isinstance(v, (list, tuple)):
            stack.extend((_child(path, i), c, False) for i, c in reversed(list(enumerate(v))))
    return None


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads`, but JSON nested deeper than `max_depth` is a `TooDeep` (a ValueError)
    rather than the RecursionError Python's parser raises a thousand levels down."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(max_depth) from None
    if isinstance(value, (dict, list)) and _deeper_than(value, max_depth):
        raise TooDeep(max_depth)
    return value
