"""Store: schema, constraints enforced by the database, one transaction per write, tokens."""

from __future__ import annotations

from datetime import timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from rlhf import store as store_mod
from rlhf.errors import ValidationError, WorkbenchError
from rlhf.schema import Comparison, Label, Prompt
from rlhf.store import CompletionRecord, PromptRecord, Store


@pytest.fixture
def store(backend_store):
    """Every test here runs on SQLite and on PostgreSQL (see conftest.backend_store)."""
    return backend_store


def seed_pair(store: Store, required: int = 1) -> int:
    """One prompt, two distinct completions, one comparison; returns the comparison id."""
    store.add_prompts([PromptRecord("What is 2+2?", category="math")])
    with store.session() as s:
        pid = s.scalar(select(Prompt.id))
    store.add_candidates(pid, [CompletionRecord("4", "m"), CompletionRecord("5", "m")], required_labels=required)
    with store.session() as s:
        return s.scalar(select(Comparison.id))


def test_init_creates_schema_and_is_idempotent(home):
    s = Store()
    assert s.schema_version() is None
    assert s.init() == store_mod.SCHEMA_VERSION
    assert s.init() == store_mod.SCHEMA_VERSION  # re-run changes nothing
    assert (home / "rlhf.db").exists()
    assert s.get_setting("overlap") == 1


def sqlite_only(store):
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite-specific behaviour")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(store):
    sqlite_only(store)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_db_url_from_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("RLHF_DB_URL", url)
    s = Store()
    s.init()
    assert s.url == url and (tmp_path / "elsewhere.db").exists()


def test_newer_schema_is_refused(store, monkeypatch):
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 0)
    with pytest.raises(WorkbenchError, match="newer than this workbench"):
        store.init()


def test_upgrade_runs_migrations_keeps_labels_and_backs_up(store, home, monkeypatch):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    store.save_label(cid, a.id, "A", 2)

    def add_column(s):
        s.execute(text("ALTER TABLE labels ADD COLUMN confidence FLOAT"))

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_mod.MIGRATIONS, 1, add_column)
    assert store.init() == 2
    assert store.schema_version() == 2
    assert (home / "rlhf.v1.bak").exists() == (store.engine.dialect.name == "sqlite")  # SQLite is backed up
    with store.session() as s:
        assert s.execute(text("SELECT choice, strength, confidence FROM labels")).all() == [("A", 2, None)]


def test_failed_migration_changes_nothing(store, monkeypatch):
    def broken(s):
        s.execute(text("ALTER TABLE labels ADD COLUMN x INT"))
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_mod.MIGRATIONS, 1, broken)
    with pytest.raises(RuntimeError):
        store.init()
    assert store.schema_version() == 1
    from sqlalchemy import inspect

    assert "x" not in [c["name"] for c in inspect(store.engine).get_columns("labels")]


def test_prompts_are_deduplicated_by_content(store):
    chat = [{"role": "user", "content": "hi"}]
    assert store.add_prompts([PromptRecord("hi"), PromptRecord(chat), PromptRecord("hi")]) == (2, 1)
    assert store.add_prompts([PromptRecord(chat)]) == (0, 1)
    with store.session() as s:
        rows = s.scalars(select(Prompt).order_by(Prompt.id)).all()
    assert [r.content for r in rows] == ["hi", chat]
    assert rows[0].created_at.tzinfo == timezone.utc


def test_bad_prompt_record_adds_nothing(store):
    with pytest.raises(ValidationError, match="record 2: `split`"):
        store.add_prompts([PromptRecord("ok"), PromptRecord("bad", split="dev")])
    assert store.counts()["prompts"] == 0


def test_identical_completions_are_not_paired(store):
    store.add_prompts([PromptRecord("p")])
    # K=3 with two identical texts (after stripping): pairs (0,2) and (1,2) only -> 2 comparisons.
    n = store.add_candidates(1, [CompletionRecord("x", "m"), CompletionRecord(" x ", "m"), CompletionRecord("y", "m")])
    assert n == (3, 2)


def test_candidates_for_missing_prompt_store_nothing(store):
    with pytest.raises(WorkbenchError, match="no prompt with id 99"):
        store.add_candidates(99, [CompletionRecord("a", "m"), CompletionRecord("b", "m")])
    assert store.counts()["completions"] == 0


