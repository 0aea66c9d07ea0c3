"""Which model answers a request's `model` field: `base`, a task name (its production adapter,
or the base model while the task has none) or an exact version `T@N`.

Names go through `registry.parse_ref`, which is strict, so no request string ever becomes a
path. A task's production version is re-read from the registry once it is older than
`ttl` seconds, in the background (the stale answer serves meanwhile), so a promotion is picked
up without a restart and a slow or locked store never holds up a request for a known task.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from whetstone import registry
from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import Kind, Task
from whetstone.registry import AdapterVersion
from whetstone.serve.errors import APIError

BASE = "base"


@dataclass(frozen=True)
class Route:
    task: Task  # the task the answer is captured under, whose instruction prompts the model
    adapter: AdapterVersion | None  # None: the base model answers
    fallback: bool = False  # a task name with no production adapter yet

    @property
    def model(self) -> str:
        return self.adapter.name if self.adapter else BASE


class Router:
    def __init__(self, project: Project, ttl: float):
        self.project = project
        self.ttl = ttl
        self._production: dict[str, AdapterVersion | None] = {}
        self._tasks: dict[str, Task] = {}
        self._read_at = 0.0
        self._lock = threading.Lock()
        self._refreshing = False
        self._exact: dict[str, AdapterVersion] = {}

    def resolve(self, name: str, task_hint: str | None = None) -> Route:
        """May read the store (run it in a worker thread). Raises APIError 404 for unknown
        or malformed names."""
        if name == BASE:
            return Route(task=self._base_task(task_hint), adapter=None)
        try:
            task, version = registry.parse_ref(name)
        except InvalidInput as e:
            raise APIError(404, str(e), code="model_not_found", param="model") from None
        if version is not None:
            av = self._version(name)
            self._table(task)
            return Route(task=self._tasks[task], adapter=av)
        if task_hint is not None and task_hint != task:
            raise APIError(
                400,
                f"model {name!r} serves task {task!r}, not {task_hint!r}",
                code="invalid_value",
                param="task",
            )
        table = self._table(task)
        if task not in table:
            raise APIError(
                404,
                f"the model {name!r} does not exist (use base, a task name or task@version)",
                code="model_not_found",
                param="model",
            )
        production = table[task]
        return Route(task=self._tasks[task], adapter=production, fallback=production is None)

    def _version(self, ref: str) -> AdapterVersion:
        av = self._exact.get(ref)
        if av is None:
            try:
                av = registry.get(self.project, ref)
            except NotFound as e:
                raise APIError(404, str(e), code="model_not_found", param="model") from None
            self._exact[ref] = av  # a version's files and base never change
        return av

    def _table(self, task: str) -> dict[str, AdapterVersion | None]:
        age = time.monotonic() - self._read_at
        if task not in self._production or self._read_at == 0.0:
            self._refresh()  # a task we have not seen: ask now
        elif age > self.ttl:
            self._refresh_in_background()
        return self._production

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self._refresh()
            except Exception:  # the store is down: keep serving what we know
                pass
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="whetstone-routes", daemon=True).start()

    def _refresh(self) -> None:
        tasks = {task.name: task for task in self.project.store.list_tasks()}
        prod = registry.production_versions(self.project)
        table: dict[str, AdapterVersion | None] = {}
        for task in tasks:
            table[task] = self._version(f"{task}@{prod[task]}") if task in prod else None
        self._tasks, self._production = tasks, table
        self._read_at = time.monotonic()

    def _base_task(self, hint: str | None) -> Task:
        """The task a `base` answer is captured under: the one the request names, else the
        task `base` (created on first use)."""
        name = hint or BASE
        table = self._table(name)
        if name in table:
            return self._tasks[name]
        if hint is not None:
            raise APIError(404, f"unknown task {hint!r}", code="task_not_found", param="task")
        with contextlib.suppress(InvalidInput):  # another request created it meanwhile
            self.project.create_task(name, Kind.generate)
        self._refresh()
        return self._tasks[name]
