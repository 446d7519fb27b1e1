"""Shared fixtures: a temporary data home per test, an initialised store, one tiny model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty data home (RLHF_HOME) with the default SQLite store location."""
    h = tmp_path / "home"
    monkeypatch.setenv("RLHF_HOME", str(h))
    monkeypatch.delenv("RLHF_DB_URL", raising=False)
    return h


@pytest.fixture
def store(home: Path):
    from rlhf.store import Store

    s = Store()
    s.init()
    return s


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry's `tiny` model, built once per test session through the normal registry path."""
    h = tmp_path_factory.mktemp("tiny-home")
    old = os.environ.get("RLHF_HOME")
    os.environ["RLHF_HOME"] = str(h)
    try:
        from rlhf.models import resolve_model

        return resolve_model("tiny")
    finally:
        if old is None:
            os.environ.pop("RLHF_HOME", None)
        else:
            os.environ["RLHF_HOME"] = old


PG_URL = os.environ.get("RLHF_TEST_PG_URL")  # set by `scripts/pg-test-server start` (CI does)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_store(request, home: Path):
    """An initialised store on SQLite, then on PostgreSQL (skipped when no test server is set up).

    Modules whose tests must hold on both backends override `store` with this fixture."""
    from rlhf.store import Store

    if request.param == "sqlite":
        s = Store()
    else:
        if not PG_URL:
            pytest.skip('no PostgreSQL test server: run `eval "$(scripts/pg-test-server start)"`')
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_URL)
        with engine.begin() as c:  # a clean database for every test
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        s = Store(PG_URL)
    s.init()
    yield s
    s.engine.dispose()
