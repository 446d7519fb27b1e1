"""The data home: one folder holding the database, the model cache, exports and runs.

Default `./rlhf-data`, or the `RLHF_HOME` environment variable. It is git-ignored.

    rlhf-data/
      rlhf.db            SQLite store (WAL mode); RLHF_DB_URL points elsewhere (PostgreSQL)
      models/<name>/     prepared models (safetensors + tokenizer), e.g. models/smollm2-135m-instruct
      exports/<name>/    preference datasets written by `rlhf export` (datasets.save_to_disk + manifest)
      runs/reward/<id>/  reward-model runs;  runs/ppo/<id>/  PPO runs
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhf.errors import WorkbenchError


def data_home() -> Path:
    """The data home folder (not created)."""
    return Path(os.environ.get("RLHF_HOME", "rlhf-data")).expanduser().resolve()


def ensure_home() -> Path:
    """Create the data home and its sub-folders; a clear error when it cannot be written."""
    home = data_home()
    try:
        for sub in ("models", "exports", "runs/reward", "runs/ppo"):
            (home / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(
            f"cannot create the data home {home}: {e.strerror}. Set RLHF_HOME to a folder you can write to."
        ) from e
    return home


def inside_home(path: Path, home: Path | None = None) -> Path:
    """Resolve `path` relative to the data home and refuse anything that escapes it."""
    home = (home or data_home()).resolve()
    p = (home / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if p != home and home not in p.parents:
        raise WorkbenchError(f"path {path} is outside the data home {home}; use a path inside it")
    return p
