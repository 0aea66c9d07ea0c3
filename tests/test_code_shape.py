"""The code stays in pieces a reader can hold: no function or method in `src/` runs over
MAX_LINES lines, counted from its `def` (decorators not included) to its last line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "whetstone"
MAX_LINES = 100


def long_functions(root: Path, limit: int) -> Iterator[str]:
    """`path:line name (N lines)` for every function under `root` longer than `limit`."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                length = end - node.lineno + 1
                if length > limit:
                    where = path.relative_to(root.parent)
                    yield f"{where}:{node.lineno} {node.name} ({length} lines)"


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    too_long = list(long_functions(SRC, MAX_LINES))
    assert not too_long, f"functions over {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(101))
    (pkg / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert list(long_functions(pkg, MAX_LINES)) == ["pkg/m.py:5 long (102 lines)"]
