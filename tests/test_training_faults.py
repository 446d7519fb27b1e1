"""Training faults: a NaN / exploding loss stops reward training and PPO at the bad step, keeps the last
good checkpoint as the run's model, records why in summary.json, and ends with one clear error.

The bad step is injected deterministically: the reward loss is multiplied by NaN (or by 1000) at
step 7; PPO's value head outputs NaN from step 3 on. Tiny models, one torch thread."""

from __future__ import annotations

import math

import pytest
from reward_data import marker_export
from reward_run import write_fake_reward_run

from rlhf.errors import TrainingDiverged, ValidationError
from rlhf.runs import EXPLODE_FLOOR, LossGuard, MetricsLog, loss_explodes, read_json, read_weights

# -- the rule itself, by hand ------------------------------------------------------------------


def test_explode_rule_hand_computed():
    hist = [0.5, 0.7, 0.6, 0.4, 0.9]  # |x| sorted 0.4 0.5 0.6 0.7 0.9: median 0.6 -> threshold 60
    assert loss_explodes(hist, 60.0, 100) is None  # not over: equal is fine
    assert loss_explodes(hist, 60.01, 100) == pytest.approx(60.0)
    assert loss_explodes(hist, -61.0, 100) == pytest.approx(60.0)  # absolute values (PPO's policy loss)
    assert loss_explodes(hist[:4], 1e9, 100) is None  # fewer than 5 steps of history: no call yet
    assert loss_explodes(hist + [0.8], 71.0, 100) == pytest.approx(65.0)  # even count: (0.6 + 0.7) / 2
    # The median is over the last 20 steps only: 20 x 0.01 after 10 x 5.0 -> median 0.01, floored to 0.1.
    assert loss_explodes([5.0] * 10 + [0.01] * 20, 10.5, 100) == pytest.approx(100 * EXPLODE_FLOOR)
    assert loss_explodes([5.0] * 10 + [0.01] * 20, 9.9, 100) is None
    assert loss_explodes(hist, 1e30, None) is None  # off


def test_loss_guard_stops_on_nan_inf_and_explosion():
    g = LossGuard(10.0, ("loss/value_avg",))
    for step in range(1, 6):
        assert g.check(step, {"loss/value_avg": 1.0, "objective/kl": 2.0}) is None
    assert g.check(6, {"loss/value_avg": 10.5, "objective/kl": 2.0}) == {
        "reason": "loss_explosion",
        "step": 6,
        "metric": "loss/value_avg",
        "value": 10.5,
        "threshold": 10.0,
        "loss_explode_factor": 10.0,
    }
    assert g.check(7, {"loss/value_avg": 1.0, "objective/kl": math.inf})["value"] == "inf"
    assert g.check(8, {"loss/value_avg": math.nan})["reason"] == "non_finite"
    assert g.history["loss/value_avg"] == [1.0] * 5  # bad values never enter the running median


def test_the_option_is_validated():
    from rlhf.ppo import PPOOptions
    from rlhf.reward import RewardOptions

    assert RewardOptions().loss_explode_factor == 100.0 and PPOOptions().loss_explode_factor == 100.0
    assert RewardOptions(loss_explode_factor=None).problems() == []
    for cls in (RewardOptions, PPOOptions):
        assert cls(loss_explode_factor=1.0).problems() == ["`loss_explode_factor` must be > 1 (or null), got 1.0"]


# -- reward training -----------------------------------------------------------------------------

BAD_STEP = 7  # checkpoints every 2 steps: checkpoint-6 is the last good one


def _poisoned_trainer(monkeypatch, factor: float) -> None:
    """The reward loss x `factor` at step BAD_STEP (its backward poisons the weights too)."""
    import rlhf.reward as reward

    real = reward._trainer_class

    def patched():
        base = real()

        class Poisoned(base):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if self.state.global_step + 1 != BAD_STEP:
                    return out
                return (out[0] * factor, out[1]) if return_outputs else out * factor

        return Poisoned

    monkeypatch.setattr(reward, "_trainer_class", patched)


@pytest.mark.parametrize("kind", ["nan", "explode"])
def test_reward_training_stops_at_the_bad_step_and_keeps_the_last_good_checkpoint(
    kind, tiny_model_dir, tmp_path, store, monkeypatch
):
    import torch

    from rlhf.reward import RewardOptions, train_reward

    _poisoned_trainer(monkeypatch, math.nan if kind == "nan" else 1000.0)
    export = marker_export(store, tmp_path, n=48, test_fraction=0.0)
    run = tmp_path / "run"
    trl = {"learning_rate": 3e-3, "logging_steps": 1, "save_steps": 2, "save_total_limit": 2}
    with torch.random.fork_rng(), pytest.raises(TrainingDiverged) as e:
        torch.set_num_threads(1)
        train_reward(
            export,
            RewardOptions(
                model=str(tiny_model_dir), early_stopping_patience=0, precision="fp32", freeze_backbone=False
            ),
            trl,
            max_steps=12,
            run_dir=run,
        )
    msg = str(e.value)
    if kind == "nan":
        assert msg.startswith(f"training diverged at step {BAD_STEP}: loss = nan (not a finite number). ")
    else:
        assert msg.startswith(f"training diverged at step {BAD_STEP}: loss = ")
        assert "over 100 x the running median of its last 20 steps" in msg and "`loss_explode_factor`" in msg
    assert "The run stopped; kept checkpoint-6 (step 6) as the saved model." in msg
    assert "Lower `learning_rate`" in msg and "`max_grad_norm`" in msg
    stop = read_json(run / "summary.json")["stop"]
    assert stop["reason"] == ("non_finite" if kind == "nan" else "loss_explosion")
    assert stop["step"] == BAD_STEP and stop["kept_step"] == 6 and stop["kept_checkpoint"] == "checkpoint-6"
    assert stop["message"] == msg and read_json(run / "summary.json")["saved_step"] == 6
    # The saved model is checkpoint-6's weights exactly (not the bad step's), and finite.
    final, good = read_weights(run / "model"), read_weights(run / "checkpoints" / "checkpoint-6")
    assert final.keys() == good.keys() and all(torch.equal(final[k], good[k]) for k in good)
    assert all(torch.isfinite(t).all() for t in final.values())
    # Nothing was logged, evaluated or saved at or after the bad step.
    assert [m["step"] for m in MetricsLog(run).read()] == list(range(1, BAD_STEP))
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (run / "reward_stats.json").exists()  # the kept model is usable by PPO


