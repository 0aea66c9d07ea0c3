"""Capture: every answer becomes a `production` record, without ever slowing or failing the
request that produced it.

A record gets its reference (`new_ref()`, stored as the record's `source_key`) before it is
written, so the response can name it at once. Records then go through an in-memory queue
that one background thread drains in batches. A failed write is retried with backoff; if the
store stays down longer than `spool_after_s` (or too many records pile up), the pending
records spill to JSONL files in `.whetstone/capture-spool/`, replayed once the store answers
again and on the next start. Writes are idempotent (the unique (task, source_key) index drops
a record written twice), so a retry after a write whose acknowledgement was lost adds nothing.
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
from pathlib import Path

import sqlalchemy as sa

from whetstone.records import Record
from whetstone.serve.metrics import Metrics
from whetstone.util import atomic_write_text

log = logging.getLogger("whetstone.serve.capture")

MAX_BATCH = 256


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
            except Exception as e:  # the store is down: keep the records, retry later
                self.metrics.capture_failures.inc()
                log.warning("capture: cannot write %d record(s), will retry: %s", len(batch), e)
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                self._requeue(batch)
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
        try:
            self._write(batch)
        except sa.exc.IntegrityError:
            # One bad record (its task deleted meanwhile) must not hold back the others: write
            # them one by one and keep the ones the store refuses in a file for a person.
            for rec in batch:
                try:
                    self._write([rec])
                except sa.exc.IntegrityError as e:
                    self._reject(rec, e)
        self._done(batch)

    def _done(self, batch: Sequence[Record]) -> None:
        self.metrics.capture_written.inc(len(batch))
        with self._cond:
            for rec in batch:
                self._pending.discard(str(rec.source_key))
            self._cond.notify_all()

    def _reject(self, rec: Record, e: Exception) -> None:
        log.error("capture: the store refuses record %s: %s", rec.source_key, e)
        row = {"error": str(e).splitlines()[0], "record": rec.model_dump(mode="json")}
        path = self.spool_dir / f"rejected-{time.time_ns()}.json"
        atomic_write_text(path, json.dumps(row, ensure_ascii=False) + "\n")

    # ---- the disk spool ------------------------------------------------------------------
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("spool-*.jsonl")) if self.spool_dir.is_dir() else []

    def _spill(self, records: list[Record]) -> None:
        if not records:
            return
        text = "".join(r.model_dump_json() + "\n" for r in records)
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
        try:
            for start in range(0, len(records), MAX_BATCH):
                self._store(records[start : start + MAX_BATCH])
        except Exception as e:
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
