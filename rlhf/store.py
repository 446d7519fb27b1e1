"""The preference store: every read and write of prompts, completions, comparisons and labels.

SQLite in WAL mode in the data home by default; any SQLAlchemy URL (PostgreSQL) via `RLHF_DB_URL`.
Each public write is one transaction: it either happens whole or leaves the database unchanged.
Domain rules (valid choices, one label per annotator and comparison, when a comparison is complete)
live here, in one place; the CLI and the UI only call these functions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.home import data_home, ensure_home
from rlhf.schema import (
    CHOICES,
    ROLES,
    SCHEMA_VERSION,
    SPLITS,
    Annotator,
    Base,
    Comparison,
    Completion,
    Label,
    Prompt,
    SchemaVersion,
    Setting,
)

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "overlap": 1,  # labels each new comparison needs before it leaves the queues
    "guidelines": "",
}

# version -> function upgrading a database at that version to version + 1, run in one transaction.
MIGRATIONS: dict[int, Any] = {}


def default_db_url() -> str:
    return os.environ.get("RLHF_DB_URL") or f"sqlite:///{data_home() / 'rlhf.db'}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def content_hash(content: str | list[dict[str, str]]) -> str:
    """Stable identity of a prompt's content (text or chat messages)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class PromptRecord:
    """A prompt to add: plain text or a list of chat messages, plus provenance."""

    content: str | list[dict[str, str]]
    external_id: str | None = None
    source: str | None = None
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    split: str | None = None


@dataclass
class CompletionRecord:
    text: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    num_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class EvaluationPair:
    """One held-out prompt of a human evaluation: the reference's and the tuned policy's response,
    and the side (stored letter A or B) the policy's response takes."""

    prompt: str | list[dict[str, str]]
    reference: CompletionRecord
    policy: CompletionRecord
    policy_side: str


@dataclass
class EvaluationLabel:
    """One submitted label on a human-evaluation comparison."""

    comparison_id: int
    annotator_id: int
    annotator: str
    choice: str  # A | B | tie | both_bad (stored letters)
    policy_side: str  # the stored letter of the tuned policy's completion


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; NORMAL sync is durable against a killed process.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    # Let SQLAlchemy emit BEGIN itself (below): the sqlite3 module would otherwise run DDL outside
    # the transaction, and a failed migration could leave half its changes behind.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front (IMMEDIATE): a deferred read-then-write transaction
    # could fail with "database is locked" at once instead of waiting its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("rlhf_write") else "BEGIN")