def test_reward_divergence_before_any_checkpoint_keeps_no_model(tiny_model_dir, tmp_path, store, monkeypatch):
    import torch

    from rlhf.reward import RewardOptions, train_reward

    _poisoned_trainer(monkeypatch, math.nan)
    export = marker_export(store, tmp_path, n=48, test_fraction=0.0)
    run = tmp_path / "run"
    with torch.random.fork_rng(), pytest.raises(TrainingDiverged, match="kept no model \\(no checkpoint was saved"):
        torch.set_num_threads(1)
        train_reward(
            export,
            RewardOptions(
                model=str(tiny_model_dir), early_stopping_patience=0, precision="fp32", freeze_backbone=False
            ),
            {"learning_rate": 3e-3, "save_steps": 50},
            max_steps=12,
            run_dir=run,
        )
    assert read_json(run / "summary.json")["stop"]["kept_step"] == 0 and not (run / "model").exists()


def test_reward_option_refused_and_cli_exits_non_zero(tiny_model_dir, tmp_path, store, monkeypatch, capsys):
    import torch

    from rlhf.cli import main
    from rlhf.reward import RewardOptions, train_reward

    with pytest.raises(ValidationError, match="loss_explode_factor"):
        train_reward(tmp_path, RewardOptions(loss_explode_factor=0.5))
    _poisoned_trainer(monkeypatch, math.nan)
    export = marker_export(store, tmp_path, n=48, test_fraction=0.0)
    sets = ["early_stopping_patience=0", "save_steps=2", "learning_rate=0.003", "precision=fp32"]
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        code = main(
            ["train-reward", str(export), "--model", str(tiny_model_dir), "--max-steps", "10", "--finetune"]
            + [x for kv in sets for x in ("--set", kv)]
        )
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 2
    assert f"error: training diverged at step {BAD_STEP}: loss = nan" in err and "Traceback" not in err


# -- PPO ----------------------------------------------------------------------------------------


def nan_values_from(step: int):
    """From step `step` on, the value head outputs NaN (so advantages, losses and weights go NaN)."""
    from transformers import TrainerCallback

    class PoisonValueHead(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == step - 1:
                model.value_model.score.register_forward_hook(lambda mod, inp, out: out * math.nan)

    return PoisonValueHead()


def test_ppo_stops_at_the_bad_step_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, home):
    import json

    import torch

    from rlhf.ppo import PPOOptions, train_ppo

    reward = write_fake_reward_run(tmp_path / "reward", tiny_model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: say hi."}) + "\n" for i in range(24)))
    run = tmp_path / "ppo"
    opts = PPOOptions(policy=str(tiny_model_dir), precision="fp32", eval_prompts=0, lora=False)
    trl = {"learning_rate": 1e-3, "response_length": 16, "save_steps": 1, "save_total_limit": 3}
    with torch.random.fork_rng(), pytest.raises(TrainingDiverged) as e:
        torch.set_num_threads(1)
        train_ppo(reward, opts, trl, max_steps=6, prompts=prompts, run_dir=run, callbacks=[nan_values_from(3)])
    msg = str(e.value)
    assert msg.startswith("training diverged at step 3: loss/policy_avg = nan (not a finite number). ")
    assert "kept checkpoint-2 (step 2) as the saved policy and value model" in msg
    assert "Lower `learning_rate`" in msg
    s = read_json(run / "summary.json")
    assert s["stop"]["reason"] == "non_finite" and s["stop"]["step"] == 3 and s["stop"]["metric"] == "loss/policy_avg"
    assert s["stop"]["kept_step"] == 2 and s["saved_step"] == 2 and s["stop"]["message"] == msg
    ckpt = run / "checkpoints" / "checkpoint-2"
    for final, good in ((run / "policy", ckpt), (run / "value", ckpt / "value")):
        a, b = read_weights(final), read_weights(good)
        assert all(torch.equal(a[k], b[k]) for k in b) and all(torch.isfinite(t).all() for t in a.values())
    rows = [m for m in MetricsLog(run).read() if "objective/kl" in m]
    assert [m["step"] for m in rows] == [1, 2, 3]  # the bad step's row is the last one
    assert rows[-1]["loss/policy_avg"] == "nan" and rows[-1]["loss/value_avg"] == "nan"
    assert not (run / "checkpoints" / "checkpoint-3").exists()
