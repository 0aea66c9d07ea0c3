"""The capture queue: a store that fails for a while loses nothing (retries, then a disk
spool that is replayed), and a restart replays what an earlier process spooled."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from serve_helpers import wait_for
from whetstone.records import Record
from whetstone.serve.capture import CaptureQueue, new_ref
from whetstone.serve.metrics import Metrics


class FlakyStore:
    def __init__(self) -> None:
        self.down = True
        self.rows: dict[str, Record] = {}
        self.lock = threading.Lock()

    def write(self, records: Sequence[Record]) -> None:
        if self.down:
            raise ConnectionError("store down")
        with self.lock:
            for r in records:  # idempotent by reference, as the unique index makes it
                self.rows.setdefault(str(r.source_key), r)


def records(n: int) -> list[Record]:
    return [Record(task="t", input=f"q{i}", output="a", source_key=new_ref()) for i in range(n)]


def test_outage_spills_to_disk_and_replays(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    q = CaptureQueue(store.write, tmp_path / "spool", metrics, spool_after_s=0.05)
    q.start()
    recs = records(40)
    for r in recs:
        q.submit(r)
    wait_for(lambda: list((tmp_path / "spool").glob("spool-*.jsonl")))
    assert q.is_pending(str(recs[0].source_key)) and not store.rows
    store.down = False
    assert q.wait_stored(str(recs[-1].source_key), timeout=30)
    wait_for(lambda: q.depth == 0 and not list((tmp_path / "spool").glob("spool-*")))
    q.stop()
    assert set(store.rows) == {r.source_key for r in recs}
    assert store.rows[str(recs[3].source_key)].input == "q3"


def test_stop_while_down_spools_and_next_start_replays(tmp_path: Path) -> None:
    store = FlakyStore()
    q = CaptureQueue(store.write, tmp_path / "spool", Metrics(), spool_after_s=60)
    q.start()
    recs = records(10)
    for r in recs:
        q.submit(r)
    q.stop(timeout=0.3)
    assert not store.rows and list((tmp_path / "spool").glob("spool-*.jsonl"))
    store.down = False
    q2 = CaptureQueue(store.write, tmp_path / "spool", Metrics())
    assert q2.depth == 10  # what the last process spooled is still owed to the store
    q2.start()
    wait_for(lambda: q2.depth == 0)
    q2.stop()
    assert set(store.rows) == {r.source_key for r in recs}


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    q = CaptureQueue(store.write, tmp_path / "spool", metrics, spool_max_bytes=10)
    for r in records(3):
        q.submit(r)
    q.stop(timeout=0)
    assert metrics.capture_dropped._value.get() == 3 and q.depth == 0
