"""Learning benchmark: does the loop learn what the labels say?

For each simulated-annotator rule (default: every content rule of `rlhf.annotators.CONTENT_RULES`:
uses_list, addresses_reader, gives_numbers) this runs the REAL stages of one pipeline round on the
model (`rlhf.pipeline.run_pipeline` on a YAML generated from `--config` with `annotator.rule`,
`annotator.noise`, the model and the `--set` overrides), each rule in its own data home
(`<work>/<rule>/`, RLHF_HOME switched per rule, the model resolved once in the caller's home):

    candidates -> labels by the rule (a share `--noise` of decisive verdicts flipped) -> export
    -> reward model -> PPO (force=True: it runs even when the reward model showed no learning, and
    this benchmark reports that) -> evaluation on held-out prompts never labelled nor trained on

and reads the stage outputs (round-0/<n>-<stage>/stage.json, the reward run's summary.json and
eval_report.json, the PPO run's report.json / summary.json, the evaluate stage's results). Per rule:
labels used and held-out pairs; the reward model's held-out accuracy (95% Wilson interval), its
untrained accuracy and the learning verdict; its accuracy against the rule's TRUE (noise-free)
verdict on the same held-out pairs; PPO's win rate by the rule against the reference (the starting
model) on the held-out prompts; the rule's mean score before/after; the exact held-out KL (per token
and per response) beside `kl_target`; the length ratio policy/reference; minutes per stage; and a
PASS/FAIL per target. Then a summary table, the CPU and whether bf16 was used, and as the LAST
stdout line one JSON object with the per-rule figures (also written to `--out`).

Targets: RM held-out accuracy >= 0.80 on >= 100 held-out pairs; PPO win rate by the rule >= 0.70 on
>= 64 held-out prompts; held-out KL per response <= kl_target; length ratio within 0.7-1.3; one
round <= 20 minutes (the sum of its stages' seconds).

Sizes are round.yaml's unless overridden. The pipeline holds out the last
max(evaluation.prompts, ppo.eval_prompts) of its 160 demo prompts and labels pairs on the rest;
the reward model's held-out pairs are the share `export.test_fraction` of the labelled prompts'
decisive pairs (ties dropped). Sizes that can meet the n targets, e.g.:

    .venv/bin/python benchmarks/alignment.py --set evaluation.prompts=64 --set generation.limit=96 \\
        --set generation.num_candidates=4 --set export.test_fraction=0.5

Run:   .venv/bin/python benchmarks/alignment.py [--rules uses_list,gives_numbers] [--noise 0.1]
           [--config pipelines/configs/round.yaml] [--set key.sub=value ...] [--model default]
           [--out benchmarks/results/alignment.json] [--work DIR]
Quick: .venv/bin/python benchmarks/alignment.py --quick   (tiny random model, quick.yaml, one rule:
       the plumbing in about a minute, not learning)
Long: not part of `make bench`; `make bench-alignment`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import yaml
from ppo import cpu_name  # benchmarks/ppo.py: one reader of the CPU model for every benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no weight-loading reports per model load
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

CONFIGS = ROOT / "pipelines" / "configs"
STAGES_SHOWN = ("generate", "label", "export", "reward", "ppo", "evaluate")
TARGETS = {
    "rm_accuracy": 0.80,
    "rm_min_pairs": 100,
    "win_rate": 0.70,
    "win_min_prompts": 64,
    "length_ratio": (0.7, 1.3),
    "round_minutes": 20.0,
}
# --quick: quick.yaml shrunk further. Its random tiny model never writes lists (uses_list calls
# every pair a tie); byte-level random text does hold digits, so gives_numbers has decisive pairs.
QUICK_RULE = "gives_numbers"
QUICK_SETS = (
    "generation.limit=16",
    "generation.num_candidates=3",
    "ppo.max_steps=2",
    "ppo.eval_prompts=4",
    "evaluation.prompts=8",
)


# -- config ------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A --set value as YAML reads it (numbers, true/false, null, [lists]); else the string.
    PyYAML reads `1e-4` (no dot) as a string: such a number is made a float here."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` to the nested YAML mapping (missing mappings are created)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"--set {assignment!r}: expected key.sub=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise SystemExit(f"--set {assignment!r}: `{p}` is not a mapping in the config")
        node = node[p]
    node[leaf] = parse_value(value)


def rule_config(base: dict[str, Any], rule: str, noise: float, model: str, sets: list[str]) -> dict[str, Any]:
    """The base YAML with the rule, the noise and the model set, then the --set overrides."""
    data = json.loads(json.dumps(base))  # a deep copy
    data["name"] = "align"  # one pipeline for every rule: its candidates are generated once (see main)
    data.setdefault("generation", {})["model"] = model
    ann = data.setdefault("annotator", {})
    ann["rule"], ann["noise"] = rule, noise
    for s in sets:
        apply_set(data, s)
    return data


# -- reading one round's outputs ---------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _stage_dir(round_dir: Path, stage: str) -> Path:
    from rlhf.pipeline import STAGES

    return round_dir / f"{STAGES.index(stage) + 1}-{stage}"


def rm_truth_accuracy(round_dir: Path) -> dict[str, Any]:
    """The reward model's held-out accuracy against the rule's noise-free verdict.

    The export's test split names each pair's comparison; the label stage's labels.jsonl says which
    verdicts the noise flipped. A pair the RM ranks as labelled agrees with the truth unless its
    label was flipped, and vice versa. Which pairs the RM misranks comes from eval_report.json's
    `misranked` list when it is complete, else the held-out pairs are scored again."""
    from datasets import load_from_disk

    from rlhf.stats import proportion

    ds = load_from_disk(str(_stage_dir(round_dir, "export") / "dataset"))
    if "test" not in ds or len(ds["test"]) == 0:
        return {"accuracy": proportion(0, 0), "flipped": 0}
    test = ds["test"]
    ids = list(test["comparison_id"])
    labels_path = _stage_dir(round_dir, "label") / "labels.jsonl"
    flipped = {}
    for line in labels_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            x = json.loads(line)
            flipped[x["comparison"]] = bool(x["flipped"])
    run = _stage_dir(round_dir, "reward") / "run"
    report = _read(run / "eval_report.json")
    mis = report.get("misranked") or []
    if report and report.get("misranked_total", 0) <= len(mis):
        wrong = {m["comparison_id"] for m in mis}
        correct = [i not in wrong for i in ids]
        source = "eval_report"
    else:
        from rlhf.reward import evaluate_pairs, load_reward_model, to_conversational

        model, tok = load_reward_model(run)
        split = to_conversational(test) if getattr(tok, "chat_template", None) else test
        rows = evaluate_pairs(model, tok, split)
        correct = [r["r_chosen"] > r["r_rejected"] for r in rows]
        ids = [r["comparison_id"] for r in rows]
        source = "rescored"
        del model
    agree = sum(c != flipped.get(i, False) for i, c in zip(ids, correct))
    return {
        "accuracy": proportion(agree, len(ids)),
        "flipped": sum(flipped.get(i, False) for i in ids),
        "source": source,
    }


TEST_CANDIDATES = 4  # responses per held-out prompt for the reward model's test pairs


def _test_candidates(round_dir: Path, cfg: Any) -> tuple[list[Any], list[list[Any]], float]:
    """(held-out prompt contents, TEST_CANDIDATES [text, finish reason] of the starting model to
    each, seconds):
    the round's held-out prompts (the last max(evaluation.prompts, ppo.eval_prompts) of its store),
    sampled as the generate stage samples. Cached beside the round's store, keyed by model, settings
    and prompts: rules sharing a data home share them."""
    import dataclasses
    import hashlib

    from sqlalchemy import select

    from rlhf.schema import Prompt
    from rlhf.store import Store

    store = Store(f"sqlite:///{round_dir.parent / 'store.db'}")
    with store.session() as s:
        contents = [p.content for p in s.scalars(select(Prompt).order_by(Prompt.id))]
    n_held = max(cfg.evaluation.prompts, cfg.ppo.eval_prompts)
    held = contents[len(contents) - n_held :]
    settings = dataclasses.replace(cfg.generation, num_candidates=TEST_CANDIDATES, system_prompts=[])
    key = hashlib.sha256(
        json.dumps([cfg.model, dataclasses.asdict(settings), held], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    cache = round_dir.parent / f"rm-test-candidates-{key}.json"
    if cache.exists():
        return held, json.loads(cache.read_text(encoding="utf-8")), 0.0
    from rlhf.generate import generate_responses
    from rlhf.models import load_causal_lm

    t0 = time.perf_counter()
    lm, tok = load_causal_lm(cfg.model)
    texts: list[list[Any]] = []
    for start in range(0, len(held), settings.batch_size):
        batch = held[start : start + settings.batch_size]
        outs = generate_responses(lm, tok, batch, settings, seed=settings.seed * 1_000_003 + 500_000 + start)
        texts.extend([[g.text, g.finish_reason] for g in gens] for gens in outs)
    del lm
    cache.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    return held, texts, time.perf_counter() - t0


def rm_test_accuracy(round_dir: Path, config_path: Path) -> dict[str, Any]:
    """The reward model on a test set big enough to judge it, that no label, training step or model
    choice ever saw: TEST_CANDIDATES responses of the starting model to each HELD-OUT prompt (those
    of the evaluation), every decisive pair among them labelled by the rule (noise-free: `truth`;
    and as the simulated annotator would, with its noise: `accuracy`). This costs no labels: the
    rule is the annotator. 64 prompts x 6 pairs give ~100-150 decisive pairs where the round's own
    held-out split (a share of <= 300 labels, ties dropped) gives ~40."""
    import itertools

    from rlhf.annotators import get_rule, simulated_label
    from rlhf.pipeline import load_pipeline_config
    from rlhf.ppo import prompt_text  # what the label stage gives the rule
    from rlhf.reward import encode_pair_side, load_reward_model, score_sequences
    from rlhf.stats import proportion

    cfg = load_pipeline_config(config_path)
    held, texts, gen_s = _test_candidates(round_dir, cfg)
    rule, ann = get_rule(cfg.annotator.rule), cfg.annotator
    pairs = []  # (prompt index, a, b, truth "A"/"B", label "A"/"B")
    for i, (content, cands) in enumerate(zip(held, texts)):
        prompt = prompt_text(content)
        for a, b in itertools.combinations(range(len(cands)), 2):
            if cands[a][0] == cands[b][0]:
                continue
            truth, _ = rule.verdict(prompt, tuple(cands[a]), tuple(cands[b]))
            if truth == "tie":  # ties are dropped, as the export drops them
                continue
            cid = 1_000_000 + i * 100 + a * 10 + b  # apart from the store's comparison ids
            label = simulated_label(rule, cid, prompt, tuple(cands[a]), tuple(cands[b]), ann.noise, ann.seed)
            pairs.append((i, a, b, truth, label["choice"]))
    t0 = time.perf_counter()
    model, tok = load_reward_model(_stage_dir(round_dir, "reward") / "run")
    chat = bool(getattr(tok, "chat_template", None))

    def seq(content: Any, text: str) -> list[int]:
        if not chat:
            return encode_pair_side(tok, prompt_text(content), text)
        msgs = [{"role": "user", "content": content}] if isinstance(content, str) else list(content)
        return encode_pair_side(tok, msgs, [{"role": "assistant", "content": text}])

    index = {(i, k): n for n, (i, k) in enumerate((i, k) for i in range(len(held)) for k in range(len(texts[i])))}
    seqs = [seq(held[i], texts[i][k][0]) for i, k in index]
    scores = score_sequences(model, seqs, tok.pad_token_id)
    del model
    right_label = right_truth = 0
    for i, a, b, truth, label in pairs:
        says = "A" if scores[index[(i, a)]] > scores[index[(i, b)]] else "B"
        right_truth += says == truth
        right_label += says == label
    return {
        "accuracy": proportion(right_label, len(pairs)),
        "truth": proportion(right_truth, len(pairs)),
        "pairs": len(pairs),
        "prompts": len(held),
        "candidates": TEST_CANDIDATES,
        "generate_seconds": round(gen_s, 1),
        "score_seconds": round(time.perf_counter() - t0, 1),
    }


def collect(round_dir: Path, config: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The per-rule figures from a finished round's folders."""
    from rlhf.pipeline import reward_verdict

    stages = {s: _read(_stage_dir(round_dir, s) / "stage.json") for s in (*STAGES_SHOWN, "prompts", "report")}
    label = stages["label"]
    export_counts = stages["export"].get("counts") or {}
    reward_run = _stage_dir(round_dir, "reward") / "run"
    reward_summary = _read(reward_run / "summary.json")
    facts = reward_verdict(reward_summary)
    ppo_run = _stage_dir(round_dir, "ppo") / "run"
    ppo_report, ppo_summary = _read(ppo_run / "report.json"), _read(ppo_run / "summary.json")
    ppo_config = _read(ppo_run / "config.json")
    results = (stages["evaluate"].get("results") or {}).get("round 0") or {}
    pairs = ppo_report.get("pairs") or []
    # report.json's per-pair `kl` is kl_sum / max(length, 1): the per-response sum comes back exactly.
    kl_response = sum(p["kl"] * max(p["length_policy"], 1) for p in pairs) / len(pairs) if pairs else None
    kl_target = (ppo_config.get("options") or {}).get("kl_target", (config.get("ppo") or {}).get("kl_target"))
    minutes = {s: round((stages[s].get("seconds") or 0.0) / 60, 2) for s in STAGES_SHOWN}
    total_min = sum((v.get("seconds") or 0.0) for v in stages.values()) / 60
    return {
        "rule": (config.get("annotator") or {}).get("rule"),
        "noise": (config.get("annotator") or {}).get("noise"),
        "labels": label.get("labels"),
        "label_choices": label.get("choices"),
        "labels_flipped": label.get("flipped"),
        "train_pairs": reward_summary.get("train_pairs", export_counts.get("exported_train")),
        "held_out_pairs": reward_summary.get("test_pairs", export_counts.get("exported_test")),
        "export": export_counts,
        "prompts": stages["generate"].get("prompts"),
        "rm_mode": reward_summary.get("mode"),
        "rm_accuracy": facts["eval_accuracy_interval"],
        "rm_accuracy_untrained": facts["eval_accuracy_before_interval"],
        "rm_learning": facts["learning"],
        "rm_truth": rm_truth_accuracy(round_dir),
        "win_rate": results.get("rule_win_rate"),
        "rm_win_rate": results.get("rm_win_rate"),
        "rule_score_reference": results.get("rule_score_reference"),
        "rule_score_policy": results.get("rule_score"),
        "reward_mean_reference": results.get("reward_mean_reference"),
        "reward_mean_policy": results.get("reward_mean"),
        "kl_per_token": (ppo_report.get("policy") or {}).get("kl_to_ref"),
        "kl_per_response": kl_response,
        "kl_prompts": ppo_report.get("prompts"),
        "kl_target": kl_target,
        "kl_coef_final": ppo_summary.get("kl_coef_final"),
        "ppo_steps": ppo_summary.get("saved_step"),
        "ppo_stop": (ppo_summary.get("stop") or {}).get("reason"),
        "length_ratio": results.get("length_ratio"),
        "length_chars_reference": results.get("length_reference"),
        "length_chars_policy": results.get("length_chars"),
        "minutes": minutes,
        "round_minutes": round(total_min, 2),
        "wall_minutes": round(wall_s / 60, 2),
        "bf16": {"reward": reward_summary.get("bf16"), "ppo": ppo_summary.get("precision")},
        "round_dir": str(round_dir),
    }


