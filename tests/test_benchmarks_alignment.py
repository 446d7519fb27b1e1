"""benchmarks/alignment.py: --set overrides, the per-rule config, the PASS/FAIL targets, the reward
model's accuracy against the noise-free rule, and (slow) its --quick run end to end on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import alignment  # noqa: E402


def test_rule_config_sets_rule_noise_model_then_overrides():
    base = yaml.safe_load((alignment.CONFIGS / "round.yaml").read_text())
    data = alignment.rule_config(
        base,
        "gives_numbers",
        0.2,
        "/models/x",
        ["generation.limit=48", "reward.trl.learning_rate=1e-4", "ppo.kl_target=null", "new.key=[1, 2]"],
    )
    assert data["name"] == "align"  # one pipeline (and one set of candidates) for every rule
    assert data["annotator"]["rule"] == "gives_numbers" and data["annotator"]["noise"] == 0.2
    assert data["generation"]["model"] == "/models/x" and data["generation"]["limit"] == 48
    assert data["reward"]["trl"]["learning_rate"] == 1e-4
    assert data["ppo"]["kl_target"] is None and data["new"]["key"] == [1, 2]
    assert base["generation"]["limit"] == 50  # the base is not touched
    with pytest.raises(SystemExit):
        alignment.apply_set({}, "no-equals-sign")
    with pytest.raises(SystemExit):
        alignment.apply_set({"name": "x"}, "name.sub=1")


def _figures(**changes):
    f = {
        "rm_accuracy": {"value": 0.85, "n": 120},
        "win_rate": {"value": 0.75, "n": 64},
        "kl_per_response": 4.0,
        "kl_target": 6.0,
        "length_ratio": 1.1,
        "round_minutes": 19.0,
    }
    return {**f, **changes}


def test_verdicts_pass_and_each_failure():
    assert all(v["pass"] for v in alignment.verdicts(_figures()).values())
    fails = {
        "rm_accuracy": [{"rm_accuracy": {"value": 0.79, "n": 500}}, {"rm_accuracy": {"value": 0.95, "n": 99}}],
        "win_rate": [{"win_rate": {"value": 0.69, "n": 64}}, {"win_rate": {"value": 0.9, "n": 63}}],
        "kl": [{"kl_per_response": 6.1}, {"kl_per_response": None}],
        "length_ratio": [{"length_ratio": 0.69}, {"length_ratio": 1.31}],
        "round_time": [{"round_minutes": 20.5}],
    }
    for target, cases in fails.items():
        for case in cases:
            v = alignment.verdicts(_figures(**case))
            assert [k for k, x in v.items() if not x["pass"]] == [target], case


def test_the_reward_model_is_judged_on_the_test_set_where_there_is_one():
    small = {"rm_accuracy": {"value": 0.9, "n": 41}}
    assert not alignment.verdicts(_figures(**small))["rm_accuracy"]["pass"]
    test = {"accuracy": {"value": 0.82, "n": 130}, "truth": {"value": 0.9, "n": 130}}
    assert alignment.verdicts(_figures(**small, rm_test=test))["rm_accuracy"]["pass"]
    test = {"accuracy": {"value": 0.78, "n": 130}, "truth": {"value": 0.9, "n": 130}}
    assert not alignment.verdicts(_figures(rm_test=test))["rm_accuracy"]["pass"]  # noisy labels decide


def test_rm_truth_accuracy_flips_agreement_of_flipped_labels(tmp_path: Path):
    from datasets import Dataset, DatasetDict

    round_dir = tmp_path / "round-0"
    rows = [{"comparison_id": i, "prompt": "p", "chosen": "a", "rejected": "b"} for i in (1, 2, 3, 4)]
    DatasetDict({"train": Dataset.from_list(rows[:1]), "test": Dataset.from_list(rows)}).save_to_disk(
        str(round_dir / "4-export" / "dataset")
    )
    (round_dir / "3-label").mkdir(parents=True)
    flipped = {1: False, 2: True, 3: False, 4: True}
    labels = "".join(json.dumps({"comparison": i, "flipped": f}) + "\n" for i, f in flipped.items())
    (round_dir / "3-label" / "labels.jsonl").write_text(labels)
    run = round_dir / "5-reward" / "run"
    run.mkdir(parents=True)
    # The RM misranks pairs 2 and 3 (by the labels): 1 right, 2 right by the truth (its label was
    # flipped), 3 wrong, 4 wrong by the truth (ranked as its flipped label says).
    report = {"misranked": [{"comparison_id": 2}, {"comparison_id": 3}], "misranked_total": 2}
    (run / "eval_report.json").write_text(json.dumps(report))
    out = alignment.rm_truth_accuracy(round_dir)
    assert out["accuracy"]["value"] == 0.5 and out["accuracy"]["n"] == 4
    assert out["flipped"] == 2 and out["source"] == "eval_report"


@pytest.mark.slow
def test_quick_run_end_to_end(home: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "alignment.json"
    argv = ["--quick", "--model", str(tiny_model_dir), "--work", str(tmp_path / "work"), "--out", str(out)]
    assert alignment.main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(last) == [alignment.QUICK_RULE]
    figures = last[alignment.QUICK_RULE]
    assert "error" not in figures and figures["pass"] is False  # the tiny random model learns nothing
    saved = json.loads(out.read_text())["rules"][alignment.QUICK_RULE]
    assert saved["held_out_pairs"] >= 1 and saved["win_rate"]["n"] == 8
    assert set(saved["minutes"]) == set(alignment.STAGES_SHOWN) and saved["kl_target"] == 6.0
    assert saved["kl_per_response"] is not None and saved["length_ratio"] is not None
    assert set(saved["targets"]) == {"rm_accuracy", "win_rate", "kl", "length_ratio", "round_time"}
    # the reward model's own test set: 4 responses to each of the 8 held-out prompts, decisive pairs
    test = saved["rm_test"]
    assert test["prompts"] == 8 and test["candidates"] == 4 and 1 <= test["pairs"] <= 8 * 6
    assert test["accuracy"]["n"] == test["truth"]["n"] == test["pairs"]
