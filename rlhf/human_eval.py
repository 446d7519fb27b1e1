"""Human evaluation of a tuned policy: people judge the PPO run's responses against the reference's.

The number RLHF papers report (InstructGPT, Llama 2) is the tuned policy's win rate *by people*, not
by the reward model it was trained on. `queue_human_evaluation` takes a finished PPO run's
`report.json` (the reference's and the tuned policy's responses on the run's held-out prompts) and
puts one comparison per prompt into the annotators' normal queue:

- the two responses are stored as completions with the models `reference:<policy folder name>` and
  `ppo:<run id>` (the run id is the run folder's name); annotators never see model names;
- the policy's response is on stored side A or B at random: seeded, decided per prompt (the same
  prompt gets the same side whatever `limit` or order), recorded by which completion is A;
  the labeling page randomises the screen side again per annotator;
- the comparison's `source` is `evaluation:<run id>`: `rlhf.io.export_preferences` leaves these
  comparisons out, so an evaluation never becomes training data (the agreement statistics do count
  them: they are real labels);
- pairs whose two responses are identical are skipped (nothing to prefer), and counted.

`human_evaluation_results` turns the submitted labels into the policy's win rate with ties counting
half ("tie" and "both bad" are each half a win), as `rlhf.stats.win_rate`: value, n (labels),
95% Wilson interval, wins/ties/losses; overall and per annotator, with how many comparisons still
wait for labels. Discarded (undone) labels do not count, and a skip writes no label at all.

All SQL is in `rlhf.store.Store`; this module never imports streamlit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.runs import read_json
from rlhf.stats import win_rate
from rlhf.store import CompletionRecord, EvaluationPair, Store, content_hash

SOURCE_PREFIX = "evaluation:"
TIES_NOTE = "ties count half: a 'tie' or 'both bad' label is half a win for the tuned policy"


def evaluation_source(run_id: str) -> str:
    """The `source` of a run's evaluation comparisons."""
    return f"{SOURCE_PREFIX}{run_id}"


def policy_model(run_id: str) -> str:
    """The model label of the tuned policy's completions."""
    return f"ppo:{run_id}"


def reference_model(policy_path: str | Path) -> str:
    """The model label of the reference's completions: `reference:<policy folder name>`."""
    return f"reference:{Path(str(policy_path)).name}"


def policy_side(prompt: str | list[dict[str, str]], run_id: str, seed: int = 0) -> str:
    """The stored letter ("A" or "B") of the tuned policy's response for this prompt: uniform at
    random over prompts, fixed by (seed, run id, prompt)."""
    digest = hashlib.sha256(f"{seed}:{run_id}:{content_hash(prompt)}".encode()).digest()
    return "A" if digest[0] % 2 == 0 else "B"


def queue_human_evaluation(
    store: Store,
    ppo_run_dir: str | Path,
    limit: int | None = None,
    required_labels: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Queue the run's held-out pairs for people to judge (see the module doc). Idempotent.

    `limit`: only the report's first `limit` pairs. `required_labels`: labels each comparison needs
    before it leaves the queues. Returns counts: pairs (in the report), considered (after `limit`),
    identical_skipped, queued, already_queued, prompts_added, with run_id, source and
    required_labels."""
    run_dir = Path(ppo_run_dir)
    problems = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"`limit` must be a whole number >= 1 or None, got {limit!r}")
    if isinstance(required_labels, bool) or not isinstance(required_labels, int) or required_labels < 1:
        problems.append(f"`required_labels` must be a whole number >= 1, got {required_labels!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"`seed` must be a whole number, got {seed!r}")
    if problems:
        raise ValidationError("human evaluation", problems)
    store.require_ready()
    report, config = _read(run_dir, "report.json"), _read(run_dir, "config.json")
    pairs = report.get("pairs")
    if not isinstance(pairs, list) or not pairs:
        raise WorkbenchError(
            f"{run_dir / 'report.json'} holds no held-out pairs to evaluate (the run had eval_prompts = 0?)"
        )
    policy_path = config.get("policy_path") or (config.get("options") or {}).get("policy")
    if not policy_path:
        raise WorkbenchError(f"{run_dir / 'config.json'} names no policy (`policy_path`)")
    run_id = run_dir.resolve().name
    source, ref_model, pol_model = evaluation_source(run_id), reference_model(policy_path), policy_model(run_id)

    considered = pairs[:limit] if limit is not None else pairs
    records, identical, bad = [], 0, []
    for i, p in enumerate(considered):
        texts = [p.get(k) if isinstance(p, dict) else None for k in ("prompt", "reference", "policy")]
        if not all(isinstance(t, str) for t in texts) or not texts[0].strip():
            bad.append(f"pair {i + 1}: needs text `prompt`, `reference` and `policy`")
            continue
        prompt, ref_text, pol_text = texts
        if ref_text.strip() == pol_text.strip():
            identical += 1
            continue
        settings = {"run": run_id, "step": report.get("step"), "from": "report.json"}
        records.append(
            EvaluationPair(
                prompt=prompt,
                reference=CompletionRecord(ref_text, ref_model, settings, num_tokens=_int(p.get("length_reference"))),
                policy=CompletionRecord(pol_text, pol_model, settings, num_tokens=_int(p.get("length_policy"))),
                policy_side=policy_side(prompt, run_id, seed),
            )
        )
    if bad:
        raise ValidationError(str(run_dir / "report.json"), bad)
    counts = (
        store.add_evaluation_pairs(records, source, required_labels, prompt_source=source)
        if records
        else {"queued": 0, "already_queued": 0, "prompts_added": 0}
    )
    return {
        "run_id": run_id,
        "source": source,
        "required_labels": required_labels,
        "pairs": len(pairs),
        "considered": len(considered),
        "identical_skipped": identical,
        **counts,
    }


def human_evaluation_results(store: Store, run_id: str) -> dict[str, Any]:
    """The tuned policy's win rate by people over the submitted labels of the run's evaluation
    comparisons (ties count half; n = labels), overall and per annotator, and the queue's state.

    Returns {run_id, source, win_rate: stats.win_rate(...), by_annotator: {name: win_rate}, labels,
    both_bad (labels saying both bad, inside `ties`), comparisons, pending, completed,
    ties_count_half: True, note}."""
    run_id = Path(str(run_id)).name
    source = evaluation_source(run_id)
    rows = store.evaluation_labels(source, policy_model(run_id))
    overall: list[float] = []
    by_annotator: dict[str, list[float]] = {}
    for r in rows:
        outcome = 1.0 if r.choice == r.policy_side else 0.5 if r.choice in ("tie", "both_bad") else 0.0
        overall.append(outcome)
        by_annotator.setdefault(r.annotator, []).append(outcome)
    return {
        "run_id": run_id,
        "source": source,
        "win_rate": win_rate(overall),
        "by_annotator": {name: win_rate(o) for name, o in sorted(by_annotator.items())},
        "labels": len(rows),
        "both_bad": sum(r.choice == "both_bad" for r in rows),
        **store.comparison_counts(source),
        "ties_count_half": True,
        "note": TIES_NOTE,
    }


def _read(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    if not path.exists():
        raise WorkbenchError(f"{path} does not exist: human evaluation needs a finished PPO run with held-out prompts")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"{path} is not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path} is not a JSON object")
    return data


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