def verdicts(f: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PASS/FAIL per target, each with the figure it judged."""
    t = TARGETS
    # The reward model is judged on the fresh test set (>= 100 pairs) where the benchmark made one.
    acc, win = (f.get("rm_test") or {}).get("accuracy") or f.get("rm_accuracy") or {}, f.get("win_rate") or {}
    lo, hi = t["length_ratio"]
    kl, target = f.get("kl_per_response"), f.get("kl_target")
    ratio = f.get("length_ratio")
    out = {
        "rm_accuracy": {
            "pass": (acc.get("value") or 0) >= t["rm_accuracy"] and acc.get("n", 0) >= t["rm_min_pairs"],
            "target": f">= {t['rm_accuracy']} on >= {t['rm_min_pairs']} held-out pairs (the test set)",
        },
        "win_rate": {
            "pass": (win.get("value") or 0) >= t["win_rate"] and win.get("n", 0) >= t["win_min_prompts"],
            "target": f">= {t['win_rate']} on >= {t['win_min_prompts']} held-out prompts",
        },
        "kl": {
            "pass": kl is not None and (target is None or kl <= target),
            "target": f"per response <= kl_target ({target})",
        },
        "length_ratio": {"pass": ratio is not None and lo <= ratio <= hi, "target": f"within {lo}-{hi}"},
        "round_time": {
            "pass": f.get("round_minutes", 1e9) <= t["round_minutes"],
            "target": f"<= {t['round_minutes']:g} min",
        },
    }
    return out


# -- running -----------------------------------------------------------------------------------


def run_rule(rule: str, data: dict[str, Any], home: Path) -> dict[str, Any]:
    """One pipeline round in its own data home; the figures, or the error that stopped it."""
    from rlhf.pipeline import run_pipeline

    home.mkdir(parents=True, exist_ok=True)
    config_path = home / f"{data['name']}.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    old = os.environ.get("RLHF_HOME")
    os.environ["RLHF_HOME"] = str(home)
    start = time.perf_counter()

    def progress(n: int, stage: str, status: str) -> None:
        print(f"  [{rule}] {stage}: {status} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    try:
        round_dir = run_pipeline(config_path, progress=progress, force=True)
        figures = collect(round_dir, data, time.perf_counter() - start)
        progress(0, "reward-model test set", "running")
        figures["rm_test"] = rm_test_accuracy(round_dir, config_path)
    except Exception as e:  # one rule's failure is reported; the others still run
        traceback.print_exc()
        figures = {
            "rule": rule,
            "error": f"{type(e).__name__}: {e}",
            "wall_minutes": (time.perf_counter() - start) / 60,
        }
    finally:
        if old is None:
            os.environ.pop("RLHF_HOME", None)
        else:
            os.environ["RLHF_HOME"] = old
        gc.collect()
    figures["config"] = str(config_path)
    if "error" not in figures:
        figures["targets"] = verdicts(figures)
        figures["pass"] = all(v["pass"] for v in figures["targets"].values())
    return figures


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _pf(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def print_rule(console: Any, f: dict[str, Any]) -> None:
    from rlhf.stats import fmt_proportion

    console.rule(f"rule {f['rule']}")
    if "error" in f:
        console.print(f"[red]ERROR[/red] {f['error']}")
        return
    t = f["targets"]
    win = f.get("win_rate") or {}
    truth = f["rm_truth"]
    console.print(
        f"labels: {f['labels']} {json.dumps(f['label_choices'])}, {f['labels_flipped']} flipped by noise "
        f"{f['noise']}; reward model: {f['train_pairs']} train pairs, {f['held_out_pairs']} held-out pairs "
        f"(prompts: {json.dumps(f['prompts'])})"
    )
    console.print(
        f"RM held-out accuracy (vs labels): {fmt_proportion(f['rm_accuracy'])}; untrained "
        f"{fmt_proportion(f['rm_accuracy_untrained'])}; verdict [b]{f['rm_learning'].get('status')}[/b] "
        f"({f['rm_mode']})  {_pf(t['rm_accuracy']['pass'])} {t['rm_accuracy']['target']}"
    )
    console.print(
        f"RM held-out accuracy vs the TRUE rule (noise-free): {fmt_proportion(truth['accuracy'])} "
        f"({truth['flipped']} of the held-out labels flipped)"
    )
    test = f.get("rm_test") or {}
    if test:
        console.print(
            f"RM on the test set ({test['pairs']} decisive pairs among {test['candidates']} responses to each of "
            f"{test['prompts']} held-out prompts, labelled by the rule): {fmt_proportion(test['accuracy'])} vs "
            f"noisy labels, {fmt_proportion(test['truth'])} vs the truth  {_pf(t['rm_accuracy']['pass'])} "
            f"{t['rm_accuracy']['target']}"
        )
    console.print(
        f"PPO win rate by the rule vs the reference: {fmt_proportion(win)} W/T/L "
        f"{win.get('wins', '-')}/{win.get('ties', '-')}/{win.get('losses', '-')}  "
        f"{_pf(t['win_rate']['pass'])} {t['win_rate']['target']}"
    )
    console.print(
        f"rule score: reference {_num(f['rule_score_reference'])} -> policy {_num(f['rule_score_policy'])}; "
        f"reward model: {_num(f['reward_mean_reference'])} -> {_num(f['reward_mean_policy'])} "
        f"(RM win rate {fmt_proportion(f.get('rm_win_rate'))})"
    )
    console.print(
        f"held-out KL: {_num(f['kl_per_token'])} per token, {_num(f['kl_per_response'])} per response "
        f"(n={f['kl_prompts']}), kl_target {f['kl_target']}  {_pf(t['kl']['pass'])}; PPO {f['ppo_steps']} steps "
        f"({f['ppo_stop']})"
    )
    console.print(
        f"length ratio policy/reference: {_num(f['length_ratio'])} ({_num(f['length_chars_reference'])} -> "
        f"{_num(f['length_chars_policy'])} chars)  {_pf(t['length_ratio']['pass'])} {t['length_ratio']['target']}"
    )
    per_stage = ", ".join(f"{s} {m:.2f}" for s, m in f["minutes"].items())
    console.print(
        f"minutes: {per_stage}; round {f['round_minutes']:.2f} (wall {f['wall_minutes']:.2f})  "
        f"{_pf(t['round_time']['pass'])} {t['round_time']['target']}"
    )


def summary_table(figures: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from rlhf.stats import fmt_proportion

    table = Table(title="Alignment benchmark: does the loop learn the rule?")
    for col in (
        "rule",
        "train/held-out pairs",
        "RM acc (labels)",
        "RM acc (truth)",
        "RM test set (labels / truth)",
        "RM verdict",
        "win rate by rule",
        "rule score ref→policy",
        "KL/resp (target)",
        "length ratio",
        "round min",
        "targets",
    ):
        table.add_column(col, no_wrap=col == "rule")
    for f in figures:
        if "error" in f:
            table.add_row(f["rule"], *["-"] * 10, "[red]ERROR[/red]")
            continue
        t = f["targets"]
        failed = [k for k, v in t.items() if not v["pass"]]
        table.add_row(
            f["rule"],
            f"{f['train_pairs']}/{f['held_out_pairs']}",
            fmt_proportion(f["rm_accuracy"]),
            fmt_proportion(f["rm_truth"]["accuracy"]),
            (
                f"{fmt_proportion(test['accuracy'])} / {fmt_proportion(test['truth'])} {_pf(t['rm_accuracy']['pass'])}"
                if (test := f.get("rm_test"))
                else f"- {_pf(t['rm_accuracy']['pass'])}"
            ),
            str(f["rm_learning"].get("status")),
            f"{fmt_proportion(f['win_rate'])} {_pf(t['win_rate']['pass'])}",
            f"{_num(f['rule_score_reference'])}→{_num(f['rule_score_policy'])}",
            f"{_num(f['kl_per_response'])} ({f['kl_target']}) {_pf(t['kl']['pass'])}",
            f"{_num(f['length_ratio'])} {_pf(t['length_ratio']['pass'])}",
            f"{f['round_minutes']:.1f} {_pf(t['round_time']['pass'])}",
            "[green]all PASS[/green]" if not failed else "[red]FAIL: " + ", ".join(failed) + "[/red]",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rules", help="comma-separated rules (default: every content rule; --quick: gives_numbers)")
    ap.add_argument("--noise", type=float, default=0.1, help="share of decisive verdicts flipped (default 0.1)")
    ap.add_argument("--config", type=Path, help="base pipeline YAML (default pipelines/configs/round.yaml)")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY.SUB=VALUE", help="override a config key"
    )
    ap.add_argument("--model", help="starting model (default `default`, SmolLM2; --quick: tiny)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alignment.json")
    ap.add_argument("--quick", action="store_true", help="tiny model, quick.yaml, small sizes, one rule")
    ap.add_argument(
        "--separate-homes", action="store_true", help="a data home per rule (generates the candidates per rule)"
    )
    ap.add_argument("--work", type=Path, help="folder for the per-rule data homes (default: a new temp folder)")
    args = ap.parse_args(argv)

    import logging

    from rich.console import Console

    from rlhf import annotators
    from rlhf.home import data_home
    from rlhf.models import resolve_model

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(width=max(Console().width, 180))
    if args.rules:
        rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    else:
        rules = [QUICK_RULE] if args.quick else list(annotators.CONTENT_RULES)
    unknown = [r for r in rules if r not in annotators.RULES]
    if unknown or not rules:
        ap.error(f"unknown rule(s) {unknown}; choose from {', '.join(annotators.RULES)}")
    config_path = args.config or CONFIGS / ("quick.yaml" if args.quick else "round.yaml")
    sets = [*(QUICK_SETS if args.quick else ()), *args.sets]
    model_name = args.model or ("tiny" if args.quick else "default")
    base = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    # The model once, in the caller's data home (its cache): every rule's home points at that folder.
    model_path = str(resolve_model(model_name))
    work = args.work
    if work is None:
        parent = data_home() / "bench-alignment"
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=parent))
    work = work.resolve()
    console.print(
        f"alignment benchmark: rules {', '.join(rules)}; noise {args.noise}; base {config_path}; model "
        f"{model_name} ({model_path}); overrides {sets or 'none'}; work {work}"
    )

    figures = []
    for rule in rules:
        data = rule_config(base, rule, args.noise, model_path, sets)
        # One data home for every rule (--separate-homes: one each): the candidates do not depend on
        # the rule, so the pipeline's skip-if-done reuses the prompts and generate stages and re-runs
        # label -> export -> reward -> PPO -> evaluate. A rule's round folder is overwritten by the
        # next rule's; its figures are kept in --out. The round time still counts the generation.
        figures.append(run_rule(rule, data, work / (rule if args.separate_homes else "shared")))
        print_rule(console, figures[-1])

    used = [f.get("bf16") or {} for f in figures]
    bf16 = sorted({"reward" for b in used if b.get("reward") is True} | {"ppo" for b in used if b.get("ppo") == "bf16"})
    console.print(summary_table(figures))
    cpu = cpu_name()
    console.print(
        f"CPU: {cpu} ({os.cpu_count()} cores); bf16 used: {'yes (' + ', '.join(bf16) + ')' if bf16 else 'no (fp32)'}"
    )
    result = {
        "benchmark": "alignment",
        "cpu": cpu,
        "bf16": bool(bf16),
        "precision": {f["rule"]: f.get("bf16") for f in figures},
        "model": model_name,
        "model_path": model_path,
        "base_config": str(config_path),
        "overrides": sets,
        "noise": args.noise,
        "targets": TARGETS,
        "work": str(work),
        "rules": {f["rule"]: f for f in figures},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"written {args.out}")
    summary = {
        f["rule"]: (
            {"error": f["error"]}
            if "error" in f
            else {
                "rm_accuracy": (f["rm_accuracy"] or {}).get("value"),
                "held_out_pairs": f["held_out_pairs"],
                "train_pairs": f["train_pairs"],
                "rm_truth_accuracy": f["rm_truth"]["accuracy"].get("value"),
                "rm_test_accuracy": ((f.get("rm_test") or {}).get("accuracy") or {}).get("value"),
                "rm_test_truth_accuracy": ((f.get("rm_test") or {}).get("truth") or {}).get("value"),
                "rm_test_pairs": (f.get("rm_test") or {}).get("pairs"),
                "rm_learning": f["rm_learning"].get("status"),
                "win_rate": (f["win_rate"] or {}).get("value"),
                "win_rate_low": (f["win_rate"] or {}).get("low"),
                "win_prompts": (f["win_rate"] or {}).get("n"),
                "rule_score_reference": f["rule_score_reference"],
                "rule_score_policy": f["rule_score_policy"],
                "kl_per_token": f["kl_per_token"],
                "kl_per_response": f["kl_per_response"],
                "kl_target": f["kl_target"],
                "length_ratio": f["length_ratio"],
                "round_minutes": f["round_minutes"],
                "pass": f["pass"],
                "failed": [k for k, v in f["targets"].items() if not v["pass"]],
            }
        )
        for f in figures
    }
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
