"""The flywheel store: tasks, records and their review history, plus the lineage of what was
derived from them. SQLite (WAL) by default, PostgreSQL by URL, through SQLAlchemy Core."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from whetstone.errors import InvalidInput, NotFound, StoreError, first_line, from_validation
from whetstone.records import (
    Correction,
    Input,
    Kind,
    Record,
    Source,
    Status,
    Task,
    input_from_json,
    input_text,
    input_to_json,
    utcnow,
)
from whetstone.storable import MAX_ID, find_unstorable
from whetstone.store import schema
from whetstone.store.migrations import migrate

__all__ = ["Store", "normalise_url"]


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` and file paths as well as SQLAlchemy URLs."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


_READ_ONLY = "whetstone_read_only"  # execution option: begin a deferred (reading) transaction
_URL_HELP = "use a SQLite file path, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB"

# Built once, with bound parameters: building `.values(...)` per row costs more than SQLite's
# commit does, and captures are the serving hot path.
_INSERT_RECORD = schema.records.insert()
_SELECT_TASK = sa.select(schema.tasks).where(schema.tasks.c.name == sa.bindparam("name"))


def _ts(dt: datetime | None = None) -> str:
    return (dt or utcnow()).isoformat(timespec="microseconds")


def _set_wal(cur: Any, timeout: float = 60.0) -> None:
    """Switch to WAL, waiting for other openers. SQLite does not call the busy handler for the
    lock this switch takes: when several processes open a fresh store together, a plain
    `PRAGMA journal_mode=WAL` fails at once with "database is locked" in one of them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))  # jitter, so the openers do not retry in step


