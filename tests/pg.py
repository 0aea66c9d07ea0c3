"""PostgreSQL for the store's tests: every test gets a fresh database on the server named by
WHETSTONE_TEST_PG_URL (start one with `scripts/postgres.sh start`).

Without that variable the PostgreSQL tests are skipped, except under CI (the `CI` variable is
set), where they fail: CI must never pass by silently skipping the second backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL_VAR = "WHETSTONE_TEST_PG_URL"


def _libpq(url: str) -> str:
    """psycopg takes plain `postgresql://` URLs, not SQLAlchemy's `postgresql+psycopg://`."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The URL of a database on the test server, used to create and drop test databases."""
    url = os.environ.get(PG_URL_VAR)
    if not url:
        msg = f"{PG_URL_VAR} is not set (start a server with: scripts/postgres.sh start)"
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run under CI: {msg}")
        pytest.skip(msg)
    import psycopg

    try:
        psycopg.connect(_libpq(url), connect_timeout=10).close()
    except psycopg.OperationalError as e:
        pytest.fail(f"{PG_URL_VAR}={url} cannot be reached: {e}")
    return _libpq(url)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards (even if connections remain)."""
    import psycopg
    from psycopg import sql

    name = f"whetstone_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = pg_server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a SQLite file in tmp_path, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))