class Store:
    """A handle on one preference database. Cheap to create; share one per process."""

    def __init__(self, url: str | None = None, busy_timeout_s: float = 15.0):
        """`busy_timeout_s` (SQLite): how long a writer waits for another's lock before a clear error."""
        self.url = url or default_db_url()
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database or ""
            if db and db != ":memory:" and not db.startswith("file:"):
                path = Path(db)
                if path.parent == data_home():
                    ensure_home()
                elif not path.parent.exists():
                    raise WorkbenchError(f"the database folder {path.parent} does not exist; create it first")
            # timeout: wait for a concurrent writer (15 s by default) instead of failing at once.
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": busy_timeout_s})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        # Reads see one consistent snapshot (SQLite's WAL gives that per transaction; PostgreSQL's
        # default READ COMMITTED would not: a queue decision made from two queries could mix states).
        reads = (
            self.engine
            if self.engine.dialect.name == "sqlite"
            else self.engine.execution_options(isolation_level="REPEATABLE READ")
        )
        self._sessions = sessionmaker(reads, expire_on_commit=False)
        self._local_writer = threading.RLock() if self.engine.dialect.name == "sqlite" else nullcontext()
        self._writes = sessionmaker(self.engine.execution_options(rlhf_write=True), expire_on_commit=False)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden (safe for logs and manifests)."""
        return self.engine.url.render_as_string(hide_password=True)

    # -- sessions -------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (no commit)."""
        with self._sessions() as s:
            try:
                yield s
            except OperationalError as e:
                raise _db_error(e, self) from e

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: committed whole on success, rolled back whole on any error."""
        # SQLite has one write lock per file: writers of this process queue here, in order, instead
        # of polling for it with the busy handler's growing sleeps (long tail latencies under load).
        with self._local_writer, self._writes() as s:
            try:
                with s.begin():
                    yield s
            except OperationalError as e:
                raise _db_error(e, self) from e

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        try:
            if not inspect(self.engine).has_table("schema_version"):
                return None
            with self.session() as s:
                return s.scalar(select(func.max(SchemaVersion.version)))
        except OperationalError as e:
            raise _db_error(e, self) from e

    def init(self) -> int:
        """Create the tables, or upgrade an older schema in place (backing up a SQLite file first)."""
        version = self.schema_version()
        if version is None:
            with self.transaction() as s:
                Base.metadata.create_all(s.connection())
                s.add(SchemaVersion(version=SCHEMA_VERSION))
                for key, value in DEFAULT_SETTINGS.items():
                    s.add(Setting(key=key, value=value))
            return SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise WorkbenchError(
                f"the database {self.display_url} has schema version {version}, newer than this "
                f"workbench ({SCHEMA_VERSION}); upgrade rlhf-workbench"
            )
        if version < SCHEMA_VERSION:
            self._backup(version)
            with self.transaction() as s:
                for v in range(version, SCHEMA_VERSION):
                    MIGRATIONS[v](s)
                    s.add(SchemaVersion(version=v + 1))
        return SCHEMA_VERSION

    def _backup(self, version: int) -> None:
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, ":memory:"):
            src = Path(self.engine.url.database)
            with self.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
            shutil.copy2(src, src.with_suffix(f".v{version}.bak"))

    def require_ready(self) -> None:
        if self.schema_version() != SCHEMA_VERSION:
            raise WorkbenchError(f"the store {self.display_url} is not initialised; run `rlhf init`")

    # -- settings -------------------------------------------------------------------------

    def get_setting(self, key: str) -> Any:
        with self.session() as s:
            row = s.get(Setting, key)
            return row.value if row is not None else DEFAULT_SETTINGS.get(key)

    def set_setting(self, key: str, value: Any) -> None:
        if key == "overlap" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise WorkbenchError(f"`overlap` must be a whole number >= 1, got {value!r}")
        with self.transaction() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value))
            else:
                row.value = value

    # -- annotators -----------------------------------------------------------------------

    def add_annotator(self, name: str, role: str = "annotator") -> tuple[Annotator, str]:
        """Add an annotator; returns the row and the login token (shown once, stored hashed)."""
        name = (name or "").strip()
        problems = []
        if not name or len(name) > 100:
            problems.append("`name` must be 1-100 characters")
        if role not in ROLES:
            problems.append(f"`role` must be one of {', '.join(ROLES)}, got {role!r}")
        if problems:
            raise ValidationError("annotator", problems)
        token = secrets.token_urlsafe(24)
        try:
            with self.transaction() as s:
                a = Annotator(name=name, role=role, token_hash=hash_token(token))
                s.add(a)
        except IntegrityError as e:
            raise WorkbenchError(f"an annotator named {name!r} already exists; pick another name") from e
        return a, token

    def authenticate(self, token: str) -> Annotator | None:
        """The active annotator holding this token, or None."""
        if not token:
            return None
        digest = hash_token(token.strip())
        with self.session() as s:
            a = s.scalar(select(Annotator).where(Annotator.token_hash == digest))
        # Constant-time comparison of the digests, so timing does not leak a near miss.
        if a is None or not hmac.compare_digest(a.token_hash or "", digest) or not a.active:
            return None
        return a

    def rotate_token(self, annotator_id: int) -> str:
        token = secrets.token_urlsafe(24)
        with self.transaction() as s:
            a = self._annotator(s, annotator_id)
            a.token_hash = hash_token(token)
        return token

    def set_annotator_active(self, annotator_id: int, active: bool) -> None:
        with self.transaction() as s:
            self._annotator(s, annotator_id).active = active

    def list_annotators(self) -> list[Annotator]:
        with self.session() as s:
            return list(s.scalars(select(Annotator).order_by(Annotator.id)))

    def get_or_create_system_annotator(self, s: Session, name: str) -> Annotator:
        """An inactive, token-less annotator that owns imported labels (cannot log in)."""
        a = s.scalar(select(Annotator).where(Annotator.name == name))
        if a is None:
            a = Annotator(name=name, role="annotator", token_hash=None, active=False)
            s.add(a)
            s.flush()
        return a

    @staticmethod
    def _annotator(s: Session, annotator_id: int) -> Annotator:
        a = s.get(Annotator, annotator_id)
        if a is None:
            raise WorkbenchError(f"no annotator with id {annotator_id}; see `rlhf annotators list`")
        return a

    # -- prompts --------------------------------------------------------------------------

    def add_prompts(self, records: Sequence[PromptRecord]) -> tuple[int, int]:
        """Add prompts in one transaction; returns (added, already present). All or nothing."""
        problems = []
        for i, r in enumerate(records):
            if r.split is not None and r.split not in SPLITS:
                problems.append(f"record {i + 1}: `split` must be one of {SPLITS}, got {r.split!r}")
        if problems:
            raise ValidationError("prompts", problems)
        with self.transaction() as s:
            added, present = self._add_prompts(s, records)
        return len(added), present

    def _add_prompts(self, s: Session, records: Sequence[PromptRecord]) -> tuple[list[Prompt], int]:
        hashes = [content_hash(r.content) for r in records]
        existing = {
            h
            for chunk in _chunks(hashes, 500)
            for h in s.scalars(select(Prompt.content_hash).where(Prompt.content_hash.in_(chunk)))
        }
        added, seen = [], set()
        for r, h in zip(records, hashes):
            if h in existing or h in seen:
                continue
            seen.add(h)
            p = Prompt(
                content_hash=h,
                external_id=r.external_id,
                text=r.content if isinstance(r.content, str) else None,
                messages=r.content if not isinstance(r.content, str) else None,
                source=r.source,
                category=r.category,
                tags=list(r.tags),
                split=r.split,
            )
            s.add(p)
            added.append(p)
        s.flush()
        return added, len(records) - len(added)

    def prompt_by_hash(self, s: Session, content: str | list[dict[str, str]]) -> Prompt | None:
        return s.scalar(select(Prompt).where(Prompt.content_hash == content_hash(content)))

    # -- candidates -----------------------------------------------------------------------

    def add_candidates(
        self,
        prompt_id: int,
        completions: Sequence[CompletionRecord],
        required_labels: int | None = None,
        round: int = 0,
    ) -> tuple[int, int]:
        """Store K completions of one prompt and a comparison for each pair of distinct texts.

        Identical responses are not paired (there is nothing to prefer). Returns
        (completions stored, comparisons created)."""
        required = required_labels or int(self.get_setting("overlap"))
        with self.transaction() as s:
            if s.get(Prompt, prompt_id) is None:
                raise WorkbenchError(f"no prompt with id {prompt_id}")
            rows = [
                Completion(
                    prompt_id=prompt_id,
                    text=c.text,
                    model=c.model,
                    settings=dict(c.settings),
                    seed=c.seed,
                    num_tokens=c.num_tokens,
                    finish_reason=c.finish_reason,
                )
                for c in completions
            ]
            s.add_all(rows)
            s.flush()
            n_pairs = 0
            for i in range(len(rows)):
                for j in range(i + 1, len(rows)):
                    if rows[i].text.strip() == rows[j].text.strip():
                        continue
                    s.add(
                        Comparison(
                            prompt_id=prompt_id,
                            completion_a_id=rows[i].id,
                            completion_b_id=rows[j].id,
                            required_labels=required,
                            round=round,
                            source="generated",
                        )
                    )
                    n_pairs += 1
        return len(rows), n_pairs

    def prompts_without_candidates(
        self, model: str, limit: int | None = None, category: str | None = None, ids: Sequence[int] | None = None
    ) -> list[Prompt]:
        """Prompts with no completion from `model` yet (what `generate` still has to do); `ids`: only
        among these prompts."""
        done = select(Completion.prompt_id).where(Completion.model == model)
        q = select(Prompt).where(Prompt.id.not_in(done)).order_by(Prompt.id)
        if category:
            q = q.where(Prompt.category == category)
        if ids is not None:
            q = q.where(Prompt.id.in_(list(ids)))
        if limit:
            q = q.limit(limit)
        with self.session() as s:
            return list(s.scalars(q))

    # -- human evaluation (rlhf/human_eval.py) ----------------------------------------------

    def add_evaluation_pairs(
        self, pairs: Sequence[EvaluationPair], source: str, required_labels: int, prompt_source: str | None = None
    ) -> dict[str, int]:
        """One comparison per prompt (the reference's response against the tuned policy's), tagged
        `source`, in one transaction. Idempotent: a prompt that already holds a comparison with this
        `source` is passed over. Missing prompts are added (split "test": they are held out), and
        a completion already stored for the prompt with the same model and text is reused.

        Returns {"queued", "already_queued", "prompts_added"}."""
        problems = []
        if isinstance(required_labels, bool) or not isinstance(required_labels, int) or required_labels < 1:
            problems.append(f"`required_labels` must be a whole number >= 1, got {required_labels!r}")
        for i, pair in enumerate(pairs):
            if pair.policy_side not in ("A", "B"):
                problems.append(f"pair {i + 1}: `policy_side` must be 'A' or 'B', got {pair.policy_side!r}")
            if pair.reference.text.strip() == pair.policy.text.strip():
                problems.append(f"pair {i + 1}: the two responses are identical (nothing to prefer)")
        if problems:
            raise ValidationError("evaluation pairs", problems)
        with self.transaction() as s:
            records = [PromptRecord(pair.prompt, source=prompt_source, split="test") for pair in pairs]
            added, _ = self._add_prompts(s, records)
            hashes = [content_hash(pair.prompt) for pair in pairs]
            by_hash = {
                p.content_hash: p
                for chunk in _chunks(sorted(set(hashes)), 500)
                for p in s.scalars(select(Prompt).where(Prompt.content_hash.in_(chunk)))
            }
            done = set(s.scalars(select(Comparison.prompt_id).where(Comparison.source == source)))
            queued = already = 0
            for pair, h in zip(pairs, hashes):
                prompt = by_hash[h]
                if prompt.id in done:
                    already += 1
                    continue
                done.add(prompt.id)
                reference = self._evaluation_completion(s, prompt.id, pair.reference)
                policy = self._evaluation_completion(s, prompt.id, pair.policy)
                a, b = (policy, reference) if pair.policy_side == "A" else (reference, policy)
                s.add(
                    Comparison(
                        prompt_id=prompt.id,
                        completion_a_id=a.id,
                        completion_b_id=b.id,
                        required_labels=required_labels,
                        source=source,
                    )
                )
                queued += 1
        return {"queued": queued, "already_queued": already, "prompts_added": len(added)}

    @staticmethod
    def _evaluation_completion(s: Session, prompt_id: int, record: CompletionRecord) -> Completion:
        row = s.scalar(
            select(Completion)
            .where(Completion.prompt_id == prompt_id, Completion.model == record.model, Completion.text == record.text)
            .order_by(Completion.id)
            .limit(1)
        )
        if row is None:
            row = Completion(
                prompt_id=prompt_id,
                text=record.text,
                model=record.model,
                settings=dict(record.settings),
                seed=record.seed,
                num_tokens=record.num_tokens,
                finish_reason=record.finish_reason,
            )
            s.add(row)
            s.flush()
        return row

    def evaluation_labels(self, source: str, policy_model: str) -> list[EvaluationLabel]:
        """Every submitted label on the comparisons tagged `source`, with the stored letter (A or B)
        of the completion made by `policy_model` (discarded labels, i.e. undone ones, are left out)."""
        q = (
            select(Label.comparison_id, Label.annotator_id, Annotator.name, Label.choice, Completion.model)
            .join(Annotator, Annotator.id == Label.annotator_id)
            .join(Comparison, Comparison.id == Label.comparison_id)
            .join(Completion, Completion.id == Comparison.completion_a_id)
            .where(Comparison.source == source, Label.status == "submitted")
            .order_by(Label.comparison_id, Label.annotator_id)
        )
        with self.session() as s:
            return [
                EvaluationLabel(cid, aid, name, choice, "A" if model_a == policy_model else "B")
                for cid, aid, name, choice, model_a in s.execute(q)
            ]

    def comparison_counts(self, source: str) -> dict[str, int]:
        """{"comparisons", "pending", "completed"} among the comparisons tagged `source`."""
        q = select(Comparison.status, func.count()).where(Comparison.source == source).group_by(Comparison.status)
        with self.session() as s:
            by_status = {status: int(n) for status, n in s.execute(q)}
        return {
            "comparisons": sum(by_status.values()),
            "pending": by_status.get("pending", 0),
            "completed": by_status.get("completed", 0),
        }

    # -- labels ---------------------------------------------------------------------------

    def save_label(
        self,
        comparison_id: int,
        annotator_id: int,
        choice: str,
        strength: int | None = None,
        rationale: str | None = None,
        time_spent_s: float | None = None,
        shown_left: str | None = None,
    ) -> Label:
        """Record one annotator's judgement of one comparison (one transaction).

        A choice of A/B may carry a strength 0-3; tie and both_bad carry none. Relabelling after
        an undo reuses the discarded row, so the (comparison, annotator) pair stays unique."""
        problems = []
        if choice not in CHOICES:
            problems.append(f"`choice` must be one of {', '.join(CHOICES)}, got {choice!r}")
        if strength is not None:
            if choice in ("tie", "both_bad"):
                problems.append(f"`strength` is only for A/B choices, not {choice!r}")
            elif not isinstance(strength, int) or isinstance(strength, bool) or not 0 <= strength <= 3:
                problems.append(f"`strength` must be 0, 1, 2 or 3, got {strength!r}")
        if shown_left not in (None, "A", "B"):
            problems.append(f"`shown_left` must be 'A' or 'B', got {shown_left!r}")
        if time_spent_s is not None and not time_spent_s >= 0:
            problems.append(f"`time_spent_s` must be >= 0, got {time_spent_s!r}")
        if problems:
            raise ValidationError("label", problems)
        with self.transaction() as s:
            a = self._annotator(s, annotator_id)
            if not a.active:
                raise WorkbenchError(f"annotator {a.name!r} is deactivated and cannot label")
            comp = s.get(Comparison, comparison_id, with_for_update=True)
            if comp is None:
                raise WorkbenchError(f"no comparison with id {comparison_id}")
            label = s.scalar(
                select(Label).where(Label.comparison_id == comparison_id, Label.annotator_id == annotator_id)
            )
            if label is not None and label.status == "submitted":
                raise WorkbenchError(f"annotator {a.name!r} already labelled comparison {comparison_id}")
            if label is None:
                label = Label(comparison_id=comparison_id, annotator_id=annotator_id)
                s.add(label)
            label.choice, label.strength, label.rationale = choice, strength, (rationale or None)
            label.time_spent_s, label.shown_left, label.status = time_spent_s, shown_left, "submitted"
            s.flush()
            self._refresh_status(s, comp)
        return label

    def discard_label(self, label_id: int, annotator_id: int) -> None:
        """Undo: mark the annotator's own label discarded; the comparison returns to the queue."""
        with self.transaction() as s:
            label = s.get(Label, label_id)
            if label is None or label.annotator_id != annotator_id:
                raise WorkbenchError(f"label {label_id} is not one of your labels")
            label.status = "discarded"
            s.flush()
            self._refresh_status(s, s.get(Comparison, label.comparison_id))

    @staticmethod
    def _refresh_status(s: Session, comp: Comparison) -> None:
        n = s.scalar(
            select(func.count()).select_from(Label).where(Label.comparison_id == comp.id, Label.status == "submitted")
        )
        comp.status = "completed" if n >= comp.required_labels else "pending"

    # -- overview -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts per table and state (what `rlhf status` prints)."""
        with self.session() as s:

            def n(q: Any) -> int:
                return int(s.scalar(q) or 0)

            return {
                "prompts": n(select(func.count()).select_from(Prompt)),
                "completions": n(select(func.count()).select_from(Completion)),
                "comparisons": n(select(func.count()).select_from(Comparison)),
                "comparisons_pending": n(
                    select(func.count()).select_from(Comparison).where(Comparison.status == "pending")
                ),
                "comparisons_completed": n(
                    select(func.count()).select_from(Comparison).where(Comparison.status == "completed")
                ),
                "labels_submitted": n(select(func.count()).select_from(Label).where(Label.status == "submitted")),
                "labels_discarded": n(select(func.count()).select_from(Label).where(Label.status == "discarded")),
                "annotators": n(select(func.count()).select_from(Annotator).where(Annotator.active)),
            }

    def ping(self) -> None:
        with self.session() as s:
            s.execute(text("SELECT 1"))

    # -- queue (labeling app; rules in the "Queue" notes at the end of this file) -----------

    def next_comparison(
        self, annotator_id: int, exclude: Sequence[int] = (), lease_s: float | None = None
    ) -> Comparison | None:
        """The next comparison for this annotator (prompt and both completions loaded), or None.

        `exclude`: comparison ids to pass over (the ones skipped this session). The returned item is
        leased to the annotator for `lease_s` seconds (default `LEASE_S`); asking again moves the
        lease (back to the same item while it is still the best candidate, e.g. after a reload)."""
        leases = _store_leases(self)
        n = func.coalesce(_n_submitted.c.n, 0)
        with leases.lock, self.session() as s:
            now = time.monotonic()
            held = leases.held_by_others(annotator_id, now)
            q = (
                select(Comparison.id, Comparison.required_labels, n)
                .outerjoin(_n_submitted, _n_submitted.c.comparison_id == Comparison.id)
                .where(Comparison.status == "pending", Comparison.id.not_in(_labelled_by(annotator_id)))
                .order_by(n, Comparison.id)
                # Every row passed over is leased by someone else: this many rows always suffice.
                .limit(len(held) + 1)
            )
            if exclude:
                q = q.where(Comparison.id.not_in(list(exclude)))
            rows = s.execute(q).all()
            in_flight = _in_flight(s, held, [cid for cid, _, _ in rows if cid in held])
            chosen = next((cid for cid, req, done in rows if done + in_flight.get(cid, 0) < req), None)
            if chosen is None:
                leases.by_annotator.pop(annotator_id, None)
                return None
            leases.by_annotator[annotator_id] = (chosen, now + (LEASE_S if lease_s is None else lease_s))
            return s.get(Comparison, chosen, options=_comparison_loader())

    def release_comparison(self, annotator_id: int) -> None:
        """Give back the annotator's lease (on logout), so others can take the item at once."""
        leases = _store_leases(self)
        with leases.lock:
            leases.by_annotator.pop(annotator_id, None)

    def get_comparison(self, comparison_id: int) -> Comparison | None:
        """One comparison with its prompt, both completions and its labels (with annotators) loaded."""
        with self.session() as s:
            return s.get(
                Comparison,
                comparison_id,
                options=[*_comparison_loader(), selectinload(Comparison.labels).joinedload(Label.annotator)],
            )

    def get_annotator(self, annotator_id: int) -> Annotator | None:
        with self.session() as s:
            return s.get(Annotator, annotator_id)

    def get_label(self, label_id: int) -> Label | None:
        with self.session() as s:
            return s.get(Label, label_id)

    def last_label(self, annotator_id: int) -> Label | None:
        """The annotator's most recent submitted label (what "undo last" discards)."""
        with self.session() as s:
            return s.scalar(
                select(Label)
                .where(*_submitted_by(annotator_id))
                .order_by(Label.created_at.desc(), Label.id.desc())
                .limit(1)
            )

    def annotator_progress(self, annotator_id: int) -> QueueProgress:
        """Labels done today (since local midnight) and in total, and how many items are left."""
        midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        mine = _submitted_by(annotator_id)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(Label).where(*mine))
            today = s.scalar(
                select(func.count())
                .select_from(Label)
                .where(*mine, Label.created_at >= midnight.astimezone(timezone.utc))
            )
            remaining = s.scalar(
                select(func.count())
                .select_from(Comparison)
                .where(Comparison.status == "pending", Comparison.id.not_in(_labelled_by(annotator_id)))
            )
        return QueueProgress(int(today or 0), int(total or 0), int(remaining or 0))

    def label_rows(self, min_labels: int = 1) -> list[LabelRow]:
        """Every submitted label with its annotator's name and prompt category (for agreement).

        `min_labels`: keep only comparisons with at least this many submitted labels (2: overlapped)."""
        q = (
            select(
                Label.id,
                Label.comparison_id,
                Label.annotator_id,
                Annotator.name,
                Label.choice,
                Label.strength,
                Label.shown_left,
                Label.time_spent_s,
                Prompt.category,
                Label.created_at,
            )
            .join(Annotator, Annotator.id == Label.annotator_id)
            .join(Comparison, Comparison.id == Label.comparison_id)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .where(Label.status == "submitted")
            .order_by(Label.comparison_id, Label.annotator_id)
        )
        if min_labels > 1:
            overlapped = select(_n_submitted.c.comparison_id).where(_n_submitted.c.n >= min_labels)
            q = q.where(Label.comparison_id.in_(overlapped))
        with self.session() as s:
            return [LabelRow(*row) for row in s.execute(q)]

    def list_comparisons(self, filters: ComparisonFilter | None = None) -> list[dict[str, Any]]:
        """One row per comparison, for browsing: prompt excerpt, category, round, status, label count."""
        f = filters or ComparisonFilter()
        q = (
            select(
                Comparison.id,
                Prompt.id,
                Prompt.text,
                Prompt.messages,
                Prompt.category,
                Comparison.round,
                Comparison.status,
                func.coalesce(_n_submitted.c.n, 0),
                Comparison.required_labels,
                Comparison.source,
            )
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .outerjoin(_n_submitted, _n_submitted.c.comparison_id == Comparison.id)
            .order_by(Comparison.id)
            .limit(f.limit)
            .offset(f.offset)
        )
        if f.status:
            q = q.where(Comparison.status == f.status)
        if f.category:
            q = q.where(Prompt.category == f.category)
        if f.round is not None:
            q = q.where(Comparison.round == f.round)
        if f.annotator_id is not None:
            labelled = select(Label.comparison_id).where(Label.annotator_id == f.annotator_id)
            q = q.where(Comparison.id.in_(labelled))
        if f.search:
            q = q.where(Prompt.text.contains(f.search, autoescape=True))
        with self.session() as s:
            rows = s.execute(q).all()
        out = []
        for cid, pid, ptext, messages, category, rnd, status, n, required, source in rows:
            if ptext is None:
                ptext = " / ".join(str(m.get("content", "")) for m in messages or [] if isinstance(m, dict))
            out.append(
                {
                    "comparison": cid,
                    "prompt_id": pid,
                    "prompt": ptext[:200],
                    "category": category,
                    "round": rnd,
                    "status": status,
                    "labels": int(n),
                    "required": required,
                    "source": source,
                }
            )
        return out

    def list_labels(
        self,
        annotator_id: int | None = None,
        comparison_id: int | None = None,
        status: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Labels, newest first, with annotator names (for the data page; admins only)."""
        q = (
            select(Label, Annotator.name)
            .join(Annotator, Annotator.id == Label.annotator_id)
            .order_by(Label.created_at.desc(), Label.id.desc())
            .limit(limit)
        )
        if annotator_id is not None:
            q = q.where(Label.annotator_id == annotator_id)
        if comparison_id is not None:
            q = q.where(Label.comparison_id == comparison_id)
        if status:
            q = q.where(Label.status == status)
        with self.session() as s:
            return [
                {
                    "label": lab.id,
                    "comparison": lab.comparison_id,
                    "annotator": name,
                    "choice": lab.choice,
                    "strength": lab.strength,
                    "shown_left": lab.shown_left,
                    "time_s": lab.time_spent_s,
                    "status": lab.status,
                    "rationale": lab.rationale,
                    "created": lab.created_at,
                }
                for lab, name in s.execute(q)
            ]

    def categories(self) -> list[str]:
        with self.session() as s:
            return [c for c in s.scalars(select(Prompt.category).distinct().order_by(Prompt.category)) if c]

    def rounds(self) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(Comparison.round).distinct().order_by(Comparison.round)))


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _db_error(e: OperationalError, store: Store) -> WorkbenchError:
    msg = str(e.orig) if e.orig is not None else str(e)
    hint = ""
    if "locked" in msg:
        hint = " Another process holds a write lock for too long; retry, or stop the other writer."
    elif "readonly" in msg or "read-only" in msg:
        hint = " The data home is read-only; set RLHF_HOME to a writable folder."
    elif "disk" in msg and "full" in msg:
        hint = " The disk is full; free space and retry (nothing was written)."
    elif "unable to open" in msg:
        hint = " Check that the data home exists and is writable (run `rlhf init`)."
    return WorkbenchError(f"database error on {store.display_url}: {msg}.{hint}")


# ==========================================================================================
# Queue: what each annotator labels next (the Store methods under "-- queue" above use these).
#
# Rules, in one place:
#   1. An annotator never gets a comparison they hold a submitted label on (after an undo the
#      discarded label no longer counts, so that comparison comes back to them).
#   2. Only `pending` comparisons are offered: one leaves every queue as soon as it has
#      `required_labels` submitted labels (`_refresh_status` runs inside `save_label`).
#   3. Order: fewest submitted labels first (spread coverage), then oldest id.
#   4. In flight: `next_comparison` leases the item it hands out (one lease per annotator, for
#      `LEASE_S` seconds). An item is offered only while
#          submitted labels + other annotators' live, not yet submitted leases < required labels,
#      so annotators working at once through one Store (the app shares one per process) never
#      over-label. Leases live in memory: across processes (two app servers, the CLI), or when a
#      lease expired (an item left open longer than `LEASE_S`), a late submit is still accepted —
#      a label is paid work and is kept — so a comparison exceeds its requirement only by such
#      late submits. The unique (comparison, annotator) constraint rules out doubles in any case.
# ==========================================================================================

LEASE_S = 600.0

# Submitted labels per comparison (a subquery the queue joins against).
_n_submitted = (
    select(Label.comparison_id, func.count().label("n"))
    .where(Label.status == "submitted")
    .group_by(Label.comparison_id)
    .subquery()
)


@dataclass
class QueueProgress:
    done_today: int  # labels this annotator submitted since local midnight
    done_total: int
    remaining: int  # pending comparisons this annotator has not labelled (others may finish some)


@dataclass
class LabelRow:
    """One submitted label, flattened for agreement and per-annotator statistics."""

    label_id: int
    comparison_id: int
    annotator_id: int
    annotator: str
    choice: str
    strength: int | None
    shown_left: str | None
    time_spent_s: float | None
    category: str | None
    created_at: datetime


@dataclass
class ComparisonFilter:
    status: str | None = None  # "pending" | "completed"
    category: str | None = None
    round: int | None = None
    annotator_id: int | None = None  # only comparisons this annotator labelled (any status)
    search: str | None = None  # substring of the prompt text
    limit: int = 200
    offset: int = 0


def shown_left_for(annotator_id: int, comparison_id: int) -> str:
    """Which completion ("A" or "B") this annotator sees on the left: random across (annotator,
    comparison) pairs, but the same on every visit, so a reload never swaps the sides."""
    digest = hashlib.sha256(f"{annotator_id}:{comparison_id}".encode()).digest()
    return "A" if digest[0] % 2 == 0 else "B"


class _Leases:
    """In-memory leases, annotator_id -> (comparison_id, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_annotator: dict[int, tuple[int, float]] = {}

    def held_by_others(self, annotator_id: int, now: float) -> dict[int, set[int]]:
        """comparison_id -> the other annotators holding a live lease on it (expired ones dropped)."""
        held: dict[int, set[int]] = {}
        for aid, (cid, expiry) in list(self.by_annotator.items()):
            if expiry <= now:
                del self.by_annotator[aid]
            elif aid != annotator_id:
                held.setdefault(cid, set()).add(aid)
        return held


def _store_leases(store: Store) -> _Leases:
    # Created on first use; dict.setdefault is atomic, so concurrent threads share one object.
    return store.__dict__.setdefault("_queue_leases", _Leases())


def _submitted_by(annotator_id: int) -> tuple[Any, Any]:
    return Label.annotator_id == annotator_id, Label.status == "submitted"


def _labelled_by(annotator_id: int) -> Any:
    return select(Label.comparison_id).where(*_submitted_by(annotator_id))


def _in_flight(s: Session, held: dict[int, set[int]], comparison_ids: list[int]) -> dict[int, int]:
    """Live leases per comparison, not counting holders who already submitted (they count as labels)."""
    if not comparison_ids:
        return {}
    done = set(
        s.execute(
            select(Label.comparison_id, Label.annotator_id).where(
                Label.comparison_id.in_(comparison_ids), Label.status == "submitted"
            )
        ).tuples()
    )
    return {cid: sum((cid, aid) not in done for aid in held[cid]) for cid in comparison_ids}


def _comparison_loader() -> list[Any]:
    return [
        joinedload(Comparison.prompt),
        joinedload(Comparison.completion_a),
        joinedload(Comparison.completion_b),
    ]
