"""Which model answers a request's `model` field: `base`, a task name (its production adapter,
or the base model while the task has none) or an exact version `T@N`.

Names go through `registry.parse_ref`, which is strict, so no request string ever becomes a
path. The routing table (each task and its production version) is kept up to date by a
watcher thread, started and stopped with the app: about once every `poll_s` seconds it reads
the registry's generation (one cheap count) and re-reads the table when it changed, so a
promotion is served within a second or two of it, with no restart and however sparse the
traffic. A request for a known task only reads the table, so a slow or down store never holds
it up; a name the table does not know is looked up in the store at once.

`base` is the base model. Without a `task` field it answers with no task's instruction and
belongs to no task, so its answer is not captured (records belong to a task); with one, it
answers under that task's instruction and is captured under it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from whetstone import registry
from whetstone.errors import InvalidInput, NotFound, first_line
from whetstone.project import Project
from whetstone.records import Task
from whetstone.registry import AdapterVersion
from whetstone.serve.errors import APIError

BASE = "base"

log = logging.getLogger("whetstone.serve")


@dataclass(frozen=True)
class Route:
    # The task the answer is captured under, whose instruction prompts the model; None for
    # `base` without a task: no instruction, and nothing captured.
    task: Task | None
    adapter: AdapterVersion | None  # None: the base model answers
    fallback: bool = False  # a task name with no production adapter yet

    @property
    def model(self) -> str:
        return self.adapter.name if self.adapter else BASE


class Router:
    def __init__(self, project: Project, poll_s: float):
        self.project = project
        self.poll_s = poll_s
        self._production: dict[str, AdapterVersion | None] = {}
        self._tasks: dict[str, Task] = {}
        self._exact: dict[str, AdapterVersion] = {}
        # The registry generation the table was read at (None: never read). Read before the
        # table, so a change during a read is seen again by the next poll, never missed.
        self.generation: int | None = None
        self._refresh_lock = threading.Lock()  # one reader at a time; the last read wins
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failing = False
        # Called with the new table after each read (the cascade logs each task's threshold).
        self.on_change: Callable[[dict[str, AdapterVersion | None]], None] | None = None

    def start(self) -> None:
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="whetstone-routes", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            # A watcher stuck in a store that does not answer is a daemon: do not wait for it.
            self._watcher.join(timeout=self.poll_s + 1.0)
            self._watcher = None

    def _watch(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.poll_s):
                return

    def poll(self) -> None:
        """Re-read the table if the registry changed since it was read. Never raises: while
        the store is down the table we have keeps serving, and the outage is logged once."""
        try:
            if registry.generation(self.project) != self.generation:
                self._refresh()
        except Exception as e:
            if not self._failing:
                log.warning(
                    "routes: cannot read the registry (%s); serving the routes known", first_line(e)
                )
            self._failing = True
            return
        if self._failing:
            log.info("routes: the registry answers again")
            self._failing = False

    def resolve(self, name: str, task_hint: str | None = None) -> Route:
        """May read the store for a name the table does not know (run it in a worker thread).
        Raises APIError 404 for unknown or malformed names."""
        if name == BASE:
            return Route(task=self._task_named(task_hint) if task_hint else None, adapter=None)
        try:
            task, version = registry.parse_ref(name)
        except InvalidInput as e:
            raise APIError(404, str(e), code="model_not_found", param="model") from None
        if version is not None:
            av = self._version(name)
            self._known(task)
            return Route(task=self._tasks[task], adapter=av)
        if task_hint is not None and task_hint != task:
            raise APIError(
                400,
                f"model {name!r} serves task {task!r}, not {task_hint!r}",
                code="invalid_value",
                param="task",
            )
        if not self._known(task):
            raise APIError(
                404,
                f"the model {name!r} does not exist (use base, a task name or task@version)",
                code="model_not_found",
                param="model",
            )
        production = self._production[task]
        return Route(task=self._tasks[task], adapter=production, fallback=production is None)

    def _task_named(self, name: str) -> Task:
        if not self._known(name):
            raise APIError(404, f"unknown task {name!r}", code="task_not_found", param="task")
        return self._tasks[name]

    def _known(self, task: str) -> bool:
        """Whether the table holds `task`, reading the store at once for a task it lacks."""
        if task not in self._production:
            self._refresh()
        return task in self._production

    def _version(self, ref: str) -> AdapterVersion:
        av = self._exact.get(ref)
        if av is None:
            try:
                av = registry.get(self.project, ref)
            except NotFound as e:
                raise APIError(404, str(e), code="model_not_found", param="model") from None
            self._exact[ref] = av  # a version's files and base never change
        return av

    def _refresh(self) -> None:
        with self._refresh_lock:
            generation = registry.generation(self.project)
            tasks = {task.name: task for task in self.project.store.list_tasks()}
            prod = registry.production_versions(self.project)
            table: dict[str, AdapterVersion | None] = {}
            for task in tasks:
                table[task] = self._fresh(f"{task}@{prod[task]}") if task in prod else None
            # The tasks first: a request that finds a task in the table finds it here too.
            self._tasks = tasks
            self._production = table
            self.generation = generation
        if self.on_change is not None:
            self.on_change(table)

    def _fresh(self, ref: str) -> AdapterVersion:
        """A production version read again: its files never change, but its info may (the
        cascade threshold `whetstone route calibrate` writes)."""
        av = self._exact[ref] = registry.get(self.project, ref)
        return av
