"""PPO: a tiny policy learns the marker preference; KL is tracked, controlled and budgeted; runs resume.

The module trains, once: a tiny reward model on the marker task (chosen responses say "thank you"),
and a tiny policy fine-tuned on both kinds of marker responses (so it says "thank you" about half
the time: PPO has something to find). Tiny-model tests run torch on one thread: on 2 shared cores,
2 threads of a 64-dim model wait on each other ~10x longer than they compute.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from reward_data import TOPICS, marker_export, write_marker_preferences

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.ppo import (
    AdaptiveKLController,
    PPOOptions,
    build_ppo_config,
    build_ppo_report,
    build_ppo_reward,
    chat_suffix_ids,
    complete_checkpoints,
    kept_checkpoint_step,
    split_prompts,
    token_kl,
    train_ppo,
)
from rlhf.runs import MetricsLog, folder_hash, read_json

TRL_KEYS = {
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/ratio",
    "val/num_eos_tokens",
}
EVAL_KEYS = {"eval/reward_mean", "eval/kl_to_ref", "eval/response_length"}
# Checked on this task: lr 1e-3 takes the held-out reward to ~1.0 (normalised: "thank you" nearly
# always) in a few steps at a per-response KL of ~5-10 nats; 3e-3 gets there too but at KL 30-50.
FAST_TRL = {"learning_rate": 1e-3, "response_length": 32}
# For the run that must learn: with batches of 8, 1 seed in 6 settles on short "no." answers (they
# dodge the missing-EOS penalty that long "thank you" answers sometimes pay); batches of 16 learned
# "thank you" with all 8 seeds tried.
LEARN_TRL = {**FAST_TRL, "per_device_train_batch_size": 16}


def sft_marker_policy(base: Path, out: Path, steps: int = 100) -> Path:
    """The tiny model fine-tuned on chosen AND rejected marker responses (about half say "thank you")."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_tokenizer

    tok = load_tokenizer(base, padding_side="right")
    rows = [json.loads(x) for x in write_marker_preferences(out.with_suffix(".jsonl"), 80).read_text().splitlines()]
    seqs = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": resp}],
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        for r in rows
        for resp in (r["chosen"], r["rejected"])
    ]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rnd = random.Random(0)
    for _ in range(steps):
        batch = rnd.sample(seqs, 16)
        ids = torch.full((16, max(map(len, batch))), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(batch):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_marker_prompts(path: Path, n: int = 40) -> Path:
    rnd = random.Random(1)
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: tell me about {rnd.choice(TOPICS)}."}) + "\n" for i in range(n)),
        encoding="utf-8",
    )
    return path