def test_one_label_per_comparison_and_annotator_in_the_database(store):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    with pytest.raises(IntegrityError):
        with store.transaction() as s:
            s.add(Label(comparison_id=cid, annotator_id=a.id, choice="A"))
            s.add(Label(comparison_id=cid, annotator_id=a.id, choice="B"))
    assert store.counts()["labels_submitted"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"choice": "C"},
        {"choice": "A", "strength": 4},
        {"choice": "A", "status": "draft"},
        {"choice": "A", "shown_left": "X"},
    ],
)
def test_check_constraints_reject_impossible_rows(store, fields):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    with pytest.raises(IntegrityError):
        with store.transaction() as s:
            s.add(Label(comparison_id=cid, annotator_id=a.id, **fields))


def test_save_label_collects_every_problem_and_stores_nothing(store):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    with pytest.raises(ValidationError) as e:
        store.save_label(cid, a.id, "tie", strength=2, shown_left="C", time_spent_s=-1)
    assert len(e.value.problems) == 3
    assert store.counts()["labels_submitted"] == 0


def test_second_label_by_same_annotator_is_refused(store):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    store.save_label(cid, a.id, "A", 3, rationale="correct", time_spent_s=4.5, shown_left="B")
    with pytest.raises(WorkbenchError, match="already labelled"):
        store.save_label(cid, a.id, "B")
    with store.session() as s:
        rows = s.execute(select(Label.choice, Label.strength, Label.rationale, Label.shown_left)).all()
    assert rows == [("A", 3, "correct", "B")]


def test_comparison_completes_at_required_labels_and_undo_reopens(store):
    cid = seed_pair(store, required=2)
    a, _ = store.add_annotator("a")
    b, _ = store.add_annotator("b")

    def status():
        with store.session() as s:
            return s.get(Comparison, cid).status

    la = store.save_label(cid, a.id, "A", 1)
    assert status() == "pending"  # 1 of 2 labels
    store.save_label(cid, b.id, "tie")
    assert status() == "completed"
    store.discard_label(la.id, a.id)
    assert status() == "pending"
    relabel = store.save_label(cid, a.id, "B", 0)  # reuses the discarded row
    assert relabel.id == la.id and status() == "completed"
    assert store.counts()["labels_submitted"] == 2 and store.counts()["labels_discarded"] == 0


def test_undo_of_someone_elses_label_is_refused(store):
    cid = seed_pair(store)
    a, _ = store.add_annotator("a")
    b, _ = store.add_annotator("b")
    la = store.save_label(cid, a.id, "A")
    with pytest.raises(WorkbenchError, match="not one of your labels"):
        store.discard_label(la.id, b.id)
    assert store.counts()["labels_submitted"] == 1


def test_tokens_are_hashed_checked_and_revocable(store):
    a, token = store.add_annotator("ann")
    assert store.authenticate(token).id == a.id
    assert store.authenticate(token + "x") is None and store.authenticate("") is None
    with store.session() as s:
        dump = "\n".join(str(r) for r in s.execute(text("SELECT * FROM annotators")))
    assert token not in dump  # only the sha256 is stored
    new = store.rotate_token(a.id)
    assert store.authenticate(token) is None and store.authenticate(new).id == a.id
    store.set_annotator_active(a.id, False)
    assert store.authenticate(new) is None


def test_inactive_annotator_cannot_label(store):
    cid = seed_pair(store)
    a, _ = store.add_annotator("ann")
    store.set_annotator_active(a.id, False)
    with pytest.raises(WorkbenchError, match="deactivated"):
        store.save_label(cid, a.id, "A")


def test_duplicate_annotator_and_bad_role(store):
    store.add_annotator("ann")
    with pytest.raises(WorkbenchError, match="already exists"):
        store.add_annotator("ann")
    with pytest.raises(ValidationError, match="`role`"):
        store.add_annotator("x", role="owner")
    assert len(store.list_annotators()) == 1


def test_overlap_setting_is_validated_and_used(store):
    with pytest.raises(WorkbenchError, match="overlap"):
        store.set_setting("overlap", 0)
    store.set_setting("overlap", 3)
    seed_pair(store, required=None)
    with store.session() as s:
        assert s.scalar(select(Comparison.required_labels)) == 3


def test_uninitialised_store_says_run_init(home):
    with pytest.raises(WorkbenchError, match="rlhf init"):
        Store().require_ready()


def test_read_only_database_gives_clear_error_and_keeps_data(store, home):
    import os

    sqlite_only(store)
    if os.geteuid() == 0:
        # root ignores file permissions; emulate with SQLite's read-only URI mode instead.
        ro = Store(f"sqlite:///file:{home / 'rlhf.db'}?mode=ro&uri=true")
    else:  # pragma: no cover
        os.chmod(home / "rlhf.db", 0o444)
        ro = Store()
    with pytest.raises(WorkbenchError, match="read-only|readonly"):
        ro.add_annotator("x")
    assert store.list_annotators() == []
