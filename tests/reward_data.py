"""An easy synthetic preference task for reward tests: chosen responses carry a marker phrase."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = ["the sky", "rain", "autumn", "a dog", "the world", "users", "numbers", "a fox", "the system", "hello"]
FILLER = ["is good", "answers clearly", "can help", "is blue", "jumps over", "explains why", "is better", "is here"]


def write_marker_preferences(path: Path, n: int = 80, seed: int = 0) -> Path:
    """TRL-format JSONL: the chosen response contains "thank you", the rejected one does not;
    lengths vary so that chosen is sometimes the shorter and sometimes the longer response."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rnd.choice(TOPICS)
        body = " ".join(rnd.choice(FILLER) for _ in range(rnd.randint(1, 6)))
        other = " ".join(rnd.choice(FILLER) for _ in range(rnd.randint(1, 6)))
        rows.append(
            {
                "prompt": f"Question {i}: tell me about {topic}.",
                "chosen": f"{topic} {body}, thank you.",
                "rejected": f"{topic} {other}, no.",
                "margin": rnd.choice([0, 1, 2, 3]),
                "category": rnd.choice(["advice", "explanation"]),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def marker_export(store, tmp_path: Path, n: int = 80, test_fraction: float = 0.25) -> Path:
    from rlhf.io import ExportOptions, export_preferences, import_preferences

    import_preferences(store, write_marker_preferences(tmp_path / "prefs.jsonl", n))
    out = tmp_path / "export"
    export_preferences(store, out, ExportOptions(test_fraction=test_fraction))
    return out
