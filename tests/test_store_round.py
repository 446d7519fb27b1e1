"""Rounds with people (`rlhf round`, the app's Rounds page): close the labeling round of the data home's
store (export every label, reward model, PPO) and open the next with candidates from the tuned policy.
quick.yaml's tiny reward model cannot show learning (a handful of held-out pairs): without force the
round stops before PPO; the rest of the loop runs with force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labeling_seed import label_round, seed_round_zero

QUICK = Path(__file__).parents[1] / "pipelines" / "configs" / "quick.yaml"


@pytest.fixture
def app_store(home, store, tiny_model_dir):
    assert seed_round_zero(store, home, tiny_model_dir) == 24
    return store


def test_no_labels_is_a_clear_error(home, store):
    from rlhf.errors import WorkbenchError
    from rlhf.pipeline import run_store_round

    with pytest.raises(WorkbenchError, match="no labels yet: annotators label on the Label page first"):
        run_store_round(QUICK, store)


def test_close_round_zero_then_round_one(app_store, home):
    from sqlalchemy import func, select

    from rlhf.errors import WorkbenchError
    from rlhf.pipeline import run_store_round
    from rlhf.schema import Comparison, Completion, Label, Prompt

    store = app_store
    statuses: dict[str, str] = {}

    def progress(n: int, stage: str, status: str) -> None:
        statuses[stage] = status

    # Without force: the reward model's verdict stops the round before PPO, nothing of PPO written.
    with pytest.raises(WorkbenchError) as e:
        run_store_round(QUICK, store, progress=progress)
    out = home / "rounds" / "round-0"
    learning = json.loads((out / "5-reward" / "stage.json").read_text())["learning"]
    assert learning["status"] == "too_small"
    assert str(e.value) == learning["message"] + "; pass --force to run PPO anyway"
    assert statuses == {"export": "done", "reward": "done"}
    assert sorted(p.name for p in out.iterdir()) == ["4-export", "5-reward"]

    statuses.clear()
    assert run_store_round(QUICK, store, progress=progress, force=True) == out
    assert statuses == {"export": "skipped", "reward": "skipped", "ppo": "done", "generate": "done"}
    summary = json.loads((out / "round.json").read_text())
    assert summary["reward_learning"] == learning and summary["forced"] is True
    assert summary["reward_eval_accuracy_interval"]["value"] == summary["reward_eval_accuracy"]
    policy = str(out / "6-ppo" / "run" / "policy")
    assert summary["round"] == 0 and summary["labels"] == 24 and summary["next_round"] == 1
    assert summary["policy_start"] == "tiny" and summary["policy"] == policy
    assert (out / "5-reward" / "run" / "model" / "config.json").exists()
    with store.session() as s:
        ids = list(s.scalars(select(Prompt.id).order_by(Prompt.id)))
        round1 = list(s.scalars(select(Comparison).where(Comparison.round == 1)))
        models = set(s.scalars(select(Completion.model).where(Completion.id.in_([c.completion_a_id for c in round1]))))
        n_labels = s.scalar(select(func.count(Label.id)))
    # quick.yaml holds out the last 8 prompts; round 1 gives candidates to the pool's next 24 prompts.
    assert {c.prompt_id for c in round1} == set(ids[24:48]) and models == {policy}
    assert summary["next_round_comparisons"] == len(round1) > 0
    assert n_labels == 24  # nothing stored was touched

    # Again with no new label: every stage is up to date.
    statuses.clear()
    assert run_store_round(QUICK, store, progress=progress, force=True) == out
    assert set(statuses.values()) == {"skipped"}

    # Round 1 labeled: closing it trains on both rounds' labels and starts PPO from round 0's policy.
    assert label_round(store, 1, "bob") == len(round1)
    out1 = run_store_round(QUICK, store, force=True)
    assert out1 == home / "rounds" / "round-1"
    summary1 = json.loads((out1 / "round.json").read_text())
    assert summary1["policy_start"] == policy and summary1["labels"] == 24 + len(round1)
    assert json.loads((out1 / "4-export" / "stage.json").read_text())["rounds"] == [0, 1]
    with store.session() as s:
        round2 = set(s.scalars(select(Comparison.prompt_id).where(Comparison.round == 2)))
    assert round2 == set(ids[48:72])
    assert summary1["model"] == "tiny"

    # Round 2 labeled, then closed with a config of another base model: refused before any work.
    from rlhf.errors import ValidationError

    label_round(store, 2, "bob")
    with pytest.raises(ValidationError) as e:
        run_store_round(QUICK.with_name("round.yaml"), store, force=True)
    assert e.value.problems == [
        "round 1 was closed with generation.model 'tiny' (quick.yaml), this config has 'default': round 2 starts "
        "PPO from round 1's policy, and the policy and the reward model must come from the same base model. "
        "Use a config with generation.model 'tiny'"
    ]
    assert not (home / "rounds" / "round-2").exists()


def test_cli_round(app_store, home, capsys):
    from typer.testing import CliRunner

    from rlhf.cli import app, main

    assert main(["round", str(QUICK)]) == 2  # a WorkbenchError: one message, exit code 2
    err = capsys.readouterr().err
    assert "error:" in err and "pass --force to run PPO anyway" in err
    assert not (home / "rounds" / "round-0" / "6-ppo").exists()

    result = CliRunner().invoke(app, ["round", str(QUICK), "--force"])
    assert result.exit_code == 0, result.output
    assert "round 0 closed: reward model held-out accuracy" in result.output
    assert "(n=" in result.output and "(too_small)" in result.output
    assert "round 1: " in result.output and "comparisons to label" in result.output
