"""Capture: every answer becomes a `production` record, without ever slowing or failing the
request that produced it.

A record gets its reference (`new_ref()`, stored as the record's `source_key`) before it is
written, so the response can name it at once. Records then go through an in-memory queue
that one background thread drains in batches. A failed write is retried with backoff; if the
store stays down longer than `spool_after_s` (or too many records pile up), the pending
records spill to JSONL files in `.whetstone/capture-spool/`, replayed once the store answers
again and on the next start. Writes are idempotent (the unique (task, source_key) index drops
a record written twice), so a retry after a write whose acknowledgement was lost adds nothing.

A batch the store refuses for its data rather than an outage (a NUL on PostgreSQL, a task
deleted meanwhile) is written again record by record; each record it still refuses is
poison: it goes, with the reason, to `capture-spool/poison/poison-*.jsonl` (never deleted;
`whetstone doctor` reports them, `/metrics` counts them), so that it cannot hold back the
records behind it, in memory or in the spool, nor keep the store marked unhealthy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from whetstone.errors import StoreError, first_line
from whetstone.records import Record
from whetstone.serve.metrics import Metrics
from whetstone.util import atomic_write_text

log = logging.getLogger("whetstone.serve.capture")

MAX_BATCH = 256
SPOOL_DIR = "capture-spool"  # under the project's home (.whetstone/)
POISON_DIR = "poison"  # under the spool folder


class Outage(Exception):
    """The store could not take records now; `left` are the ones still owed to it."""

    def __init__(self, left: list[Record], cause: Exception):
        # The error's class and first line only: the log names the failure, not the SQL
        # statement and its rows (record contents stay out of logs).
        super().__init__(f"{type(cause).__name__}: {first_line(cause)}")
        self.left = left


def is_outage(e: Exception) -> bool:
    """True when the store was unreachable or busy, so the same records may go in later;
    anything else is the store refusing these records (their data is at fault)."""
    if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(
        e,
        (
            StoreError,
            OSError,
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            sa.exc.TimeoutError,
            sa.exc.DisconnectionError,
        ),
    )


def poison_files(spool_dir: Path) -> dict[Path, int]:
    """Each poison file under `spool_dir`, with the number of records it holds."""
    folder = spool_dir / POISON_DIR
    if not folder.is_dir():
        return {}
    return {
        f: sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
        for f in sorted(folder.glob("poison-*.jsonl"))
    }


def new_ref() -> str:
    """A record reference that needs no store round trip: 32 hex digits, unique."""
    return uuid.uuid4().hex


class CaptureQueue:
    def __init__(
        self,
        write: Callable[[Sequence[Record]], object],
        spool_dir: Path,
        metrics: Metrics,
        *,
        spool_after_s: float = 5.0,
        spool_max_bytes: int = 256 * 1024 * 1024,
        max_memory: int = 10_000,
    ):
        self._write = write
        self.spool_dir = spool_dir
        self.metrics = metrics
        self.spool_after_s = spool_after_s
        self.spool_max_bytes = spool_max_bytes
        self.max_memory = max_memory
        self._buf: deque[Record] = deque()
        self._cond = threading.Condition()
        self._pending: set[str] = set()  # refs not yet in the store (memory or spool)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._deadline = 0.0
        # One poison file per process: appended to, never replaced or deleted.
        self.poison_path = spool_dir / POISON_DIR / f"poison-{time.time_ns()}.jsonl"
        for f in self._spool_files():
            for rec in _read_spool(f):
                self._pending.add(str(rec.source_key))

    # ---- the request side ----------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Queue a record (its `source_key` is its reference). Never blocks, never raises."""
        with self._cond:
            self._buf.append(record)
            self._pending.add(str(record.source_key))
            self._cond.notify()

    def is_pending(self, ref: str) -> bool:
        with self._cond:
            return ref in self._pending

    def wait_stored(self, ref: str, timeout: float) -> bool:
        """Block until `ref` is in the store (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while ref in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    # ---- the writer thread ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="whetstone-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, for at most `timeout` seconds; spill the rest to disk."""
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 5)
        with self._cond:
            left = list(self._buf)
            self._buf.clear()
        if left:
            self._spill(left)

    def _take(self) -> list[Record]:
        with self._cond:
            if not self._buf and not self._stopping:
                self._cond.wait(0.2)
            return [self._buf.popleft() for _ in range(min(MAX_BATCH, len(self._buf)))]

    def _run(self) -> None:
        backoff = 0.05
        while True:
            batch = self._take()
            if self._stopping and (not batch or time.monotonic() > self._deadline):
                if batch:
                    self._requeue(batch)
                return
            if not batch:
                if self._spool_files():
                    if self._replay_one_spool_file():
                        backoff, self._failing_since = 0.05, None
                    else:
                        self._pause(backoff)
                        backoff = min(backoff * 2, 2.0)
                continue
            try:
                self._store(batch)
            except Outage as e:  # the store is down: keep the records, retry later
                self.metrics.capture_failures.inc()
                log.warning("capture: cannot write %d record(s), will retry: %s", len(e.left), e)
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                self._requeue(e.left)
                if now - self._failing_since > self.spool_after_s or self.depth > self.max_memory:
                    with self._cond:
                        held = list(self._buf)
                        self._buf.clear()
                    self._spill(held)
                self._pause(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._failing_since = None

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)

    def _requeue(self, batch: list[Record]) -> None:
        with self._cond:
            self._buf.extendleft(reversed(batch))

    def _store(self, batch: list[Record]) -> None:
        """Write `batch`, moving aside what the store refuses; raise `Outage` (naming the
        records still owed) when the store cannot be reached."""
        try:
            self._write(batch)
        except Exception as e:
            if is_outage(e):
                raise Outage(batch, e) from e
            # One bad record must not hold back the others: write them one by one.
            self._one_by_one(batch)
            return
        self._done(batch)

    def _one_by_one(self, batch: list[Record]) -> None:
        for i, rec in enumerate(batch):
            try:
                self._write([rec])
            except Exception as e:
                if is_outage(e):
                    raise Outage(batch[i:], e) from e
                self._poison(rec, e)
            else:
                self._done([rec])

    def _done(self, batch: Sequence[Record]) -> None:
        self.metrics.capture_written.inc(len(batch))
        self._forget(batch)

    def _forget(self, batch: Sequence[Record]) -> None:
        with self._cond:
            for rec in batch:
                self._pending.discard(str(rec.source_key))
            self._cond.notify_all()

    def _poison(self, rec: Record, e: Exception) -> None:
        """Move a record the store refuses aside, with the reason, for a person to look at."""
        error = first_line(e)
        log.error(
            "capture: the store refuses record %s, moved to %s: %s",
            rec.source_key,
            self.poison_path,
            error,
        )
        row = {
            "error": error,
            "at": datetime.now(timezone.utc).isoformat(),
            "record": rec.model_dump(mode="json"),
        }
        # ASCII escapes: a lone surrogate, the likely reason it is here, cannot be UTF-8.
        line = json.dumps(row, ensure_ascii=True) + "\n"
        try:
            self.poison_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.poison_path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as err:
            log.error(
                "capture: cannot write %s, record %s lost: %s",
                self.poison_path,
                rec.source_key,
                err,
            )
            self.metrics.capture_dropped.inc()
        else:
            self.metrics.capture_poison.inc()
        self._forget([rec])

    # ---- the disk spool ------------------------------------------------------------------
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("spool-*.jsonl")) if self.spool_dir.is_dir() else []

    def _spill(self, records: list[Record]) -> None:
        kept, lines = [], []
        for r in records:
            try:
                lines.append(r.model_dump_json() + "\n")
            except ValueError as e:  # text JSON cannot carry (a lone surrogate): never storable
                self._poison(r, e)
            else:
                kept.append(r)
        if not kept:
            return
        records, text = kept, "".join(lines)
        used = sum(f.stat().st_size for f in self._spool_files())
        if used + len(text) > self.spool_max_bytes:
            # The bound is the promise that a long outage cannot fill the disk; past it the
            # records are lost, loudly.
            log.error("capture: spool full (%d bytes): %d record(s) lost", used, len(records))
            self.metrics.capture_dropped.inc(len(records))
            with self._cond:
                for r in records:
                    self._pending.discard(str(r.source_key))
            return
        atomic_write_text(self.spool_dir / f"spool-{time.time_ns()}.jsonl", text)
        self.metrics.capture_spooled.inc(len(records))
        log.warning("capture: store down, %d record(s) spooled to %s", len(records), self.spool_dir)

    def _replay_one_spool_file(self) -> bool:
        """Write the oldest spool file to the store; False if the store still fails."""
        files = self._spool_files()
        if not files:
            return True
        records = _read_spool(files[0])
        for start in range(0, len(records), MAX_BATCH):
            try:
                self._store(records[start : start + MAX_BATCH])
            except Outage as e:
                # Keep only what is still owed, so that what went in (or was moved aside as
                # poison) is not done again on the next try.
                left = e.left + records[start + MAX_BATCH :]
                atomic_write_text(files[0], "".join(r.model_dump_json() + "\n" for r in left))
                self.metrics.capture_failures.inc()
                self._failing_since = time.monotonic()
                log.warning("capture: cannot replay %s yet: %s", files[0].name, e)
                return False
        with contextlib.suppress(FileNotFoundError):
            files[0].unlink()
        return True


def _read_spool(path: Path) -> list[Record]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.model_validate_json(line))
        except ValueError as e:  # a torn last line after a crash: keep the rest
            log.error("capture: %s:%d is not a record, skipped: %s", path, n, e)
    return out