@contextmanager
def one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    if request.node.get_closest_marker("slow"):
        yield
    else:
        with one_thread():
            yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A data home with a tiny reward run; the marker policy; a prompt file."""
    from rlhf.reward import RewardOptions, train_reward
    from rlhf.store import Store

    tmp = tmp_path_factory.mktemp("ppo")
    old_home = os.environ.get("RLHF_HOME")
    os.environ["RLHF_HOME"] = str(tmp / "home")
    try:
        with one_thread():
            store = Store()
            store.init()
            export = marker_export(store, tmp, n=64, test_fraction=0.0)
            reward = train_reward(
                export,
                RewardOptions(
                    model=str(tiny_model_dir), early_stopping_patience=0, precision="fp32", freeze_backbone=False
                ),
                {"learning_rate": 3e-3, "num_train_epochs": 3, "save_strategy": "no", "logging_steps": 8},
            )
            policy = sft_marker_policy(tiny_model_dir, tmp / "policy")
        yield {"tmp": tmp, "reward": reward, "policy": policy, "prompts": write_marker_prompts(tmp / "prompts.jsonl")}
    finally:
        os.environ.pop("RLHF_HOME") if old_home is None else os.environ.__setitem__("RLHF_HOME", old_home)


def options(world, **kw) -> PPOOptions:
    # Full fine-tune (lora=False) through our PPO step (value head on the policy's trunk); the LoRA
    # default and TRL's own loop (value_model="separate") have tests of their own below.
    base = {"policy": str(world["policy"]), "precision": "fp32", "eval_prompts": 8, "eval_steps": 4, "lora": False}
    return PPOOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def run(world):
    """The main run: 12 steps, evaluation every 4, a fast-moving adaptive KL coefficient."""
    with one_thread():
        return train_ppo(
            world["reward"],
            options(world, kl_target=1.0, kl_horizon=32),
            {**LEARN_TRL, "save_steps": 4},
            max_steps=12,
            prompts=world["prompts"],
        )


def steps_of(run_dir: Path) -> list[dict]:
    return [m for m in MetricsLog(run_dir).read() if "objective/kl" in m]


def samples_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# -- the main run ----------------------------------------------------------------------------


def test_run_folder_layout_and_config(run, world):
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "report.json", "summary.json"):
        assert (run / name).is_file(), name
    cfg = read_json(run / "config.json")
    assert cfg["reward_run"] == str(world["reward"].resolve())
    assert cfg["reward_model_sha256"] == folder_hash(world["reward"] / "model")
    stats = read_json(world["reward"] / "reward_stats.json")
    assert cfg["reward_normalization"] == {"mean": stats["reward_mean"], "std": stats["reward_std"], "clip": 5.0}
    # 40 prompts without a test split: 8 held out (at most half), 32 to train on.
    assert cfg["prompts"]["train"] == 32 and cfg["prompts"]["eval"] == 8
    assert cfg["prompts"]["source"] == str(world["prompts"].resolve())
    assert cfg["trl"]["learning_rate"] == 1e-3 and cfg["trl"]["total_episodes"] == 12 * 16
    assert cfg["reference"] == "a frozen copy of the starting policy" and cfg["precision"] == "no"
    s = read_json(run / "summary.json")
    assert s["global_step"] == 12 and s["stop"] == {"reason": "completed"} and s["seconds_per_step"] > 0
    assert sorted(complete_checkpoints(run)) == [8, 12]  # save_total_limit 2
    assert (run / "checkpoints" / "checkpoint-12" / "value" / "model.safetensors").exists()


def test_every_step_logs_trl_metrics_and_the_kl_coefficient(run):
    steps = steps_of(run)
    assert [m["step"] for m in steps] == list(range(1, 13))
    for m in steps:
        assert TRL_KEYS | {"kl/coef"} <= m.keys()
        assert math.isfinite(m["objective/kl"])


def test_reward_goes_up(run):
    rows = [m for m in MetricsLog(run).read() if "eval/reward_mean" in m]
    before, after = rows[0], rows[-1]
    assert before["step"] == 0 and after["step"] == 12
    # The marker policy says "thank you" about half the time (normalised reward ~0.3); PPO makes
    # it say so nearly always (~0.95).
    assert after["eval/reward_mean"] > before["eval/reward_mean"] + 0.3
    scores = [m["objective/scores"] for m in steps_of(run)]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3
    report = read_json(run / "report.json")
    assert report["win_rate"] > 0.5 and report["reward_gain"] > 0.3


def test_adaptive_kl_coefficient_is_the_one_trl_used(run):
    steps = steps_of(run)
    # TRL: non_score_reward = -kl_coef * kl per token, summed per response and averaged, as is
    # objective/kl: so their ratio is the coefficient the step's rewards really used.
    for m in steps:
        if abs(m["objective/kl"]) > 0.05:
            assert -m["objective/non_score_reward"] / m["objective/kl"] == pytest.approx(m["kl/coef"], rel=1e-4)
    # The logged coefficients follow the controller from TRL's 0.05, fed each step's KL.
    ctl = AdaptiveKLController(0.05, target=1.0, horizon=32)
    expected = []
    for m in steps:
        expected.append(ctl.value)
        ctl.update(m["objective/kl"], n_episodes=16)
    assert [m["kl/coef"] for m in steps] == pytest.approx(expected, rel=1e-9)
    assert steps[-1]["kl/coef"] != 0.05
    assert read_json(run / "summary.json")["kl_coef_final"] == pytest.approx(ctl.value)


def test_evaluations_and_samples(run):
    rows = samples_of(run)
    assert sorted({r["step"] for r in rows}) == [0, 4, 8, 12]
    metrics = {m["step"]: m for m in MetricsLog(run).read() if "eval/reward_mean" in m}
    for step in (0, 4, 8, 12):
        at = [r for r in rows if r["step"] == step]
        assert len(at) == 8 and {"prompt", "response", "reward", "kl", "length"} <= at[0].keys()
        m = metrics[step]
        assert m["eval/reward_mean"] == pytest.approx(sum(r["reward"] for r in at) / 8)
        assert m["eval/response_length"] == pytest.approx(sum(r["length"] for r in at) / 8)
        # Token-weighted mean of the per-token KL.
        tokens = sum(r["length"] for r in at)
        assert m["eval/kl_to_ref"] == pytest.approx(sum(r["kl"] * r["length"] for r in at) / tokens)
    assert all(r["kl"] == 0 for r in rows if r["step"] == 0)  # the reference itself
    assert metrics[12]["eval/kl_to_ref"] > 0
    # The same fixed prompts every time.
    assert [r["prompt"] for r in rows if r["step"] == 0] == [r["prompt"] for r in rows if r["step"] == 12]


def test_report_compares_reference_and_tuned_policy(run):
    rows = samples_of(run)
    ref = [r for r in rows if r["step"] == 0]
    pol = [r for r in rows if r["step"] == 12]
    rep = read_json(run / "report.json")
    assert rep["step"] == 12 and rep["prompts"] == 8
    assert rep["reference"]["reward_mean"] == pytest.approx(sum(r["reward"] for r in ref) / 8)
    assert rep["policy"]["reward_mean"] == pytest.approx(sum(r["reward"] for r in pol) / 8)
    wins = sum((p["reward"] > r["reward"]) + 0.5 * (p["reward"] == r["reward"]) for r, p in zip(ref, pol))
    assert rep["win_rate"] == pytest.approx(wins / 8)
    assert rep["length_change"] == pytest.approx(rep["policy"]["response_length"] - rep["reference"]["response_length"])
    assert [(p["reference"], p["policy"]) for p in rep["pairs"]] == [
        (r["response"], p["response"]) for r, p in zip(ref, pol)
    ]


def test_saved_policy_and_value_are_the_trained_ones(run, world):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(run / "policy")
    AutoModelForSequenceClassification.from_pretrained(run / "value")
    final, start = weights(run / "policy"), weights(world["policy"])
    assert final.keys() == start.keys()
    for k in final:
        assert torch.equal(final[k], weights(run / "checkpoints" / "checkpoint-12")[k])
        assert not torch.equal(final[k], start[k]), f"{k} did not change"
    value, rm = weights(run / "value"), weights(world["reward"] / "model")
    assert all(not torch.equal(value[k], rm[k]) for k in value)


# -- the added behaviours, each against hand-computed values ---------------------------------


def test_adaptive_controller_hand_computed():
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    # KL 9: 9/6 - 1 = 0.5, clipped to 0.2 -> 0.1 * (1 + 0.2 * 10/100) = 0.102 (raised: KL above target)
    assert c.update(9.0, n_episodes=10) == pytest.approx(0.102)
    # KL 6.6: error 0.1 -> 0.102 * (1 + 0.1 * 0.1) = 0.10302
    assert c.update(6.6, n_episodes=10) == pytest.approx(0.10302)
    # KL 3: 3/6 - 1 = -0.5, clipped to -0.2 -> 0.10302 * (1 - 0.02) = 0.1009596 (lowered: below target)
    assert c.update(3.0, n_episodes=10) == pytest.approx(0.1009596)
    # KL on target: unchanged
    assert c.update(6.0, n_episodes=10) == pytest.approx(0.1009596)


def test_kept_checkpoint_is_the_last_one_measured_within_budget():
    # Step 7 over budget: its rollouts came from checkpoint 6's policy, measured first at step 7;
    # checkpoint 5's policy (measured at step 6) was within it: the newest saved <= 5 is 4.
    assert kept_checkpoint_step([2, 4, 6], 7) == 4
    assert kept_checkpoint_step([2, 4, 6], 8) == 6
    assert kept_checkpoint_step([2, 4], 3) is None  # only the starting policy was measured within
    assert kept_checkpoint_step([], 5) is None


def test_token_kl_hand_computed():
    import torch

    p = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]))
    q = torch.log(torch.tensor([[[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]]))
    # 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.25 ln 2; identical distributions: 0.
    kl = token_kl(p + 3.0, q - 1.0)  # logits: shifts do not change the distributions
    assert kl.shape == (1, 2)
    assert kl[0, 0].item() == pytest.approx(0.25 * math.log(2), abs=1e-6)
    assert kl[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_reward_normalisation_and_clipping_exact():
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=8, hidden_size=2, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1, num_labels=1
    )
    rm = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        rm.score.weight.copy_(torch.tensor([[1.0, 2.0]]))

    class Tok:
        chat_template, eos_token_id = None, 1

    hidden = torch.tensor([[0.0, 1.0], [1.0, 2.0], [-4.0, 0.0]])  # raw rewards 2, 5, -4
    clipped = build_ppo_reward(rm, Tok(), mean=1.0, std=0.5, clip=5.0)
    # (2 - 1) / 0.5 = 2; (5 - 1) / 0.5 = 8 -> 5; (-4 - 1) / 0.5 = -10 -> -5
    assert clipped.score(hidden).squeeze(-1).tolist() == [2.0, 5.0, -5.0]
    assert build_ppo_reward(rm, Tok(), 1.0, 0.5, None).score(hidden).squeeze(-1).tolist() == [2.0, 8.0, -10.0]
    with pytest.raises(WorkbenchError, match="std must be > 0"):
        build_ppo_reward(rm, Tok(), 0.0, 0.0)


def test_ppo_reward_reads_where_the_reward_model_was_trained(world):
    """TRL's get_reward on a padded PPO batch == the reward model's own score of the whole
    conversation (what RewardTrainer trained on), normalised and clipped."""
    import torch
    from trl.experimental.utils import get_reward

    from rlhf.ppo import _left_pad, encode_prompt
    from rlhf.reward import encode_pair_side, load_reward_model, score_sequences

    rm, tok = load_reward_model(world["reward"])
    tok.padding_side = "left"
    suffix = chat_suffix_ids(tok)
    assert tok.convert_ids_to_tokens(suffix) == ["Ċ"]  # ChatML: "\n" after <|im_end|>
    cases = [("Question 1: tell me about rain.", "rain is good, thank you."), ("Question 2: hello?", "hello, no.")]
    queries, responses, expected = [], [], []
    for prompt, response in cases:
        full = encode_pair_side(
            tok, [{"role": "user", "content": prompt}], [{"role": "assistant", "content": response}]
        )
        q = encode_prompt(tok, prompt)
        assert full[: len(q)] == q and full[-1 - len(suffix)] == tok.eos_token_id
        queries.append(q)
        responses.append(full[len(q) : len(full) - len(suffix)])  # ends with EOS, as PPO's do
        expected.append(full)
    # A response cut at response_length (no EOS): read at its last token, nothing appended.
    queries.append(queries[0])
    responses.append(responses[0][:-3])
    expected.append(queries[0] + responses[0][:-3])
    raw = score_sequences(rm, expected, tok.pad_token_id)
    # Centred on the first case (0: inside the clip), the second beyond the clip.
    mean, std, clip = raw[0], 1.0, abs(raw[1] - raw[0]) / 2
    want = [max(-clip, min(clip, (r - mean) / std)) for r in raw]
    q = _left_pad(queries, tok.pad_token_id)
    width = max(map(len, responses)) + 2
    r = torch.full((len(responses), width), tok.pad_token_id)
    for i, resp in enumerate(responses):
        r[i, : len(resp)] = torch.tensor(resp)
    reward = build_ppo_reward(rm, tok, mean, std, clip)
    with torch.no_grad():
        _, got, _ = get_reward(reward, torch.cat([q, r], 1), tok.pad_token_id, q.shape[1])
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert any(abs(w) == clip for w in want) and any(abs(w) < clip for w in want)


def test_value_model_starts_as_the_reward_model_in_normalised_units(world):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf.ppo import load_value_model

    rm = AutoModelForSequenceClassification.from_pretrained(world["reward"] / "model")
    value = load_value_model(world["reward"] / "model", mean=0.3, std=2.0)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        # LLaMA's score head has no bias: values = raw reward / std at every token.
        assert torch.allclose(value(input_ids=ids).logits, rm(input_ids=ids).logits / 2.0, atol=1e-6)
    assert not hasattr(value.config, "reward_mean")


def test_build_report_hand_computed():
    def rows(rewards, lengths, kls):
        return [
            {
                "prompt_index": i,
                "prompt": f"p{i}",
                "response": f"r{i}",
                "reward": rw,
                "length": n,
                "kl": k,
                "kl_sum": k * n,
            }
            for i, (rw, n, k) in enumerate(zip(rewards, lengths, kls))
        ]

    ref = rows([0.0, 1.0, 2.0], [4, 4, 4], [0.0, 0.0, 0.0])
    pol = rows([1.0, 1.0, 1.0], [2, 6, 4], [0.5, 0.1, 0.0])
    r = build_ppo_report(ref, pol, step=7)
    assert r["win_rate"] == pytest.approx((1 + 0.5 + 0) / 3)  # a win, a tie, a loss
    assert r["reward_gain"] == pytest.approx(1.0 - 1.0)
    assert r["length_change"] == pytest.approx(4.0 - 4.0)
    # Token-weighted KL: (0.5 * 2 + 0.1 * 6 + 0) / 12
    assert r["policy"]["kl_to_ref"] == pytest.approx(1.6 / 12)
    assert r["pairs"][1] == {
        "prompt": "p1",
        "reference": "r1",
        "policy": "r1",
        "reward_reference": 1.0,
        "reward_policy": 1.0,
        "kl": 0.1,
        "length_reference": 4,
        "length_policy": 6,
    }


def test_split_prompts_holds_out_a_fixed_set():
    rows = [(f"p{i}", None) for i in range(10)]
    train, held = split_prompts(rows, n_eval=3, seed=0)
    assert len(held) == 3 and len(train) == 7 and not set(train) & set(held)
    assert split_prompts(rows, 3, seed=0) == (train, held)  # the same every time
    assert len(split_prompts(rows, 16, seed=0)[1]) == 5  # at most half
    marked = [("a", "train"), ("b", "test"), ("c", None), ("d", "test"), ("e", "test")]
    assert split_prompts(marked, n_eval=2, seed=0) == (["a", "c"], ["b", "d"])  # test split: first N; never trained


def test_config_defaults_overrides_and_problems(tmp_path):
    from rlhf.reward import hardware_has_bf16

    args = build_ppo_config(PPOOptions(), {"kl_estimator": "k3", "cliprange": 0.1}, tmp_path, max_steps=5)
    assert args.kl_estimator == "k3" and args.cliprange == 0.1 and args.stop_token == "eos"
    assert args.total_episodes == 5 * 8 and args.num_sample_generations == 0
    assert args.bf16 == hardware_has_bf16()
    # The defaults: LoRA (its larger step) with a value head on the policy's trunk.
    assert PPOOptions().lora is True and PPOOptions().value_model == "shared"
    assert build_ppo_config(PPOOptions(), {}, tmp_path).learning_rate == 2e-4
    assert build_ppo_config(PPOOptions(lora=False), {}, tmp_path).learning_rate == 1e-5
    assert PPOOptions(value_model="both").problems() == ["`value_model` must be shared or separate, got 'both'"]
    assert build_ppo_config(PPOOptions(), {"max_steps": 3}, tmp_path).total_episodes == 24  # TRL's field, honoured
    with pytest.raises(ValidationError) as e:
        build_ppo_config(
            PPOOptions(),
            {"kl_estimater": "k3", "batch_size": 4, "kl_estimator": "k2", "num_mini_batches": 3, "response_length": 0},
            tmp_path,
        )
    msg = str(e.value)
    assert len(e.value.problems) == 5
    for fragment in (
        "`kl_estimater`",
        "`batch_size`",
        "`kl_estimator` must be k1 or k3",
        "`num_mini_batches`",
        "`response_length`",
    ):
        assert fragment in msg
    with pytest.raises(ValidationError) as e:
        train_ppo(tmp_path, PPOOptions(precision="fp8", kl_target=0, eval_steps=-1))
    assert len(e.value.problems) == 3


def test_without_held_out_prompts_there_is_no_evaluation(world, tmp_path):
    run = train_ppo(
        world["reward"],
        options(world, eval_prompts=0),
        {**FAST_TRL, "save_strategy": "no"},
        max_steps=1,
        prompts=world["prompts"],
        run_dir=tmp_path / "no-eval",
    )
    assert read_json(run / "config.json")["prompts"]["train"] == 40
    assert not (run / "samples.jsonl").exists() and not (run / "report.json").exists()
    s = read_json(run / "summary.json")
    assert s["eval"] is None and s["global_step"] == 1 and not complete_checkpoints(run)
    assert [m["step"] for m in MetricsLog(run).read()] == [1]


def test_tensorboard_needs_its_package(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith("tensorboard") else real(n, *a))
    with pytest.raises(ValidationError, match="pip install tensorboard"):
        build_ppo_config(PPOOptions(), {"report_to": "tensorboard"}, tmp_path)


def test_tensorboard_logs_go_into_the_run_folder(world, tmp_path):
    pytest.importorskip("tensorboard")
    run = train_ppo(
        world["reward"],
        options(world, eval_prompts=0),
        {**FAST_TRL, "report_to": ["tensorboard"], "save_strategy": "no"},
        max_steps=1,
        prompts=world["prompts"],
        run_dir=tmp_path / "tb",
    )
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_bad_inputs_are_refused_before_any_work(world, tmp_path):
    with pytest.raises(WorkbenchError, match="no trained reward model"):
        train_ppo(tmp_path, options(world))
    few = write_marker_prompts(tmp_path / "few.jsonl", n=10)  # 5 held out, 5 < one batch of 8
    with pytest.raises(WorkbenchError, match="fewer than one batch"):
        train_ppo(world["reward"], options(world), {}, max_steps=1, prompts=few, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before the run folder was made
    with pytest.raises(WorkbenchError, match="needs the run folder"):
        train_ppo(world["reward"], options(world, resume=True), prompts=few)


# -- KL budget, resume, LoRA -----------------------------------------------------------------


def test_kl_budget_stops_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path):
    """Store prompts (a test split held out), bf16 autocast, a budget the run soon exceeds."""
    import torch

    from rlhf.io import read_prompts
    from rlhf.store import Store

    records = read_prompts(world["prompts"])
    for i, r in enumerate(records):
        r.split = "test" if i % 5 == 0 else None  # 8 of 40 held out by the store's split
    store = Store(f"sqlite:///{tmp_path / 'prompts.db'}")
    store.init()
    store.add_prompts(records)
    budget = 3.0
    run = train_ppo(
        world["reward"],
        options(world, kl_budget=budget, precision="bf16", eval_steps=0),
        {**FAST_TRL, "save_steps": 1, "save_total_limit": 3},
        max_steps=12,
        store=store,
    )
    cfg, s = read_json(run / "config.json"), read_json(run / "summary.json")
    assert cfg["prompts"]["source"].startswith("store:") and cfg["prompts"]["eval"] == 8
    assert cfg["prompts"]["train"] == 32 and s["precision"] == "bf16"
    stop = s["stop"]
    steps = steps_of(run)
    assert stop["reason"] == "kl_budget" and stop["step"] < 12 and stop["kl_budget"] == budget
    assert [m["step"] for m in steps] == list(range(1, stop["step"] + 1))  # nothing after the stop
    assert steps[-1]["objective/kl"] > budget and all(m["objective/kl"] <= budget for m in steps[:-1])
    kept = kept_checkpoint_step(range(1, stop["step"]), stop["step"])
    assert stop["kept_step"] == (kept or 0) and s["saved_step"] == (kept or 0)
    source = run / "checkpoints" / f"checkpoint-{kept}" if kept else world["policy"]
    final = weights(run / "policy")
    assert all(torch.equal(final[k], v) for k, v in weights(source).items())
    assert read_json(run / "report.json")["step"] == (kept or 0)


class Killed(Exception):
    pass


def kill_at(step: int):
    from transformers import TrainerCallback

    class KillAfterLogging(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if state.global_step == step and logs and "objective/kl" in logs:
                raise Killed(step)

    return KillAfterLogging()


def test_resume_continues_exactly_from_the_last_checkpoint(world, tmp_path):
    """Killed at step 7 of 8 after checkpoint 6, in the middle of the second pass over the prompts
    (32 prompts = 4 batches a pass): the resumed run must redraw that pass's order and go on."""
    opts = options(world, eval_steps=4, kl_target=1.0, kl_horizon=16)
    trl = {**FAST_TRL, "save_steps": 3}
    whole = train_ppo(world["reward"], opts, trl, max_steps=8, prompts=world["prompts"], run_dir=tmp_path / "whole")
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train_ppo(world["reward"], opts, trl, 8, world["prompts"], run_dir=killed, callbacks=[kill_at(7)])
    assert sorted(complete_checkpoints(killed)) == [3, 6] and steps_of(killed)[-1]["step"] == 7
    assert not (killed / "summary.json").exists()
    resumed = train_ppo(world["reward"], replace(opts, resume=True), trl, 8, world["prompts"], run_dir=killed)
    assert read_json(resumed / "summary.json")["resumed_from_step"] == 6
    a, b = steps_of(whole), steps_of(resumed)
    assert [m["step"] for m in b] == list(range(1, 9))  # step 7 logged once: the killed run's row dropped
    # Weights, optimizer, LR schedule, KL coefficient, data order and RNG restored: the same numbers
    # (up to float noise: CPU matmul kernels are not bitwise reproducible across processes' memory
    # layouts; leaving out any one of those restores moves them by far more than this).
    keys = ["objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "kl/coef", "lr"]
    for x, y in zip(a, b):
        assert [x[k] for k in keys] == pytest.approx([y[k] for k in keys], rel=1e-3, abs=1e-4), x["step"]
    evals = [m for m in MetricsLog(resumed).read() if "eval/reward_mean" in m]
    assert [m["step"] for m in evals] == [0, 4, 8]
    assert sorted({r["step"] for r in samples_of(resumed)}) == [0, 4, 8]
    assert read_json(resumed / "report.json")["policy"] == pytest.approx(
        read_json(whole / "report.json")["policy"], rel=1e-3
    )


def test_lora_policy_reference_is_the_adapter_off(world, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    run = train_ppo(
        world["reward"],
        options(world, lora=True, lora_r=4, eval_steps=2),
        {**FAST_TRL, "learning_rate": 1e-2, "save_steps": 2},
        max_steps=2,
        prompts=world["prompts"],
        run_dir=tmp_path / "lora",
    )
    assert read_json(run / "config.json")["reference"] == "the policy with its LoRA adapter off"
    assert (run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (run / "policy" / "adapter_config.json").exists()  # merged: a plain model
    AutoModelForCausalLM.from_pretrained(run / "policy")
    final, start = weights(run / "policy"), weights(world["policy"])
    assert any(not torch.equal(final[k], start[k]) for k in start)
    evals = {m["step"]: m for m in MetricsLog(run).read() if "eval/kl_to_ref" in m}
    assert evals[0]["eval/kl_to_ref"] == 0 and evals[2]["eval/kl_to_ref"] > 0


@pytest.mark.parametrize(
    ("lora", "precision", "tol"), [(True, "fp32", 1e-5), (False, "fp32", 1e-5), (True, "bf16", 0.02)]
)
def test_evaluation_kl_of_the_untrained_policy_is_zero(world, tmp_path, lora, precision, tol):
    """The evaluation's KL pairs the policy's sampling logits with one reference pass at the same
    response positions: before any training the policy is the reference, so a misaligned position
    or a wrong model would show as KL > 0. Under bf16 autocast (sampling and reference pass alike)
    only rounding remains."""
    from rlhf.ppo import build_ppo_trainer

    built = build_ppo_trainer(
        world["reward"], options(world, lora=lora, precision=precision), FAST_TRL, max_steps=1,
        prompts=world["prompts"], run_dir=tmp_path / "r",
    )  # fmt: skip
    _, policy_rows = built.hooks.evaluator.run(built.trainer)
    metrics, ref_rows = built.hooks.evaluator.run(built.trainer, reference=True)
    assert max(abs(r["kl"]) for r in policy_rows) < tol and metrics["eval/kl_to_ref"] == 0
    assert [r["response"] for r in policy_rows] == [r["response"] for r in ref_rows]  # same seed, same model
    assert [r["reward"] for r in policy_rows] == pytest.approx([r["reward"] for r in ref_rows], abs=1e-5)


def test_trl_loop_with_a_separate_value_model_still_learns(world, tmp_path):
    """value_model=separate: TRL's own PPOTrainer.train with the value model initialised from the reward model."""
    run = train_ppo(
        world["reward"],
        options(world, value_model="separate", eval_steps=0),
        {**LEARN_TRL, "save_steps": 100},
        max_steps=6,
        prompts=world["prompts"],
        run_dir=tmp_path / "separate",
    )
    cfg = read_json(run / "config.json")
    assert cfg["value"] == "a separate model initialised from the reward model" and not cfg["reward_in_reference_pass"]
    steps = steps_of(run)
    assert [m["step"] for m in steps] == list(range(1, 7)) and all(TRL_KEYS <= m.keys() for m in steps)
    assert not any("time/generation" in m for m in steps)  # TRL's loop: none of our timers
    rep = read_json(run / "report.json")
    assert rep["reward_gain"] > 0.1


def test_our_step_logs_where_its_time_goes(run):
    for m in steps_of(run):
        phases = {k for k in m if k.startswith("time/")}
        assert {"time/generation", "time/reference_and_reward", "time/train_forward", "time/train_backward"} <= phases
        assert all(m[k] >= 0 for k in phases)
    assert read_json(run / "config.json")["value"] == "a head on the policy's trunk"


def test_end_of_turn_suffix_placement_hand_checked():
    import torch

    from rlhf.ppo_loop import append_end_of_turn

    pad, eos = 0, 9
    rows = torch.tensor([[0, 5, 6, 9, 0], [5, 6, 7, 8, 0], [0, 0, 5, 9, 0]])
    ids, mask, pos, read = append_end_of_turn(rows, rows != pad, eos, [3, 4])
    # Row 0 ended with EOS at 3: the suffix goes at 4, 5 and the score is read at 5 (its last token).
    assert ids.tolist() == [[0, 5, 6, 9, 3, 4, 0], [5, 6, 7, 8, 0, 0, 0], [0, 0, 5, 9, 3, 4, 0]]
    assert mask.tolist() == [[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0]]
    assert pos.tolist() == [[0, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4, 4], [0, 0, 0, 1, 2, 3, 4]]
    assert read.tolist() == [5, 3, 5]  # row 1 was cut off (no EOS): its last real token


def test_fused_reward_equals_the_reward_models_own_score(tiny_model_dir, tmp_path, store):
    """A frozen-backbone reward run on the policy's own base: the reference pass's hidden state at the
    read index gives exactly the score the separate reward model (PPOReward) gives."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf.models import load_tokenizer
    from rlhf.ppo import _same_trunk, build_ppo_reward, chat_suffix_ids
    from rlhf.ppo_loop import append_end_of_turn
    from rlhf.reward import RewardOptions, train_reward

    reward = train_reward(
        marker_export(store, tmp_path, n=24, test_fraction=0.0), RewardOptions(model=str(tiny_model_dir))
    )
    rm = AutoModelForSequenceClassification.from_pretrained(reward / "model").eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert _same_trunk(rm, policy)
    tok = load_tokenizer(tiny_model_dir)
    wrapped = build_ppo_reward(rm, tok, mean=0.3, std=2.0, clip=5.0).eval()
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "thank you"}]
    full = list(tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
    suffix = chat_suffix_ids(tok)
    ids = torch.tensor([full[: len(full) - len(suffix)]])  # as PPO has it: the response ends at EOS
    from trl.experimental.utils import get_reward

    _, expected, _ = get_reward(wrapped, ids, tok.pad_token_id, 3)
    x, mask, pos, read = append_end_of_turn(ids, ids != tok.pad_token_id, tok.eos_token_id, chat_suffix_ids(tok))
    with torch.no_grad():
        h = policy.get_decoder()(input_ids=x, attention_mask=mask, position_ids=pos).last_hidden_state
        got = wrapped.score(h[torch.arange(1), read]).squeeze(-1)
    assert torch.allclose(got, expected, atol=1e-5)
    # reference_pass (the PPO step's and the evaluation's one reference forward): the same score,
    # and the reference logits / temperature at exactly the response positions, fused or not.
    from rlhf.ppo_loop import _lm_parts, reference_pass

    trunk, head = _lm_parts(policy)
    ctx = 5
    with torch.no_grad():
        want = policy(input_ids=ids).logits[:, ctx - 1 : -1] / 0.5
        for fused in ((wrapped.score, suffix, None, None), None):
            logits, score, shares = reference_pass(
                trunk, head, fused, ids, ids, ctx, tok.pad_token_id, tok.eos_token_id, 0.5
            )
            assert shares is None  # a last-token head does not split over tokens
            assert logits.shape == want.shape and torch.allclose(logits, want, atol=1e-4)
            assert (score is None) == (fused is None) and (score is None or torch.allclose(score, expected, atol=1e-5))


def test_pipeline_script_help_is_fast():
    script = Path(__file__).parents[1] / "pipelines" / "train_ppo.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "REWARD_RUN" in r.stdout.upper()


@pytest.mark.slow
def test_smollm2_lora_two_steps(home, tmp_path, store):
    """SmolLM2 policy with LoRA, against a SmolLM2 reward model trained for 2 steps with LoRA."""
    from rlhf.reward import RewardOptions, train_reward

    export = marker_export(store, tmp_path, n=16, test_fraction=0.0)
    reward = train_reward(
        export,
        RewardOptions(model="default", lora=True, early_stopping_patience=0, freeze_backbone=False),
        {"max_length": 256, "per_device_train_batch_size": 4, "save_strategy": "no"},
        max_steps=2,
    )
    prompts = write_marker_prompts(tmp_path / "prompts.jsonl", n=12)
    run = train_ppo(
        reward,
        PPOOptions(policy="default", lora=True, eval_prompts=4, eval_steps=0),
        {"per_device_train_batch_size": 4, "response_length": 24, "per_device_eval_batch_size": 4},
        max_steps=2,
        prompts=prompts,
    )
    s = read_json(run / "summary.json")
    assert s["global_step"] == 2 and s["stop"]["reason"] == "completed"
    steps = steps_of(run)
    assert len(steps) == 2 and all(TRL_KEYS <= m.keys() and math.isfinite(m["objective/kl"]) for m in steps)
    rep = read_json(run / "report.json")
    assert rep["prompts"] == 4 and all(p["policy"] is not None for p in rep["pairs"])


def test_merged_adapters_give_the_same_logits_and_restore_the_weights(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf.ppo_loop import merged_adapters

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    ).eval()
    with torch.no_grad():  # a non-trivial adapter (LoRA's B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with merged_adapters(model):
            merged = model(input_ids=ids).logits
    assert torch.allclose(plain, merged, atol=1e-5)
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def test_saved_run_config_is_what_a_resume_goes_on_with(tmp_path):
    """`rlhf ppo --resume` and `pipelines/train_ppo.py --resume` both read the run's own options."""
    from rlhf.ppo import saved_run_config

    assert saved_run_config(tmp_path) == ({}, None)
    (tmp_path / "config.json").write_text(
        json.dumps({"options": {"lora": True, "kl_target": 3.0}, "trl_overrides": {"learning_rate": 5e-4},
                    "reward_run": "/r/1"})
    )  # fmt: skip
    assert saved_run_config(tmp_path) == ({"lora": True, "kl_target": 3.0, "trl": {"learning_rate": 5e-4}}, "/r/1")


def test_token_rewards_credit_each_token_its_share_and_keep_the_score():
    """Hand-computed: the KL part everywhere; without shares the score (5) at the end index (3),
    TRL's placement; with shares (1, 2) on the first two tokens, the rest (2) at the end."""
    import torch

    from rlhf.ppo_loop import place_rewards

    non_score = torch.tensor([[-0.1, -0.1, -0.1, 0.0]])
    scores, end = torch.tensor([5.0]), torch.tensor([3])
    assert place_rewards(non_score, scores, None, end)[0].tolist() == pytest.approx([-0.1, -0.1, -0.1, 5.0])
    shares = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    got = place_rewards(non_score, scores, shares, end)
    assert got[0].tolist() == pytest.approx([0.9, 1.9, -0.1, 2.0])
    assert float(got.sum()) == pytest.approx(float(non_score.sum() + scores.sum()))
    assert non_score[0].tolist() == pytest.approx([-0.1, -0.1, -0.1, 0.0])  # not changed in place


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_token_rewards_change_the_credit_not_the_score(tiny_model_dir, tmp_path, store, monkeypatch, precision):
    """A pooled (sum) reward head on the policy's own base: the reward comes from the reference pass
    and, with token_rewards, is split over the response tokens. Same seed, same rollouts, same
    scores; a different policy loss (the credit moved). bf16 runs the split inside autocast."""
    import rlhf.reward_head as rh
    from rlhf.reward import RewardOptions, hardware_has_bf16, train_reward

    if precision == "bf16" and not hardware_has_bf16():
        pytest.skip("no bf16 hardware")
    real_fit = rh.fit_head
    monkeypatch.setattr(
        rh, "fit_head", lambda c, r, *a, **k: real_fit({"sum1": c["sum1"]}, {"sum1": r["sum1"]}, *a, **k)
    )
    reward = train_reward(marker_export(store, tmp_path, n=32), RewardOptions(model=str(tiny_model_dir)))
    prompts = write_marker_prompts(tmp_path / "prompts.jsonl")
    first = {}
    for on in (True, False):
        opts = PPOOptions(policy=str(tiny_model_dir), precision=precision, eval_prompts=0, token_rewards=on)
        out = train_ppo(reward, opts, {"per_device_train_batch_size": 4}, max_steps=1, prompts=prompts)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["reward_in_reference_pass"] is True and cfg["token_rewards"] is on
        first[on] = steps_of(out)[0]
    assert first[True]["objective/scores"] == pytest.approx(first[False]["objective/scores"], abs=1e-6)
    assert first[True]["loss/policy_avg"] != pytest.approx(first[False]["loss/policy_avg"], abs=1e-6)
