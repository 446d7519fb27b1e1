"""The preference store's tables (SQLAlchemy 2 declarative models) and its schema version.

Rows: annotators label comparisons; a comparison pairs two completions of one prompt. Every
timestamp is stored in UTC. The database enforces one label per (comparison, annotator) and the
allowed values of every enumerated column, so a buggy caller cannot write an impossible row.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bump when the tables change, and add a step to `store.MIGRATIONS` that upgrades the previous
# version in place (labels are paid human work: an upgrade must never drop them).
SCHEMA_VERSION = 1

ROLES = ("annotator", "admin")
CHOICES = ("A", "B", "tie", "both_bad")
# Llama 2's preference strength scale; the index is the stored `strength`.
STRENGTHS = ("negligibly better", "slightly better", "better", "significantly better")
LABEL_STATUSES = ("submitted", "discarded")
COMPARISON_STATUSES = ("pending", "completed")
SPLITS = ("train", "test")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC (SQLite has no time zones; PostgreSQL gets timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(timezone.utc)")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)


class Setting(Base):
    """Key/value project settings (guidelines Markdown, default overlap, ...)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="ck_annotator_role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    # sha256 of the login token; the token itself is shown once and never stored.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    labels: Mapped[list[Label]] = relationship(back_populates="annotator")


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint("(text IS NULL) <> (messages IS NULL)", name="ck_prompt_text_or_messages"),
        CheckConstraint(f"split IS NULL OR {_in('split', SPLITS)}", name="ck_prompt_split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of the canonical prompt content: the same prompt is stored once.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), index=True)
    text: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))  # [{"role": ..., "content": ...}, ...]
    source: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(100), index=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    split: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    completions: Mapped[list[Completion]] = relationship(back_populates="prompt")

    @property
    def content(self) -> str | list[dict[str, str]]:
        """The prompt as given: plain text, or a list of chat messages."""
        return self.messages if self.messages is not None else self.text


class Completion(Base):
    __tablename__ = "completions"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(300))
    # The exact sampling settings (do_sample, temperature, top_k, top_p, max_new_tokens, ...).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    num_tokens: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(20))  # "eos" | "length" | None (imported)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship(back_populates="completions")


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("completion_a_id", "completion_b_id", name="uq_comparison_pair"),
        CheckConstraint("completion_a_id <> completion_b_id", name="ck_comparison_distinct"),
        CheckConstraint(_in("status", COMPARISON_STATUSES), name="ck_comparison_status"),
        CheckConstraint("required_labels >= 1", name="ck_comparison_required"),
        Index("ix_comparison_status", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    completion_a_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="CASCADE"))
    completion_b_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    required_labels: Mapped[int] = mapped_column(Integer, default=1)
    round: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str | None] = mapped_column(String(200))  # "generated" | "imported:<file>"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    completion_a: Mapped[Completion] = relationship(foreign_keys=[completion_a_id])
    completion_b: Mapped[Completion] = relationship(foreign_keys=[completion_b_id])
    labels: Mapped[list[Label]] = relationship(back_populates="comparison")


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", name="uq_label_comparison_annotator"),
        CheckConstraint(_in("choice", CHOICES), name="ck_label_choice"),
        CheckConstraint("strength IS NULL OR (strength >= 0 AND strength <= 3)", name="ck_label_strength"),
        CheckConstraint(_in("status", LABEL_STATUSES), name="ck_label_status"),
        CheckConstraint("shown_left IS NULL OR shown_left IN ('A', 'B')", name="ck_label_shown_left"),
        CheckConstraint("time_spent_s IS NULL OR time_spent_s >= 0", name="ck_label_time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(10))
    # 0..3 on Llama 2's scale (see STRENGTHS); NULL for tie / both_bad or when unknown.
    strength: Mapped[int | None] = mapped_column(Integer)
    rationale: Mapped[str | None] = mapped_column(Text)
    time_spent_s: Mapped[float | None] = mapped_column(Float)
    # Which completion (A or B) the annotator saw on the left: position bias is measurable.
    shown_left: Mapped[str | None] = mapped_column(String(1))
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    comparison: Mapped[Comparison] = relationship(back_populates="labels")
    annotator: Mapped[Annotator] = relationship(back_populates="labels")
