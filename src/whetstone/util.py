"""Small shared helpers: atomic file writes, the rule for what may be replaced, hashing,
JSON lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from whetstone.errors import InvalidInput, NotFound

# A project is `whetstone.yaml` beside `.whetstone/`; defined here, below `project`, because
# the replace rule must recognise a project folder and never remove one.
# The package's version: here, in the lowest layer, so that a stage can record it without
# importing the package root (whose `open()` returns the top layer's `Workspace`).
VERSION = "0.1.0"
CONFIG_NAME = "whetstone.yaml"
HOME_NAME = ".whetstone"

# Left in every folder an export writes, saying what wrote it: the only proof that a folder
# holds nothing but Whetstone's output, and so the only kind `--force` may replace.
EXPORT_MARKER = ".whetstone-export"

# What an existing path at the target may be replaced by:
#   never  - nothing (an empty folder is still written into): an export without --force
#   marked - a folder an earlier export wrote (it has EXPORT_MARKER), or a regular file: --force
#   owned  - anything: folders Whetstone owns inside .whetstone/ (checkpoints, caches, cards)
Replace = Literal["never", "marked", "owned"]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _umask() -> int:
    # Read it rather than set-and-restore with os.umask, which would race with other threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def user_target(force: bool) -> Replace:
    """The policy for a path the user named (`-o`): `--force` replaces only what an earlier
    export wrote."""
    return "marked" if force else "never"


def check_target(path: str | os.PathLike[str], *, folder: bool, replace: Replace = "never") -> None:
    """Refuse, with one line naming `path`, to write an artefact where something that
    `replace` does not allow already is. Every writer of a user-chosen path asks this first."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    _refuse_project(path, replace)
    if folder:
        _check_folder(path, replace)
    elif path.is_dir():
        raise InvalidInput(f"{path} is a folder; name a file to write")
    elif replace == "never":
        raise InvalidInput(f"{path} already exists; pass --force to replace it")


def _refuse_project(path: Path, replace: Replace) -> None:
    """Never a project, its settings or its store, nor (for a user's path) the current folder
    or one holding it: no flag makes replacing those what someone meant."""
    real = path.resolve()
    if path.is_dir() and ((real / CONFIG_NAME).exists() or (real / HOME_NAME).exists()):
        raise InvalidInput(f"{path} holds a Whetstone project; refusing to replace it")
    if replace == "owned":
        return
    if real.name == CONFIG_NAME or HOME_NAME in real.parts:
        raise InvalidInput(f"{path} is part of a Whetstone project; refusing to replace it")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise InvalidInput(f"{path} is the current folder or holds it; name another folder")


def _check_folder(path: Path, replace: Replace) -> None:
    if path.is_symlink() or not path.is_dir():
        raise InvalidInput(f"{path} exists and is not a folder; name a new or empty folder")
    if replace == "owned" or not any(path.iterdir()):
        return
    if not (path / EXPORT_MARKER).is_file():
        raise InvalidInput(
            f"{path} holds files Whetstone did not write; name a new or empty folder "
            "(--force replaces only a folder an earlier export wrote)"
        )
    if replace == "never":
        raise InvalidInput(f"{path} holds an earlier export; pass --force to replace it")
    if any(path.rglob(CONFIG_NAME)) or any(path.rglob(HOME_NAME)):
        raise InvalidInput(f"{path} holds a Whetstone project; refusing to replace it")


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], *, replace: Replace = "never", written_by: str | None = None
) -> Iterator[Path]:
    """Build a folder under a temp name and rename it into place only when the block succeeds,
    so a crash or a full disk never leaves a half-written artefact at `path`.

    What is already at `path` is replaced only as `replace` allows (`check_target`), checked
    before the block (fail before the work) and again before the swap. `written_by` names the
    export in the marker file left in the folder, which lets a later `--force` replace it."""
    path = Path(path)
    check_target(path, folder=True, replace=replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if written_by is not None:
            marker = {"written_by": written_by, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_text(tmp / EXPORT_MARKER, json.dumps(marker) + "\n")
        check_target(path, folder=True, replace=replace)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Put `new` at `path`. The old folder moves aside first and is removed last, so `path`
    always holds a whole folder, old or new."""
    if not path.exists() and not path.is_symlink():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    os.replace(path, old)
    os.replace(new, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "settings") -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file and line."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InvalidInput(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping of {what}")
    return data
