"""Helpers for labeling tests (queue, AppTest, browser): seed a store through its public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.store import CompletionRecord, PromptRecord, Store

APP = Path(__file__).resolve().parents[1] / "labeling_ui" / "streamlit_app.py"
XSS_PROMPT = "Say hi <script>alert(1)</script> and <img src=x onerror=alert(1)> please"
XSS_RESPONSE = "Sure: <img src=x onerror=alert(2)> <b>bold?</b> <script>alert(3)</script>"


@dataclass
class Seeded:
    admin_id: int
    admin_token: str
    annotator_ids: list[int]
    annotator_tokens: list[str]
    comparison_ids: list[int] = field(default_factory=list)


def seed_labeling(
    store: Store, n_prompts: int = 4, required: int = 1, n_annotators: int = 1, xss: bool = False
) -> Seeded:
    """`n_prompts` prompts (one of them chat messages) with two candidates each -> one comparison each."""
    records = [
        PromptRecord(
            f"Prompt number {i}: explain topic {i} in **two** sentences.", category=("advice", "code")[i % 2]
        )
        for i in range(n_prompts)
    ]
    if n_prompts >= 2:
        records[1] = PromptRecord(
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Chat prompt: what is RLHF?"},
            ],
            category="code",
        )
    if xss:
        records[0] = PromptRecord(XSS_PROMPT, category="safety")
    store.add_prompts(records)
    with store.session() as s:
        from sqlalchemy import select

        from rlhf.schema import Prompt

        prompt_ids = list(s.scalars(select(Prompt.id).order_by(Prompt.id)))
    for i, pid in enumerate(prompt_ids):
        texts = [
            f"Response one for prompt {i}, with a list:\n\n- item\n- item",
            f"Response two for prompt {i}.",
        ]
        if xss and i == 0:
            texts[0] = XSS_RESPONSE
        store.add_candidates(
            pid, [CompletionRecord(t, "test-model") for t in texts], required_labels=required
        )
    admin, admin_token = store.add_annotator("admin", role="admin")
    ids, tokens = [], []
    for i in range(n_annotators):
        a, t = store.add_annotator(f"annotator{i + 1}")
        ids.append(a.id)
        tokens.append(t)
    seeded = Seeded(admin.id, admin_token, ids, tokens)
    seeded.comparison_ids = [r["comparison"] for r in store.list_comparisons()]
    return seeded


def texts(at: Any) -> str:
    """Every text-like element on the page, joined (for "is this shown" checks)."""
    parts = []
    for kind in (
        "markdown",
        "caption",
        "title",
        "subheader",
        "header",
        "error",
        "warning",
        "info",
        "success",
        "code",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)
