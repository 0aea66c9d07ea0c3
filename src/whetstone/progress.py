"""Progress for long jobs, on stderr so that stdout stays clean for --json and pipes.

On a terminal a bar (rich) appears once a job has run for `QUIET` seconds, with an ETA. When
stderr is not a terminal (a log file, CI, a pipe) a bar prints a plain line instead, at most
every `LINE_EVERY` seconds and once at the end, so a log shows how far a job got and how long
it has left: `eval base:smollm2: 64/287 (22%) · 1:02 elapsed · eta 3:35`. Lines are printed
as the job reports progress (no timer thread): a job silent for minutes prints nothing new."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

T = TypeVar("T")
console = Console(stderr=True)

QUIET = 2.0  # seconds: a job done sooner shows no bar and prints no line
LINE_EVERY = 12.0  # seconds between plain lines when stderr is not a terminal


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(message)
        yield


def clock(seconds: float) -> str:
    """1:02, or 1:02:03 past an hour."""
    s = max(int(seconds), 0)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def eta_seconds(task: Task) -> float | None:
    """Seconds left at the average rate since the bar started (a resumed run's earlier steps,
    its `base`, not counted). Rich's own estimate looks at the last 30 s only, so it had none
    at all when each step took longer (eval batches on a CPU): those bars never showed an ETA."""
    elapsed = task.elapsed
    done = task.completed - task.fields.get("base", 0)
    if task.total is None or not elapsed or done <= 0:
        return None
    return max(task.total - task.completed, 0) * elapsed / done


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("")
        eta = eta_seconds(task)
        return Text(f"eta {clock(eta) if eta is not None else '-:--'}", style="progress.remaining")


def plain_line(task: Task) -> str:
    """A bar as one line of text, for logs."""
    if task.total:
        count = f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
    else:
        count = f"{task.completed:g}"
    parts = [f"{task.description}: {count}", f"{clock(task.elapsed or 0)} elapsed"]
    eta = None if task.finished else eta_seconds(task)
    if eta is not None:
        parts.append(f"eta {clock(eta)}")
    info = str(task.fields.get("info") or "").strip()
    if info:
        parts.append(info)
    return " · ".join(parts)


class Bars(Progress):
    """rich's Progress that hides jobs shorter than `QUIET` and, when `plain` (stderr is not a
    terminal), prints `plain_line`s instead of drawing."""

    def __init__(self, *columns: str | ProgressColumn, plain: bool, **kwargs: Any):
        super().__init__(*columns, disable=plain, **kwargs)
        self.plain = plain
        self._last_line: dict[TaskID, float] = {}  # when each task last printed, or started

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: int = 0,
        visible: bool = True,
        **fields: Any,
    ) -> TaskID:
        fields.setdefault("base", completed)
        tid = super().add_task(description, start, total, completed, visible, **fields)
        self._last_line[tid] = self.get_time()
        return tid

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._tick(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tick(task_id)

    def _tick(self, task_id: TaskID) -> None:
        if self.plain and task_id in self._last_line:
            now = self.get_time()
            if now - self._last_line[task_id] >= LINE_EVERY:
                self._last_line[task_id] = now
                self._print(task_id)

    def _print(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        self.console.print(plain_line(task), markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        super().stop()
        if self.plain:
            # The closing line of every job that ran long enough to be worth a line.
            for tid in list(self._last_line):
                del self._last_line[tid]
                if (self._tasks[tid].elapsed or 0) >= QUIET:
                    self._print(tid)

    def get_renderables(self) -> Iterable[RenderableType]:
        # A bar appears once its job has run QUIET seconds: quick ones never flash by.
        yield self.make_tasks_table([t for t in self.tasks if (t.elapsed or 0) >= QUIET])


def progress(get_time: Callable[[], float] | None = None) -> Bars:
    """Bars on stderr: `add_task(description, total=..., info="")`, then `advance`/`update`.
    `get_time` replaces the clock (tests)."""
    return Bars(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        plain=not console.is_terminal,
        get_time=get_time,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """The items, with a bar counting them (`total` defaults to len(items) where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]  # checked just above
    with progress() as p:
        tid = p.add_task(description, total=total, info="")
        for item in items:
            yield item
            p.advance(tid)
