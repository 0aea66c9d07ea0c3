"""The flywheel store, on SQLite and on PostgreSQL: tasks, records, reviews, filters,
re-imports, schema versions, bad URLs, and many processes capturing at once."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from whetstone.errors import InvalidInput, NotFound, StoreError
from whetstone.records import Record, Source, Status, Task
from whetstone.store import Store, normalise_url, schema
from whetstone.store.migrations import APPLIED, NAMES, migrate

LABELS = ["billing", "shipping", "other"]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.create_task(Task(name="tickets", kind="classify", labels=LABELS))
    s.create_task(Task(name="summaries", kind="generate", instruction="Summarise."))
    yield s
    s.close()


# ---- tasks -----------------------------------------------------------------------------
def test_task_create_get_list(store: Store) -> None:
    t = store.get_task("tickets")
    assert (t.kind.value, t.labels, t.main_metric) == ("classify", LABELS, "accuracy")
    assert store.get_task("summaries").instruction == "Summarise."
    assert [t.name for t in store.list_tasks()] == ["summaries", "tickets"]


def test_task_extract_schema_round_trips(store: Store) -> None:
    sch = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    store.create_task(Task(name="addr", kind="extract", schema=sch))
    assert store.get_task("addr").schema_ == sch


def test_task_twice_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput, match="'tickets' already exists"):
        store.create_task(Task(name="tickets", kind="generate"))


def test_unknown_task_lists_the_known_ones(store: Store) -> None:
    with pytest.raises(
        NotFound, match=r"unknown task 'ticket' \(known tasks: summaries, tickets\)"
    ):
        store.get_task("ticket")
    with pytest.raises(NotFound, match="unknown task 'nope'"):
        store.capture("nope", "hello")


def test_unknown_task_in_an_empty_store_says_how_to_create_one(tmp_path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(NotFound, match="no tasks yet: whetstone task create"):
        s.get_task("x")


# ---- records ---------------------------------------------------------------------------
def test_capture_then_get(store: Store) -> None:
    rid = store.capture(
        "tickets",
        "my parcel never came",
        "billing",
        model="tickets@1",
        confidence=0.4,
        tags=["web"],
        meta={"latency_ms": 12},
    )
    rec = store.get_record(rid)
    assert rec.id == rid
    assert (rec.task, rec.input, rec.output) == ("tickets", "my parcel never came", "billing")
    assert (rec.model, rec.confidence, rec.tags, rec.meta) == (
        "tickets@1",
        0.4,
        ["web"],
        {"latency_ms": 12},
    )
    assert (rec.status, rec.source, rec.reference, rec.history) == (
        Status.unreviewed,
        Source.production,
        None,
        [],
    )


def test_capture_chat_input_keeps_the_messages(store: Store) -> None:
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "refund please"},
    ]
    rec = store.get_record(store.capture("tickets", chat, "billing"))
    assert [m.model_dump() for m in rec.input] == chat
    assert rec.input_text == "refund please"


def test_capture_validates_its_reference_and_input(store: Store) -> None:
    with pytest.raises(InvalidInput, match="label 'refunds' is not one of"):
        store.capture("tickets", "x", reference="refunds")
    with pytest.raises(InvalidInput, match="cannot capture for task 'tickets': input"):
        store.capture("tickets", {"text": "not a string"})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="'web' is not a valid Source"):
        store.capture("tickets", "x", source="web")
    assert store.count_records() == 0


def test_unknown_record(store: Store) -> None:
    with pytest.raises(NotFound, match="unknown record 999"):
        store.get_record(999)
    with pytest.raises(NotFound, match="unknown record 999"):
        store.review(999, Status.accepted)


def test_correct_keeps_the_output_and_appends_history(store: Store) -> None:
    rid = store.capture("tickets", "where is my parcel", "billing", model="tickets@1")
    store.review(
        rid,
        Status.corrected,
        reference="other",
        error_category="wrong_label",
        annotator="ana",
        comment="first look",
    )
    rec = store.review(
        rid, Status.corrected, reference=" shipping ", error_category="confused", annotator="bo"
    )
    assert rec.output == "billing"  # the model's answer is kept
    assert (rec.reference, rec.status, rec.error_category, rec.annotator) == (
        "shipping",  # stripped to the canonical label
        Status.corrected,
        "confused",
        "bo",
    )
    assert [(h.reference, h.annotator, h.error_category, h.comment) for h in rec.history] == [
        ("other", "ana", "wrong_label", "first look"),
        ("shipping", "bo", "confused", None),
    ]
    assert store.get_record(rid).history == rec.history


def test_correct_validates_the_reference(store: Store) -> None:
    rid = store.capture("tickets", "x", "billing")
    with pytest.raises(InvalidInput, match=f"record {rid}: reference: label 'refund'"):
        store.review(rid, Status.corrected, reference="refund")
    with pytest.raises(InvalidInput, match="a correction needs a reference"):
        store.review(rid, Status.corrected)
    rec = store.get_record(rid)
    assert (rec.status, rec.reference, rec.history) == (Status.unreviewed, None, [])


def test_correct_extract_checks_json_and_schema(store: Store) -> None:
    sch = {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]}
    store.create_task(Task(name="addr", kind="extract", schema=sch))
    rid = store.capture("addr", "1 Main St 12345", '{"zip": 12345}')
    with pytest.raises(InvalidInput, match="not valid JSON"):
        store.review(rid, Status.corrected, reference="{zip: 1")
    with pytest.raises(InvalidInput, match="fails the task schema at zip"):
        store.review(rid, Status.corrected, reference='{"zip": 12345}')
    rec = store.review(rid, Status.corrected, reference='{ "zip" : "12345" }')
    assert rec.reference == '{"zip":"12345"}'


def test_accept_copies_the_output_as_reference(store: Store) -> None:
    rid = store.capture("summaries", "long text", "short text")
    rec = store.review(rid, Status.accepted, annotator="ana")
    assert (rec.status, rec.reference, rec.output, rec.annotator) == (
        Status.accepted,
        "short text",
        "short text",
        "ana",
    )
    assert [h.status for h in rec.history] == [Status.accepted]


def test_accept_without_output_is_refused(store: Store) -> None:
    rid = store.capture("summaries", "long text")
    with pytest.raises(InvalidInput, match=f"record {rid} has no output to accept"):
        store.review(rid, Status.accepted)


def test_reject(store: Store) -> None:
    rid = store.capture("summaries", "spam spam", "spam")
    rec = store.review(rid, Status.rejected, error_category="out_of_scope", comment="spam")
    assert (rec.status, rec.reference, rec.error_category) == (
        Status.rejected,
        None,
        "out_of_scope",
    )
    assert rec.history[0].comment == "spam"


def test_set_output_never_overwrites(store: Store) -> None:
    rid = store.capture("summaries", "long text", source="import", reference="gold")
    store.set_output(rid, "first", model="m@1", confidence=0.9, meta={"k": 1})
    rec = store.get_record(rid)
    assert (rec.output, rec.model, rec.confidence, rec.meta) == ("first", "m@1", 0.9, {"k": 1})
    with pytest.raises(InvalidInput, match="already has a model output"):
        store.set_output(rid, "second", model="m@2")
    assert store.get_record(rid).output == "first"
    with pytest.raises(NotFound):
        store.set_output(999, "x", model=None)


def test_filters(store: Store) -> None:
    a = store.capture("tickets", "a", "billing", tags=["web", "vip"])
    b = store.capture("tickets", "b", "other", source="import", reference="shipping")
    c = store.capture("tickets", "c", "shipping", tags=["web_x"])
    d = store.capture("summaries", "d", "dd", source="teacher")
    store.review(a, Status.accepted)
    store.review(c, Status.rejected)

    def ids(task: str | None = None, **kw: object) -> list[int]:
        return [r.id for r in store.list_records(task, **kw)]  # type: ignore[misc]

    assert ids() == [a, b, c, d]
    assert ids("tickets") == [a, b, c]
    assert ids(newest_first=True, limit=2) == [d, c]
    assert ids(status="accepted") == [a]
    assert ids(status=["unreviewed", "rejected"]) == [b, c, d]
    assert ids(source="import") == [b]
    assert ids(source=["teacher", "production"]) == [a, c, d]
    assert ids(tag="web") == [a]  # a whole tag, not a prefix of "web_x"
    assert ids(tag="web_x") == [c]
    assert ids(tag="we%") == []  # LIKE wildcards in a tag are literal
    assert ids(has_reference=True) == [a, b]
    assert ids("tickets", has_reference=False) == [c]
    assert store.count_records("tickets", status="unreviewed") == 1
    assert store.count_records(has_reference=True, source="import") == 1
    with pytest.raises(InvalidInput, match="unknown status 'done'"):
        store.list_records(status="done")


def test_reimport_with_the_same_source_key_adds_nothing(store: Store) -> None:
    def rows(*keys: str) -> list[Record]:
        return [
            Record(
                task="tickets", input=f"in {k}", reference="other", source="import", source_key=k
            )
            for k in keys
        ]

    first = store.add_records(rows("k1", "k2"))
    assert all(isinstance(i, int) for i in first)
    again = store.add_records(rows("k2", "k3", "k1"))
    assert again[0] is None and again[2] is None and isinstance(again[1], int)
    assert store.count_records("tickets") == 3
    # The same key in another task is another row.
    other = store.add_records([Record(task="summaries", input="x", source_key="k1")])
    assert isinstance(other[0], int)


# ---- opening a store -------------------------------------------------------------------
def test_opening_twice_migrates_once(store_url: str) -> None:
    Store(store_url).close()
    s = Store(store_url)
    with s.engine.connect() as c:
        rows = c.execute(sa.select(APPLIED.c.name)).all()
    assert sorted(r[0] for r in rows) == NAMES
    s.create_task(Task(name="t", kind="generate"))
    s.close()
    assert [t.name for t in Store(store_url).list_tasks()] == ["t"]


def test_a_store_from_a_newer_whetstone_is_refused(store_url: str) -> None:
    Store(store_url).close()
    engine = sa.create_engine(Store(store_url).url)
    with engine.begin() as c:
        c.execute(APPLIED.insert().values(name="m999_future", applied_at="2027-01-01"))
    engine.dispose()
    with pytest.raises(StoreError, match="m999_future that this Whetstone does not know"):
        Store(store_url)


def _schema(url: str) -> dict[str, object]:
    """Everything about a store's tables that a migration may change, comparable as data."""
    engine = sa.create_engine(normalise_url(url))
    try:
        insp = sa.inspect(engine)
        out: dict[str, object] = {}
        for t in sorted(insp.get_table_names()):
            out[t] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)
                ],
                "primary_key": insp.get_pk_constraint(t)["constrained_columns"],
                "foreign_keys": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"])
                    for f in insp.get_foreign_keys(t)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(t)
                ),
            }
        return out
    finally:
        engine.dispose()


