"""A Whetstone project: `whetstone.yaml` (settings) beside `.whetstone/` (store and artefacts).

Every command finds its project from `--project DIR`, then `WHETSTONE_PROJECT`, then the
current folder and its parents, the way git finds a repository.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml

from whetstone.errors import InvalidInput, NotFound, from_validation
from whetstone.records import Input, Kind, Record, Source, Status, Task
from whetstone.store import Store
from whetstone.util import CONFIG_NAME, HOME_NAME, atomic_write_text, read_yaml_mapping

if TYPE_CHECKING:
    # `find` and `init` return the class they are called on (whetstone.notebook.Workspace).
    from typing_extensions import Self

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"

# Top-level keys of whetstone.yaml; stage sections (train, curate, gate, serve, ...) are
# validated by the stage that reads them. Every key here has a reader: a section nothing reads
# (`evaluate:` once was one) is refused rather than silently ignored.
KNOWN_KEYS = {
    "base_model",
    "embedding_model",
    "db",
    "train",
    "curate",
    "gate",
    "serve",
    "flywheel",
    "hero",
}


class Project:
    def __init__(self, root: Path, db: str | None = None):
        self.root = root.resolve()
        self.config_path = self.root / CONFIG_NAME
        self.home = self.root / HOME_NAME
        self.config = load_config(self.config_path)
        self._db_override = db

    # ---- finding and creating ----------------------------------------------------------
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str] = ".",
        *,
        base_model: str | None = None,
        db: str | None = None,
    ) -> Self:
        root = Path(path).resolve()
        cfg_path = root / CONFIG_NAME
        if cfg_path.exists():
            raise InvalidInput(
                f"{cfg_path} already exists: this folder is already a Whetstone project"
            )
        root.mkdir(parents=True, exist_ok=True)
        (root / HOME_NAME).mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "base_model": base_model or DEFAULT_BASE_MODEL,
            "embedding_model": DEFAULT_EMBEDDING_MODEL,
        }
        if db:
            config["db"] = db
        atomic_write_text(
            cfg_path,
            "# Whetstone project settings. Every command that loads a model takes --base-model\n"
            "# to override base_model for one run.\n" + yaml.safe_dump(config, sort_keys=False),
        )
        project = cls(root)
        project.store  # noqa: B018  (create the store and its schema now, not on first use)
        return project

    @classmethod
    def find(cls, path: str | os.PathLike[str] | None = None, *, db: str | None = None) -> Self:
        start = Path(path) if path else Path(os.environ.get("WHETSTONE_PROJECT") or Path.cwd())
        start = start.resolve()
        if path or os.environ.get("WHETSTONE_PROJECT"):
            if not (start / CONFIG_NAME).exists():
                raise NotFound(
                    f"no {CONFIG_NAME} in {start} (create one with: whetstone init {start})"
                )
            return cls(start, db=db)
        for folder in (start, *start.parents):
            if (folder / CONFIG_NAME).exists():
                return cls(folder, db=db)
        raise NotFound(
            f"no Whetstone project in {start} or its parents "
            "(run `whetstone init`, or pass --project DIR)"
        )

    # ---- settings ----------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        url = self._db_override or os.environ.get("WHETSTONE_DB") or self.config.get("db")
        return str(url) if url else f"sqlite:///{self.home / 'whetstone.db'}"

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model") or DEFAULT_BASE_MODEL)

    @property
    def embedding_model(self) -> str:
        return str(self.config.get("embedding_model") or DEFAULT_EMBEDDING_MODEL)

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name) or {}
        if not isinstance(value, dict):
            raise InvalidInput(f"{self.config_path}: `{name}` must be a mapping")
        return value

    def path(self, *parts: str) -> Path:
        """A path under .whetstone/, its parent folder created."""
        p = self.home.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @cached_property
    def store(self) -> Store:
        return Store(self.db_url)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
            del self.__dict__["store"]

    # ---- the Python door to the same functions as the CLI ------------------------------
    def create_task(
        self,
        name: str,
        kind: Kind | str,
        *,
        instruction: str | None = None,
        labels: list[str] | None = None,
        schema: dict[str, Any] | None = None,
        metric: str | None = None,
    ) -> Task:
        try:
            kind = Kind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in Kind)
            raise InvalidInput(f"unknown task kind {kind!r} (choose from {choices})") from None
        try:
            task = Task(
                name=name,
                kind=kind,
                instruction=instruction,
                labels=labels,
                schema=schema,
                metric=metric,
            )
        except pydantic.ValidationError as e:
            raise InvalidInput(f"task {from_validation(e)}") from None
        # A classify task may start without labels: the first import takes them from its
        # references (formats.read_file), the way users bring labelled files.
        if schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                raise InvalidInput(
                    f"the task schema is not a valid JSON Schema: {e.message}"
                ) from None
        return self.store.create_task(task)

    def task(self, name: str) -> Task:
        return self.store.get_task(name)

    def capture(
        self,
        task: str,
        input: Input,
        output: str | None = None,
        *,
        model: str | None = None,
        confidence: float | None = None,
        source: Source | str = Source.production,
        reference: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Store one model answer; returns the new record id."""
        return self.store.capture(
            task,
            input,
            output,
            model=model,
            confidence=confidence,
            source=source,
            reference=reference,
            tags=tags,
            meta=meta,
        )

    def correct(
        self,
        record_id: int,
        reference: str,
        *,
        error_category: str | None = None,
        annotator: str | None = None,
        comment: str | None = None,
    ) -> Record:
        return self.store.review(
            record_id,
            Status.corrected,
            reference=reference,
            error_category=error_category,
            annotator=annotator,
            comment=comment,
        )

    def accept(
        self, record_id: int, *, annotator: str | None = None, comment: str | None = None
    ) -> Record:
        return self.store.review(record_id, Status.accepted, annotator=annotator, comment=comment)

    def reject(
        self,
        record_id: int,
        *,
        annotator: str | None = None,
        comment: str | None = None,
        error_category: str | None = None,
    ) -> Record:
        return self.store.review(
            record_id,
            Status.rejected,
            annotator=annotator,
            comment=comment,
            error_category=error_category,
        )

    def record(self, record_id: int) -> Record:
        return self.store.get_record(record_id)

    def records(self, task: str | None = None, **filters: Any) -> list[Record]:
        return self.store.list_records(task, **filters)


def load_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise NotFound(f"no {CONFIG_NAME} at {path.parent}")
    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise InvalidInput(
            f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    return data
