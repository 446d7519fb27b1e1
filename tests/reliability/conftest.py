"""Fixtures for the reliability suite: a store on SQLite or on a PostgreSQL database of its own.

The PostgreSQL database is created per test session (`rlhf_rel_<pid>`) rather than reusing the shared
`rlhf_test` one, so this suite can run beside other test runs on the same server without wiping
their tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL = os.environ.get("RLHF_TEST_PG_URL")  # set by `eval "$(scripts/pg-test-server start)"`


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip('no PostgreSQL test server: run `eval "$(scripts/pg-test-server start)"`')
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"rlhf_rel_{os.getpid()}"
    admin = create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def fresh_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def rel_store(request: pytest.FixtureRequest, home: Path):
    """An initialised store on SQLite (in the test's data home), then on PostgreSQL."""
    from rlhf.store import Store

    if request.param == "sqlite":
        s = Store()
    else:
        url = request.getfixturevalue("pg_url")
        fresh_pg(url)
        s = Store(url)
    s.init()
    yield s
    s.engine.dispose()