@pytest.fixture
def second_store_url(store_url: str, request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Another empty store on the same backend as `store_url`."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    import psycopg
    from psycopg import sql

    server = request.getfixturevalue("pg_server_url")
    name = store_url.rpartition("/")[2] + "_b"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{store_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_a_store_migrated_step_by_step_equals_a_fresh_one(
    store_url: str, second_store_url: str
) -> None:
    engine = sa.create_engine(normalise_url(store_url))
    assert migrate(engine, upto=NAMES[0]) == NAMES[:1]
    engine.dispose()
    assert set(_schema(store_url)) == {APPLIED.name, "tasks", "records", "record_events"}
    Store(store_url).close()  # migrates the rest
    Store(second_store_url).close()
    assert _schema(store_url) == _schema(second_store_url)


def test_schema_py_matches_what_the_migrations_build(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    s = Store(store_url)
    with s.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), schema.metadata)
    s.close()
    # The bookkeeping table is the migrator's own, not one for queries.
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == APPLIED.name)] == []


def test_a_store_with_an_integer_version_keeps_its_migrations(store_url: str) -> None:
    # Stores made before migrations had names counted them in whetstone_meta.schema_version.
    engine = sa.create_engine(normalise_url(store_url))
    migrate(engine, upto=NAMES[1])
    with engine.begin() as c:
        c.execute(APPLIED.delete())
        c.execute(sa.text("DROP TABLE whetstone_migrations"))
        c.execute(sa.text("CREATE TABLE whetstone_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        c.execute(sa.text("INSERT INTO whetstone_meta VALUES ('schema_version', '2')"))
    engine.dispose()
    s = Store(store_url)  # would fail re-creating m001/m002's tables if it forgot them
    s.create_task(Task(name="t", kind="generate"))
    with s.engine.connect() as c:
        assert sorted(r[0] for r in c.execute(sa.select(APPLIED.c.name))) == NAMES
        assert not sa.inspect(c).has_table("whetstone_meta")
    s.close()


def test_m004_adds_prediction_confidence_to_a_store_of_the_old_schema(store_url: str) -> None:
    # A store as m003 left it, holding an evaluation with a prediction (no confidence column).
    engine = sa.create_engine(normalise_url(store_url))
    migrate(engine, upto="m003_curation")
    with engine.begin() as c:
        cols = {col["name"] for col in sa.inspect(c).get_columns("predictions")}
        assert "confidence" not in cols
        for sql in (
            "INSERT INTO tasks (name, kind, created_at) VALUES ('t', 'classify', 'now')",
            "INSERT INTO records (id, task, input, input_text, status, source, tags, meta, "
            "created_at, updated_at) VALUES (1, 't', '\"x\"', 'x', 'unreviewed', 'import', "
            "'[]', '{}', 'now', 'now')",
            "INSERT INTO evaluations (id, task, model, split, metrics, info, created_at) "
            "VALUES ('e1', 't', 'base:m', 'test', '{}', '{}', 'now')",
            "INSERT INTO predictions (evaluation_id, record_id, prediction, scores) "
            "VALUES ('e1', 1, 'yes', '{}')",
        ):
            c.execute(sa.text(sql))
    engine.dispose()
    s = Store(store_url)  # migrates m004 (and any later ones)
    with s.engine.connect() as c:
        assert "m004_prediction_confidence" in [r[0] for r in c.execute(sa.select(APPLIED.c.name))]
        old = c.execute(sa.select(schema.predictions)).mappings().one()
    assert old["prediction"] == "yes" and old["confidence"] is None
    with s.begin() as c:
        c.execute(schema.predictions.update().values(confidence=-0.25))
    with s.engine.connect() as c:
        assert c.execute(sa.select(schema.predictions.c.confidence)).scalar_one() == -0.25
    s.close()


def test_a_store_with_a_newer_integer_version_is_refused(store_url: str) -> None:
    engine = sa.create_engine(normalise_url(store_url))
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE whetstone_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        c.execute(
            sa.text(f"INSERT INTO whetstone_meta VALUES ('schema_version', '{len(NAMES) + 1}')")
        )
    engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {len(NAMES) + 1}, newer than"):
        Store(store_url)


def test_unreachable_postgres_is_one_line() -> None:
    with pytest.raises(StoreError) as e:
        Store("postgresql://nobody@127.0.0.1:1/nothing")
    msg = str(e.value)
    assert msg.startswith(
        "cannot open the store at postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    )
    assert "\n" not in msg


def test_password_is_hidden_in_errors() -> None:
    with pytest.raises(StoreError) as e:
        Store("postgresql://ana:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(e.value)


def test_unwritable_sqlite_path_is_a_store_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="cannot open the store at sqlite:///"):
        Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database, just some words that fill the header " * 10)
    with pytest.raises(StoreError, match="file is not a database"):
        Store(str(junk))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://ana@db/whetstone", "unsupported store 'mysql'"),
        ("postgresql://ana@db:port/whetstone", "not a store URL"),
    ],
)
def test_urls_whetstone_cannot_use(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as e:
        Store(url)
    assert "postgresql://USER@HOST" in str(e.value)  # says what would work


@pytest.mark.timeout(30)  # a reader that waited for the lock would sit out the 60 s busy timeout
def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    writer, reader = Store(url), Store(url)
    writer.create_task(Task(name="t", kind="generate"))
    rid = writer.capture("t", "committed")
    with writer.begin() as c:  # holds SQLite's write lock until the block ends
        c.execute(
            sa.insert(schema.tasks).values(
                name="pending", kind="generate", created_at="2026-01-01T00:00:00+00:00"
            )
        )
        assert reader.get_record(rid).input == "committed"
        assert [t.name for t in reader.list_tasks()] == ["t"]  # nothing uncommitted
        assert reader.count_records() == 1
    assert [t.name for t in reader.list_tasks()] == ["pending", "t"]


def test_losing_the_database_mid_session_is_a_store_error(pg_url: str, pg_server_url: str) -> None:
    import psycopg
    from psycopg import sql

    s = Store(pg_url)
    s.create_task(Task(name="t", kind="generate"))
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        name = pg_url.rpartition("/")[2]
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    with pytest.raises(StoreError, match="cannot reach the store at postgresql") as e:
        s.get_task("t")
    assert "\n" not in str(e.value)
    s.close()


# ---- many processes at once ------------------------------------------------------------
WRITERS = 4
PER_WRITER = 2000
IMPORTED = 200


def _worker(url: str, writer: int) -> None:
    """What a server worker does when several start together on a fresh store: open it (so
    migrate it), make sure its task exists, import the same seed file as the others, then
    capture, each capture its own transaction as in serving."""
    s = Store(url)
    with contextlib.suppress(InvalidInput):  # another worker created it first
        s.create_task(Task(name="tickets", kind="classify", labels=LABELS))
    seed = [
        Record(task="tickets", input=f"seed {k}", source="import", source_key=f"k{k}")
        for k in range(IMPORTED)
    ]
    s.add_records(seed)
    for i in range(PER_WRITER):
        s.capture("tickets", f"w{writer}-{i}", "other", meta={"writer": writer})
    s.close()


def test_opening_a_fresh_store_waits_while_another_opener_holds_the_lock(tmp_path) -> None:
    # Switching a fresh file to WAL fails at once, without SQLite's busy handler, while another
    # connection holds a write lock: what happens when server workers open a new store together.
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (a)")
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, other.execute, args=("COMMIT",))
    release.start()
    try:
        s = Store(str(path))
        assert s.list_tasks() == []
        s.close()
    finally:
        release.join()
        other.close()


def test_workers_starting_together_on_a_fresh_store_lose_nothing(store_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(store_url, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WRITERS  # a failing worker's traceback is in stderr

    s = Store(store_url)
    with s.engine.connect() as c:
        assert sorted(r[0] for r in c.execute(sa.select(APPLIED.c.name))) == NAMES
        texts = [
            r[0]
            for r in c.execute(
                sa.select(schema.records.c.input_text).where(
                    schema.records.c.source == "production"
                )
            )
        ]
    assert [t.name for t in s.list_tasks()] == ["tickets"]
    assert s.count_records("tickets", source="import") == IMPORTED
    # Every capture exactly once: as many rows as captures, and each marker among them.
    assert len(texts) == WRITERS * PER_WRITER
    assert set(texts) == {f"w{w}-{i}" for w in range(WRITERS) for i in range(PER_WRITER)}
    s.close()