def _sqlite_engine(url: str) -> sa.Engine:
    # hide_parameters: an error's text (logged, or shown to a client) never holds record
    # contents.
    engine = sa.create_engine(url, connect_args={"timeout": 60}, hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see `_on_begin`).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades to a
        # writer can fail with SQLITE_BUSY at once, whatever the timeout, when writers race.
        # Readers (`Store.read`) begin deferred: in WAL mode they then never wait for writers.
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    def __init__(self, url: str):
        self.url = normalise_url(url)
        try:
            backend = sa.make_url(self.url).get_backend_name()
        except (sa.exc.ArgumentError, ValueError):
            raise InvalidInput(f"not a store URL: {url!r} ({_URL_HELP})") from None
        if backend not in ("sqlite", "postgresql"):
            raise InvalidInput(f"unsupported store {backend!r} in {url!r} ({_URL_HELP})")
        try:
            if backend == "sqlite":
                self.engine = _sqlite_engine(self.url)
            else:
                # A bounded connect: an unreachable host fails in seconds rather than hanging.
                self.engine = sa.create_engine(
                    self.url,
                    pool_pre_ping=True,
                    connect_args={"connect_timeout": 10},
                    hide_parameters=True,  # as for SQLite
                )
        except ValueError:  # e.g. a port that is not a number
            raise InvalidInput(f"not a store URL: {url!r} ({_URL_HELP})") from None
        try:
            migrate(self.engine)
        except sa.exc.DBAPIError as e:  # cannot connect, or not a database at all
            raise StoreError(
                f"cannot open the store at {self.display_url}: {first_line(e)}"
            ) from None
        self.dialect = self.engine.dialect.name
        # Record ids are INTEGER: 32-bit on PostgreSQL, 64-bit on SQLite.
        self._max_id = 2**31 - 1 if self.dialect == "postgresql" else MAX_ID

    @property
    def display_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A transaction that may write; committed when the block ends, rolled back on error."""
        return self._transaction(read_only=False)

    def read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A transaction that only reads. On SQLite it does not take the write lock, so reads
        go on while captures are being written."""
        return self._transaction(read_only=True)

    @contextlib.contextmanager
    def _transaction(self, *, read_only: bool) -> Iterator[sa.Connection]:
        # Connecting (and, on SQLite, waiting for the write lock) fails as one StoreError line;
        # errors inside the block are the caller's and pass through untouched.
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as e:
            raise self._unreachable(e) from None
        with conn:
            if read_only:
                conn.execution_options(**{_READ_ONLY: True})
            try:
                tx = conn.begin()
            except sa.exc.DBAPIError as e:
                raise self._unreachable(e) from None
            with tx:
                yield conn

    def _unreachable(self, e: sa.exc.DBAPIError) -> StoreError:
        return StoreError(f"cannot reach the store at {self.display_url}: {first_line(e)}")

    # ---- tasks -------------------------------------------------------------------------
    def create_task(self, task: Task) -> Task:
        _check_storable(f"task {task.name!r}", task.model_dump(exclude={"created_at"}))
        exists = InvalidInput(f"task {task.name!r} already exists")
        try:
            with self.begin() as c:
                if c.execute(
                    sa.select(schema.tasks.c.name).where(schema.tasks.c.name == task.name)
                ).first():
                    raise exists
                c.execute(
                    schema.tasks.insert().values(
                        name=task.name,
                        kind=task.kind.value,
                        instruction=task.instruction,
                        labels=json.dumps(task.labels) if task.labels is not None else None,
                        schema=json.dumps(task.schema_) if task.schema_ is not None else None,
                        metric=task.metric,
                        created_at=_ts(task.created_at),
                    )
                )
        except sa.exc.IntegrityError:
            # Another process created it between our check and our insert.
            raise exists from None
        return task

    def update_task(
        self, name: str, *, instruction: str | None = None, labels: list[str] | None = None
    ) -> Task:
        """Set a task's instruction and/or labels (those given; None leaves one as it is),
        as an import does for a task that declared none. Returns the task as stored."""
        values: dict[str, Any] = {}
        if instruction is not None:
            values["instruction"] = instruction
        if labels is not None:
            values["labels"] = json.dumps(labels)
        _check_storable(f"task {name!r}", values)
        with self.begin() as c:
            self._task(c, name)  # NotFound for an unknown task, naming the known ones
            if values:
                c.execute(schema.tasks.update().where(schema.tasks.c.name == name).values(**values))
            return self._task(c, name)

    def get_task(self, name: str) -> Task:
        with self.read() as c:
            return self._task(c, name)

    def _task(self, c: sa.Connection, name: str) -> Task:
        row = c.execute(_SELECT_TASK, {"name": name}).mappings().first()
        if row is None:
            names = sa.select(schema.tasks.c.name).order_by(schema.tasks.c.name)
            known = [r[0] for r in c.execute(names)]
            hint = (
                f" (known tasks: {', '.join(known)})"
                if known
                else " (no tasks yet: whetstone task create)"
            )
            raise NotFound(f"unknown task {name!r}{hint}")
        return _task(row)

    def list_tasks(self) -> list[Task]:
        with self.read() as c:
            rows = c.execute(sa.select(schema.tasks).order_by(schema.tasks.c.name)).mappings()
            return [_task(r) for r in rows]

    # ---- records -----------------------------------------------------------------------
    def add_records(self, records: Sequence[Record]) -> list[int | None]:
        """Insert records in one transaction. Returns each new id, or None for a row whose
        `source_key` the task already holds (re-import of the same source row)."""
        ids: list[int | None] = []
        with self.begin() as c:
            for rec in records:
                ids.append(self._insert(c, rec))
        return ids

    def _insert(self, c: sa.Connection, rec: Record) -> int | None:
        # Refused here, as one line naming the field, rather than as a driver traceback (and
        # alike on SQLite, which would take a NUL, so that a store can move to PostgreSQL).
        _check_record(f"cannot store a record of task {rec.task!r}", rec)
        if rec.source_key is None:
            rid = _inserted_id(c.execute(_INSERT_RECORD, _row(rec)))
        else:
            # Let the unique (task, source_key) index decide rather than a SELECT first: two
            # importers of one file on PostgreSQL would both see "absent", and one would crash.
            insert = sqlite_insert if self.dialect == "sqlite" else pg_insert
            new_id = c.execute(
                insert(schema.records)
                .values(**_row(rec))
                .on_conflict_do_nothing()
                .returning(schema.records.c.id)
            ).scalar_one_or_none()
            if new_id is None:
                return None
            rid = int(new_id)
        # A restored record (lossless import) brings its review history along.
        for ev in rec.history:
            c.execute(
                schema.record_events.insert().values(
                    record_id=rid,
                    status=ev.status.value,
                    reference=ev.reference,
                    error_category=ev.error_category,
                    annotator=ev.annotator,
                    comment=ev.comment,
                    rating=ev.rating,
                    created_at=_ts(ev.created_at),
                )
            )
        return rid

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
        tags: Iterable[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> int:
        try:
            rec = Record(
                task=task,
                input=input,
                output=output,
                reference=reference,
                model=model,
                confidence=confidence,
                source=Source(source),
                tags=list(tags),
                meta=meta or {},
            )
        except ValueError as e:  # pydantic's ValidationError, or an unknown source
            raise from_validation(e, f"cannot capture for task {task!r}") from None
        _check_record(f"cannot capture for task {task!r}", rec)
        # One transaction per capture, task lookup included: this is the serving hot path.
        with self.begin() as c:
            t = self._task(c, task)
            if reference is not None:
                rec.reference = t.check_reference(reference)
            return _inserted_id(c.execute(_INSERT_RECORD, _row(rec)))

    def find_source_key(self, source_key: str) -> int | None:
        """The id of the record stored under `source_key` (in any task), or None."""
        r = schema.records.c
        with self.read() as c:
            # Naming every task lets the (task, source_key) unique index answer the lookup.
            tasks = [row[0] for row in c.execute(sa.select(schema.tasks.c.name))]
            row = c.execute(
                sa.select(r.id).where(r.task.in_(tasks), r.source_key == source_key)
            ).first()
        return int(row[0]) if row else None

    def _known_id(self, record_id: int) -> None:
        """An id the id column cannot hold names no record: say so, rather than let the
        driver fail on the overflow."""
        if not 0 <= record_id <= self._max_id:
            raise NotFound(f"unknown record {record_id}")

    def get_record(self, record_id: int) -> Record:
        self._known_id(record_id)
        with self.read() as c:
            row = (
                c.execute(sa.select(schema.records).where(schema.records.c.id == record_id))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"unknown record {record_id}")
            events = c.execute(
                sa.select(schema.record_events)
                .where(schema.record_events.c.record_id == record_id)
                .order_by(schema.record_events.c.id)
            ).mappings()
            history = [
                Correction(
                    reference=e["reference"],
                    status=Status(e["status"]),
                    error_category=e["error_category"],
                    annotator=e["annotator"],
                    comment=e["comment"],
                    rating=e["rating"],
                    created_at=datetime.fromisoformat(e["created_at"]),
                )
                for e in events
            ]
        rec = _record(row)
        rec.history = history
        return rec

    def _filters(
        self,
        task: str | None,
        status: str | Sequence[str] | None,
        source: str | Sequence[str] | None,
        tag: str | None,
        has_reference: bool | None,
        has_output: bool | None,
        ids: Sequence[int] | None,
    ) -> list[Any]:
        r = schema.records.c
        conds: list[Any] = []
        if task is not None:
            conds.append(r.task == task)
        for col, val, enum in ((r.status, status, Status), (r.source, source, Source)):
            if val is None:
                continue
            vals = [val] if isinstance(val, str) else list(val)
            try:
                vals = [enum(v).value for v in vals]
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise InvalidInput(f"unknown {col.name} {val!r} (choose from {choices})") from None
            conds.append(col.in_(vals))
        if tag is not None:
            # The quoted JSON string matches a whole tag; autoescape keeps '%' and '_' literal.
            conds.append(r.tags.contains(json.dumps(tag), autoescape=True))
        if has_reference is not None:
            conds.append(r.reference.is_not(None) if has_reference else r.reference.is_(None))
        if has_output is not None:
            conds.append(r.output.is_not(None) if has_output else r.output.is_(None))
        if ids is not None:
            conds.append(r.id.in_([i for i in ids if 0 <= i <= self._max_id]))
        return conds

    def iter_records(
        self,
        task: str | None = None,
        *,
        status: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        tag: str | None = None,
        has_reference: bool | None = None,
        has_output: bool | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> Iterator[Record]:
        conds = self._filters(task, status, source, tag, has_reference, has_output, ids)
        r = schema.records.c
        q = sa.select(schema.records).where(*conds)
        q = q.order_by(r.id.desc() if newest_first else r.id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.read() as c:
            rows = c.execute(q).mappings().all()
        for row in rows:
            yield _record(row)

    def list_records(self, task: str | None = None, **kw: Any) -> list[Record]:
        return list(self.iter_records(task, **kw))

    def count_records(
        self,
        task: str | None = None,
        *,
        status: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        tag: str | None = None,
        has_reference: bool | None = None,
    ) -> int:
        conds = self._filters(task, status, source, tag, has_reference, None, None)
        with self.read() as c:
            return int(
                c.execute(
                    sa.select(sa.func.count()).select_from(schema.records).where(*conds)
                ).scalar_one()
            )

    def set_output(
        self,
        record_id: int,
        output: str,
        *,
        model: str | None,
        confidence: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Record what a model said. The first output a record gets is never overwritten:
        re-running a model over a record is an evaluation, stored apart."""
        self._known_id(record_id)
        _check_storable(f"record {record_id}", {"output": output, "model": model, "meta": meta})
        r = schema.records.c
        with self.begin() as c:
            row = c.execute(sa.select(r.output, r.meta).where(r.id == record_id)).first()
            if row is None:
                raise NotFound(f"unknown record {record_id}")
            if row.output is not None:
                raise InvalidInput(
                    f"record {record_id} already has a model output; it is never overwritten"
                )
            merged = {**json.loads(row.meta), **(meta or {})}
            c.execute(
                schema.records.update()
                .where(r.id == record_id)
                .values(
                    output=output,
                    model=model,
                    confidence=confidence,
                    meta=json.dumps(merged),
                    updated_at=_ts(),
                )
            )

    def review(
        self,
        record_id: int,
        status: Status | str,
        *,
        reference: str | None = None,
        error_category: str | None = None,
        annotator: str | None = None,
        comment: str | None = None,
        rating: int | None = None,
    ) -> Record:
        """Apply a human decision. `corrected` needs a reference, validated against the task;
        every decision is appended to the record's history, nothing earlier is lost."""
        status = Status(status)
        _check_storable(
            f"record {record_id}",
            {
                "reference": reference,
                "error_category": error_category,
                "annotator": annotator,
                "comment": comment,
            },
        )
        rec = self.get_record(record_id)
        task = self.get_task(rec.task)
        if status == Status.corrected:
            if reference is None:
                raise InvalidInput("a correction needs a reference")
            reference = task.check_reference(reference, where=f"record {record_id}: reference")
        elif status == Status.accepted and reference is None:
            # Accepting the model's answer makes it the ground truth.
            if rec.output is None and rec.reference is None:
                raise InvalidInput(f"record {record_id} has no output to accept")
            if rec.reference is None and rec.output is not None:
                # An answer that fails the task's own rules (a label outside the set, JSON
                # that breaks the schema) must not quietly become ground truth.
                try:
                    reference = task.check_reference(
                        rec.output, where=f"record {record_id}: output"
                    )
                except InvalidInput as e:
                    raise InvalidInput(
                        f"cannot accept it as it is: {e}; correct it instead"
                    ) from None
        now = _ts()
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if reference is not None:
            values["reference"] = reference
        if error_category is not None or status == Status.corrected:
            values["error_category"] = error_category
        if annotator is not None:
            values["annotator"] = annotator
        with self.begin() as c:
            c.execute(
                schema.records.update().where(schema.records.c.id == record_id).values(**values)
            )
            c.execute(
                schema.record_events.insert().values(
                    record_id=record_id,
                    status=status.value,
                    reference=reference,
                    error_category=error_category,
                    annotator=annotator,
                    comment=comment,
                    rating=rating,
                    created_at=now,
                )
            )
        return self.get_record(record_id)

    def add_tags(self, record_id: int, *tags: str) -> None:
        self._known_id(record_id)
        _check_storable(f"record {record_id}", {"tags": list(tags)})
        r = schema.records.c
        with self.begin() as c:
            row = c.execute(sa.select(r.tags).where(r.id == record_id)).first()
            if row is None:
                raise NotFound(f"unknown record {record_id}")
            have = json.loads(row.tags)
            new = have + [t for t in tags if t not in have]
            c.execute(schema.records.update().where(r.id == record_id).values(tags=json.dumps(new)))

    def update_meta(self, record_id: int, **meta: Any) -> None:
        self._known_id(record_id)
        _check_storable(f"record {record_id}", {"meta": meta})
        r = schema.records.c
        with self.begin() as c:
            row = c.execute(sa.select(r.meta).where(r.id == record_id)).first()
            if row is None:
                raise NotFound(f"unknown record {record_id}")
            merged = {**json.loads(row.meta), **meta}
            c.execute(
                schema.records.update().where(r.id == record_id).values(meta=json.dumps(merged))
            )


def _check_storable(what: str, fields: dict[str, Any]) -> None:
    bad = find_unstorable(fields)
    if bad is not None:
        raise InvalidInput(f"{what}: {bad}")


def _check_record(what: str, rec: Record) -> None:
    bad = rec.unstorable()
    if bad is not None:
        raise InvalidInput(f"{what}: {bad}")


def row_by_prefix(c: sa.Connection, table: sa.Table, prefix: str, what: str) -> Any:
    """The one row whose id is `prefix` or starts with it (content-hash ids are long; users
    type the first few characters, as with git)."""
    rows = (
        c.execute(sa.select(table).where(table.c.id.startswith(prefix, autoescape=True)))
        .mappings()
        .all()
    )
    if not rows:
        raise NotFound(f"unknown {what} {prefix!r}")
    if len(rows) > 1:
        raise InvalidInput(f"{what} prefix {prefix!r} is ambiguous")
    return rows[0]


def _task(row: Any) -> Task:
    return Task(
        name=row["name"],
        kind=Kind(row["kind"]),
        instruction=row["instruction"],
        labels=json.loads(row["labels"]) if row["labels"] else None,
        schema=json.loads(row["schema"]) if row["schema"] else None,
        metric=row["metric"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    """The id of the row an INSERT just made (both backends return it for a single row)."""
    key = result.inserted_primary_key
    assert key is not None, "an INSERT returned no primary key"
    return int(key[0])


def _row(rec: Record) -> dict[str, Any]:
    return {
        "task": rec.task,
        "input": input_to_json(rec.input),
        "input_text": input_text(rec.input),
        "output": rec.output,
        "reference": rec.reference,
        "status": rec.status.value,
        "error_category": rec.error_category,
        "source": rec.source.value,
        "model": rec.model,
        "confidence": rec.confidence,
        "tags": json.dumps(rec.tags),
        "annotator": rec.annotator,
        "meta": json.dumps(rec.meta),
        "source_key": rec.source_key,
        "created_at": _ts(rec.created_at),
        "updated_at": _ts(rec.updated_at),
    }


def _record(row: Any) -> Record:
    return Record(
        id=row["id"],
        task=row["task"],
        input=input_from_json(row["input"]),
        output=row["output"],
        reference=row["reference"],
        status=Status(row["status"]),
        error_category=row["error_category"],
        source=Source(row["source"]),
        model=row["model"],
        confidence=row["confidence"],
        tags=json.loads(row["tags"]),
        annotator=row["annotator"],
        meta=json.loads(row["meta"]),
        source_key=row["source_key"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )
