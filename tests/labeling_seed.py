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
        PromptRecord(f"Prompt number {i}: explain topic {i} in **two** sentences.", category=("advice", "code")[i % 2])
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
        store.add_candidates(pid, [CompletionRecord(t, "test-model") for t in texts], required_labels=required)
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


def label_round(store: Store, number: int, annotator: str, rule: str = "complete_then_longer") -> int:
    """Label every comparison of round `number` as a person following a simulated rule
    (rlhf/annotators.py) would, without noise. The default is the length rule: the tiny random
    model's text holds no lists, so a content rule would call every pair a tie."""
    from rlhf.annotators import get_rule
    from rlhf.pipeline import _prompt_str, _round_comparisons

    ann = next((a for a in store.list_annotators() if a.name == annotator), None)
    ann = ann or store.add_annotator(annotator)[0]
    comps = _round_comparisons(store, number)
    for c in comps:
        choice, strength = get_rule(rule).verdict(
            _prompt_str(c.prompt.content),
            (c.completion_a.text, c.completion_a.finish_reason),
            (c.completion_b.text, c.completion_b.finish_reason),
        )
        store.save_label(c.id, ann.id, choice, strength=strength if choice in ("A", "B") else None)
    return len(comps)


def seed_round_zero(store: Store, home: Path, tiny_model_dir: Path) -> int:
    """The data home's store as the app leaves it after a first round: the 160 demo prompts, round-0
    candidates from the tiny model for the first 24, each labeled by `alice`. Returns the labels."""
    import shutil

    from rlhf.generate import GenerationSettings, generate_candidates
    from rlhf.io import import_prompts
    from rlhf.pipeline import DEMO_PROMPTS

    shutil.copytree(tiny_model_dir, home / "models" / "tiny")
    import_prompts(store, DEMO_PROMPTS)
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, batch_size=8)
    generate_candidates(store, model="tiny", settings=settings, limit=24, required_labels=1)
    return label_round(store, 0, "alice")
