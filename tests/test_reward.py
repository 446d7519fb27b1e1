"""Reward model: training learns an easy preference, saves a reloadable model, and the report is right."""

from __future__ import annotations

import math

import pytest
from reward_data import marker_export

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.reward import (
    RewardOptions,
    build_eval_report,
    build_reward_config,
    encode_pair_side,
    load_reward_model,
    score_sequences,
    strength_bucket,
    to_conversational,
    train_reward,
)
from rlhf.runs import MetricsLog, read_json

FAST = {"learning_rate": 3e-3, "num_train_epochs": 6, "eval_steps": 10, "save_steps": 10, "logging_steps": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One tiny reward run on the marker task, shared by the tests that read its outputs."""
    import os

    tmp = tmp_path_factory.mktemp("reward")
    old = os.environ.get("RLHF_HOME")
    os.environ["RLHF_HOME"] = str(tmp / "home")
    try:
        from rlhf.store import Store

        store = Store()
        store.init()
        export = marker_export(store, tmp)
        run = train_reward(
            export, RewardOptions(model=str(tiny_model_dir), early_stopping_patience=0, freeze_backbone=False), FAST
        )
        return run, export
    finally:
        os.environ.pop("RLHF_HOME") if old is None else os.environ.__setitem__("RLHF_HOME", old)


def test_training_goes_from_chance_to_near_perfect(trained):
    run, _ = trained
    s = read_json(run / "summary.json")
    # An untrained head is far from perfect (every pair differs the same way, so a random head
    # is consistently right or wrong on most of them: "chance" here is not exactly 0.5).
    assert s["eval_accuracy_before"] < 0.9
    assert s["eval_accuracy"] >= 0.95 and s["eval_accuracy"] > s["eval_accuracy_before"]
    assert s["dropped_too_long"] == {"train": 0, "test": 0}
    assert s["train_pairs"] + s["test_pairs"] == 80


def test_run_folder_holds_config_metrics_stats_and_report(trained):
    run, export = trained
    cfg = read_json(run / "config.json")
    assert cfg["export_dir"] == str(export.resolve())
    assert cfg["export_rows_sha256"] == read_json(export / "manifest.json")["rows_sha256"]
    assert cfg["trl"]["learning_rate"] == 3e-3 and cfg["trl"]["gradient_checkpointing"] is False
    metrics = MetricsLog(run).read()
    train_steps = [m for m in metrics if "loss" in m]
    assert train_steps and all({"accuracy", "margin", "mean_reward"} <= m.keys() for m in train_steps)
    assert any("eval_accuracy" in m for m in metrics)
    assert train_steps[-1]["loss"] < train_steps[0]["loss"]
    stats = read_json(run / "reward_stats.json")
    assert stats["n_responses"] == 2 * read_json(run / "summary.json")["train_pairs"] and stats["reward_std"] > 0


def test_saved_model_reloads_and_gives_the_same_scores(trained):
    import datasets
    from transformers import AutoModelForSequenceClassification

    run, export = trained
    model, tok = load_reward_model(run)
    plain = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert math.isclose(plain.config.reward_mean, read_json(run / "reward_stats.json")["reward_mean"])
    test = to_conversational(datasets.load_from_disk(str(export))["test"])
    seqs = [encode_pair_side(tok, ex["prompt"], ex["chosen"]) for ex in test]
    a = score_sequences(model, seqs, tok.pad_token_id)
    b = score_sequences(plain.eval(), seqs, tok.pad_token_id, batch_size=1)  # no padding at all
    assert all(abs(x - y) < 1e-4 for x, y in zip(a, b))
    report = read_json(run / "eval_report.json")
    # The report's accuracy is recomputable from the reloaded model.
    rej = [encode_pair_side(tok, ex["prompt"], ex["rejected"]) for ex in test]
    r = score_sequences(model, rej, tok.pad_token_id)
    assert report["accuracy"] == sum(x > y for x, y in zip(a, r)) / len(a)


def test_encoding_matches_what_trl_trains_on(tiny_model_dir, tmp_path, store):
    """Our scorer must see exactly the token ids TRL's RewardTrainer trained on."""
    import datasets
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlhf.models import load_tokenizer

    export = marker_export(store, tmp_path, n=8, test_fraction=0.0)
    for convert in (True, False):
        ds = datasets.load_from_disk(str(export))["train"]
        ds = to_conversational(ds) if convert else ds
        tok = load_tokenizer(tiny_model_dir, padding_side="right")
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
        args = RewardConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to=[], max_steps=1)
        prepared = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset
        for ex, prep in zip(ds, prepared):
            assert encode_pair_side(tok, ex["prompt"], ex["chosen"]) == prep["chosen_ids"]
            assert encode_pair_side(tok, ex["prompt"], ex["rejected"]) == prep["rejected_ids"]


def test_lora_training_changes_every_trainable_parameter(tiny_model_dir, tmp_path, store):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import load_tokenizer
    from rlhf.reward import _trainer_class, load_export

    export = marker_export(store, tmp_path, n=16, test_fraction=0.0)
    ds, _ = load_export(export)
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = build_reward_config(
        RewardOptions(lora=True), {"logging_steps": 1}, tmp_path / "o", has_eval=False, max_steps=3
    )
    assert args.learning_rate == 2e-4 and args.train_sampling_strategy == "group_by_length"
    peft = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["score"])
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=to_conversational(ds["train"]), processing_class=tok, peft_config=peft
    )
    trainer.train_dataset = trainer.train_dataset.map(lambda ex: {"length": len(ex["chosen_ids"])})
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in before) and any("score" in n for n in before)
    trainer.train()
    for n, p in trainer.model.named_parameters():
        if n in before:
            assert not torch.equal(before[n], p.detach()), f"{n} did not change"


def test_unknown_and_bad_config_values_are_refused_together(tmp_path):
    with pytest.raises(ValidationError) as e:
        build_reward_config(RewardOptions(), {"learnin_rate": 1, "max_lenght": 2}, tmp_path, has_eval=False)
    assert len(e.value.problems) == 2 and "learnin_rate" in str(e.value)
    with pytest.raises(ValidationError, match="`learning_rate` must be > 0"):
        build_reward_config(RewardOptions(), {"learning_rate": -1.0}, tmp_path, has_eval=False)
    with pytest.raises(ValidationError) as e:
        train_reward(tmp_path, RewardOptions(precision="fp8", lora_r=0))
    assert len(e.value.problems) == 2


def test_non_export_folder_is_refused(tmp_path, home):
    with pytest.raises(WorkbenchError, match="not an export folder"):
        train_reward(tmp_path)


def test_over_length_pairs_are_counted(tiny_model_dir, tmp_path, store):
    import datasets

    from rlhf.models import load_tokenizer

    export = marker_export(store, tmp_path, n=24)
    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    train = to_conversational(datasets.load_from_disk(str(export))["train"])
    longest = sorted(
        max(
            len(encode_pair_side(tok, ex["prompt"], ex["chosen"])),
            len(encode_pair_side(tok, ex["prompt"], ex["rejected"])),
        )
        for ex in train
    )
    limit = longest[len(longest) // 2]  # the median: about half the pairs are too long
    expected = sum(n > limit for n in longest)
    run = train_reward(
        export,
        RewardOptions(model=str(tiny_model_dir), early_stopping_patience=0, freeze_backbone=False),
        {"max_length": limit},
        max_steps=1,
    )
    s = read_json(run / "summary.json")
    assert expected > 0 and s["dropped_too_long"]["train"] == expected
    assert s["train_pairs"] == len(train) - expected


# -- the report, against hand-computed values ------------------------------------------------


def row(rc, rr, **kw):
    base = {
        "r_chosen": rc,
        "r_rejected": rr,
        "margin": 2.0,
        "category": "a",
        "agreement": 1.0,
        "num_labels": 1,
        "chosen_side": "A",
        "len_chosen": 10,
        "len_rejected": 20,
        "comparison_id": 0,
        "prompt": "p",
        "chosen": "c",
        "rejected": "r",
    }
    return base | kw


# 95% Wilson intervals, hand computed (z = 1.96): 1 of 1, 1 of 2, 0 of 1.
W11 = {"low": pytest.approx(0.2065, abs=1e-4), "high": 1.0}
W12 = {"low": pytest.approx(0.0945, abs=1e-4), "high": pytest.approx(0.9055, abs=1e-4)}
W01 = {"low": 0.0, "high": pytest.approx(0.7935, abs=1e-4)}


def test_report_accuracy_by_slices():
    rows = [
        row(1.0, 0.0, margin=3.0, category="a", chosen_side="A"),
        row(0.0, 1.0, margin=3.0, category="a", chosen_side="B", comparison_id=1),
        row(2.0, 0.0, margin=0.4, category="b", chosen_side="B", num_labels=3, agreement=1.0),
        row(0.0, 0.5, margin=None, category=None, num_labels=3, agreement=2 / 3, comparison_id=3),
    ]
    r = build_eval_report(rows)
    assert r["pairs"] == 4 and r["accuracy"] == 0.5  # rows 0 and 2 right
    assert r["by_strength"] == {
        "significantly better": {"n": 2, "accuracy": 0.5, **W12},
        "negligibly better": {"n": 1, "accuracy": 1.0, **W11},  # 0.4 rounds to 0
        "unknown": {"n": 1, "accuracy": 0.0, **W01},
    }
    assert r["by_category"] == {
        "(none)": {"n": 1, "accuracy": 0.0, **W01},
        "a": {"n": 2, "accuracy": 0.5, **W12},
        "b": {"n": 1, "accuracy": 1.0, **W11},
    }
    assert r["by_agreement"]["single"] == {"n": 2, "accuracy": 0.5, **W12, "annotator_agreement": 1.0}
    assert r["by_agreement"]["unanimous"]["accuracy"] == 1.0
    assert r["by_agreement"]["split"] == {"n": 1, "accuracy": 0.0, **W01, "annotator_agreement": 2 / 3}
    assert r["annotator_agreement"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert r["position"] == {"A": {"n": 2, "accuracy": 0.5, **W12}, "B": {"n": 2, "accuracy": 0.5, **W12}}
    # Misranked, worst first: row 1 (gap 1.0) before row 3 (gap 0.5).
    assert [m["comparison_id"] for m in r["misranked"]] == [1, 3] and r["misranked"][0]["gap"] == 1.0
    assert r["misranked_total"] == 2


def test_report_calibration_hand_computed():
    # Two pairs with r_c - r_r = ln 3 -> P(chosen) = 0.75, observed chosen: the points are
    # (0.75, 1) x2 and (0.25, 0) x2. Bins 0.2-0.3: predicted 0.25, observed 0; 0.7-0.8: 0.75 vs 1.
    # ECE = (2 * |0.25 - 0| + 2 * |0.75 - 1|) / 4 = 0.25.
    r = build_eval_report([row(math.log(3), 0.0), row(math.log(3) + 1, 1.0)])
    bins = r["calibration"]["bins"]
    assert [(b["lo"], b["n"]) for b in bins] == [(0.2, 2), (0.7, 2)]
    assert bins[0]["mean_predicted"] == pytest.approx(0.25) and bins[0]["observed"] == 0.0
    assert bins[1]["mean_predicted"] == pytest.approx(0.75) and bins[1]["observed"] == 1.0
    assert r["calibration"]["ece"] == pytest.approx(0.25)


def test_report_length_bias_hand_computed():
    # Rewards equal to lengths / 10: perfectly correlated (pearson 1).
    rows = [row(1.0, 2.0, len_chosen=10, len_rejected=20), row(3.0, 0.5, len_chosen=30, len_rejected=5)]
    lb = build_eval_report(rows)["length_bias"]
    assert lb["pearson_reward_length"] == pytest.approx(1.0)
    assert lb["chosen_shorter"] == {"n": 1, "accuracy": 0.0, **W01}  # shorter chosen lost
    assert lb["chosen_longer"] == {"n": 1, "accuracy": 1.0, **W11}
    assert lb["equal_length"] == 0


def test_strength_bucket_names():
    assert [strength_bucket(m) for m in (0, 0.5, 1.49, 2, 2.5, 7, None)] == [
        "negligibly better",
        "slightly better",
        "slightly better",
        "better",
        "significantly better",
        "significantly better",
        "unknown",
    ]


@pytest.mark.slow
def test_smollm2_lora_short_run(home, tmp_path, store):
    export = marker_export(store, tmp_path, n=24)
    run = train_reward(
        export,
        RewardOptions(model="default", lora=True, early_stopping_patience=0, freeze_backbone=False),
        {"max_length": 256, "per_device_train_batch_size": 4},
        max_steps=3,
    )
    s = read_json(run / "summary.json")
    assert s["global_step"] == 3 and math.isfinite(s["train_loss"])
    model, tok = load_reward_model(run)
    assert model.config.num_labels == 1 and not hasattr(model, "peft_config")  # adapters merged
    assert (run / "eval_report.json").exists()


@pytest.mark.parametrize(
    "cuda, bf16, asked, expected",
    [
        (False, True, "auto", "bf16"),  # AMX / AVX512-BF16 CPU
        (False, False, "auto", "no"),
        (True, True, "auto", "bf16"),  # A100, H100
        (True, False, "auto", "fp16"),  # V100, T4: fp16 with loss scaling
        (True, True, "fp16", "fp16"),
        (False, False, "bf16", "bf16"),
        (False, True, "fp32", "no"),
    ],
)
def test_mixed_precision_choice(monkeypatch, cuda, bf16, asked, expected):
    import torch

    from rlhf import reward

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(reward, "hardware_has_bf16", lambda: bf16)
    assert reward.mixed_precision(asked) == expected


def test_fp16_without_a_gpu_is_refused_with_the_other_problems(monkeypatch, tmp_path):
    import torch

    from rlhf.ppo import PPOOptions, build_ppo_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fix = "`precision: fp16` needs a CUDA GPU (no GPU here); use auto, bf16 or fp32"
    with pytest.raises(ValidationError) as e:
        build_reward_config(RewardOptions(precision="fp16"), {"learning_rate": -1.0}, tmp_path, has_eval=False)
    assert e.value.problems == [fix, "`learning_rate` must be > 0, got -1.0"]
    with pytest.raises(ValidationError) as e:
        build_ppo_config(PPOOptions(precision="fp16"), {"learning_rate": -1.0}, tmp_path)
    assert e.value.problems == [fix, "`learning_rate` must be > 0, got -1.0"]


# -- frozen backbone + trained head (the default) ----------------------------------------------


def test_head_fit_finds_the_direction_that_separates_the_pairs():
    import torch

    from rlhf.reward_head import fit_head

    g = torch.Generator().manual_seed(0)
    n, h = 200, 16
    rejected = torch.randn(n, h, generator=g)
    chosen = torch.randn(n, h, generator=g)
    chosen[:, 3] += 2.0  # the preferred side is higher along dimension 3 only
    fit = fit_head(chosen, rejected, [0.0] * n, groups=[i // 4 for i in range(n)])
    assert int(fit.weight.abs().argmax()) == 3 and fit.weight[3] > 0
    assert fit.validation_pairs == 200  # cross-validated: every pair once, by a head that never saw its prompt
    assert fit.validation_accuracy >= 0.85
    test_r, test_c = torch.randn(100, h, generator=g), torch.randn(100, h, generator=g)
    test_c[:, 3] += 2.0
    assert float(((test_c @ fit.weight) > (test_r @ fit.weight)).float().mean()) >= 0.85


def test_head_run_writes_a_reloadable_model_and_an_honest_report(tiny_model_dir, tmp_path, store):
    export = marker_export(store, tmp_path)
    run = train_reward(export, RewardOptions(model=str(tiny_model_dir)))
    s = read_json(run / "summary.json")
    assert s["mode"] == "head" and s["stop"] == {"reason": "completed"}
    assert s["train_pairs"] + s["test_pairs"] == 80 and s["head"]["epochs"] >= 1
    report = read_json(run / "eval_report.json")
    iv = s["eval_accuracy_interval"]
    assert iv["n"] == s["test_pairs"] < 30 and iv["low"] <= s["eval_accuracy"] <= iv["high"]
    # 20 held-out pairs cannot tell learning from luck, whatever the accuracy.
    assert s["learning"]["status"] == report["learning"]["status"] == "too_small"
    assert "too small" in s["learning"]["message"]
    # The saved model gives the report's scores: the head really is in model/score.
    from datasets import load_from_disk

    from rlhf.reward import evaluate_pairs

    model, tok = load_reward_model(run)
    assert model.config.reward_backbone_frozen is True
    rows = evaluate_pairs(model, tok, to_conversational(load_from_disk(str(export))["test"]))
    assert sum(r["r_chosen"] > r["r_rejected"] for r in rows) / len(rows) == s["eval_accuracy"]
    misranked = {m["comparison_id"]: m for m in report["misranked"]}
    for r in rows:
        if r["comparison_id"] in misranked:
            assert math.isclose(r["r_chosen"], misranked[r["comparison_id"]]["r_chosen"], rel_tol=1e-4, abs_tol=1e-5)
    stats = read_json(run / "reward_stats.json")
    assert stats["reward_std"] > 0 and stats["n_responses"] == 2 * s["train_pairs"]


def test_pooling_finds_the_response_and_pools_mean_and_max():
    import torch

    from rlhf.reward_head import pool, response_start

    marker = [7, 8]
    ids = torch.tensor([[0, 5, 7, 8, 3, 4, 9], [5, 7, 8, 6, 7, 8, 2]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    # After the LAST marker: row 0 from index 4, row 1 from index 6.
    assert response_start(ids, mask, marker).tolist() == [4, 6]
    h = torch.arange(14, dtype=torch.float32).reshape(1, 7, 2).repeat(2, 1, 1)  # h[t] = [2t, 2t+1]
    got = pool(h, mask, response_start(ids, mask, marker))
    # Row 0: positions 4, 5, 6 -> mean [10, 11], max [12, 13]; row 1: position 6 only.
    assert got.tolist() == [[10.0, 11.0, 12.0, 13.0], [12.0, 13.0, 12.0, 13.0]]
    # Sum pooling: row 0 [8 + 10 + 12, 9 + 11 + 13]; row 1 [12, 13].
    assert pool(h, mask, response_start(ids, mask, marker), "sum").tolist() == [[30.0, 33.0], [12.0, 13.0]]


def test_head_cross_validation_picks_the_kind_that_generalises():
    """Two feature kinds: `noise` separates the training pairs only by chance (more dimensions than
    pairs), `count` carries the preference in one dimension. Cross-validation over prompts must
    choose `count`, and report its validated accuracy over every training pair."""
    import torch

    from rlhf.reward_head import fit_head, pool_layer, pooling_of

    g = torch.Generator().manual_seed(1)
    n, h = 60, 8
    count_r = torch.randn(n, h, generator=g)
    count_c = count_r.clone()
    count_c[:, 0] += 1.0
    noise_c, noise_r = torch.randn(n, 200, generator=g), torch.randn(n, 200, generator=g)
    fit = fit_head(
        {"pool2": noise_c, "sum2": count_c}, {"pool2": noise_r, "sum2": count_r}, [0.0] * n, [i // 3 for i in range(n)]
    )
    assert fit.kind == "sum2" and fit.validation_pairs == n and fit.validation_accuracy == 1.0
    assert fit.candidates["pool2"] < 0.75
    assert (pool_layer("sum2"), pooling_of("sum2"), pool_layer("pool12"), pooling_of("pool12")) == (
        2,
        "sum",
        12,
        "mean_max",
    )
    assert (pool_layer("last"), pooling_of("last")) == (None, None)


@pytest.mark.parametrize(("kind", "pooling"), [("pool1", "mean_max"), ("sum1", "sum")])
def test_pooled_head_run_reloads_and_ppo_reads_it_from_the_reference_pass(
    tiny_model_dir, tmp_path, store, monkeypatch, kind, pooling
):
    """Forcing the pooled features (the tiny model's layer 1): the saved model/ reloads as the pooled
    reward model with the report's scores, and PPO's fused reference pass gives the same reward."""
    import torch
    from transformers import AutoModelForCausalLM

    import rlhf.reward_head as rh
    from rlhf.models import load_tokenizer
    from rlhf.ppo import _same_trunk, build_ppo_reward, chat_suffix_ids
    from rlhf.ppo_loop import append_end_of_turn
    from rlhf.reward import evaluate_pairs, reward_model_from

    real_fit = rh.fit_head
    monkeypatch.setattr(rh, "fit_head", lambda c, r, *a, **k: real_fit({kind: c[kind]}, {kind: r[kind]}, *a, **k))
    export = marker_export(store, tmp_path)
    run = train_reward(export, RewardOptions(model=str(tiny_model_dir)))
    s = read_json(run / "summary.json")
    assert s["head"]["features"] == kind
    model, tok = load_reward_model(run)
    assert type(model).__name__ == "PooledRewardModel" and model.config.reward_head["layer"] == 1
    assert model.config.reward_head["pooling"] == pooling
    from datasets import load_from_disk

    rows = evaluate_pairs(model, tok, to_conversational(load_from_disk(str(export))["test"]))
    assert sum(r["r_chosen"] > r["r_rejected"] for r in rows) / len(rows) == s["eval_accuracy"]
    # PPO: the separate reward (TRL's get_reward through PPOReward) == the fused reference pass.
    rm = reward_model_from(run / "model").eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert _same_trunk(rm, policy)
    ptok = load_tokenizer(tiny_model_dir)
    wrapped = build_ppo_reward(rm, ptok, mean=0.2, std=1.5, clip=5.0).eval()
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "thank you"}]
    full = list(ptok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
    suffix = chat_suffix_ids(ptok)
    query = list(
        ptok.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    ids = torch.tensor([full[: len(full) - len(suffix)]])
    from trl.experimental.utils import get_reward

    _, expected, _ = get_reward(wrapped, ids, ptok.pad_token_id, len(query))
    x, mask, pos, _ = append_end_of_turn(ids, ids != ptok.pad_token_id, ptok.eos_token_id, suffix)
    store_h: dict = {}
    trunk = policy.get_decoder()
    handle = rh.layer_output_hook(rh._decoder_layers(trunk), 0, store_h)
    with torch.no_grad():
        trunk(input_ids=x, attention_mask=mask, position_ids=pos)
    handle.remove()
    got = wrapped.score(rh.pool(store_h["h"], mask, torch.tensor([len(query)]), pooling)).squeeze(-1)
    assert torch.allclose(got, expected, atol=1e-5)
    # PPO's reference pass with token rewards: the same score, and each response token's share of it.
    from rlhf.ppo_loop import _lm_parts, reference_pass

    ctx, r_len = len(query), ids.shape[1] - len(query)
    ref_trunk, ref_head = _lm_parts(policy)
    fused = (wrapped.score, suffix, 1, pooling)
    with torch.no_grad():
        _, score, shares = reference_pass(
            ref_trunk, ref_head, fused, ids, ids, ctx, ptok.pad_token_id, ptok.eos_token_id, 1.0, per_token=True
        )
    assert torch.allclose(score, expected, atol=1e-5) and shares.shape == (1, r_len)
    contrib = rh.token_contributions(store_h["h"], mask, torch.tensor([ctx]), pooling, rm.score.weight) / 1.5
    assert torch.allclose(shares, contrib[:, ctx : ctx + r_len], atol=1e-5)
    # all tokens' shares (the end-of-turn suffix's too), offset by the normalisation and clipped: the score
    assert torch.allclose((contrib.sum(1) - 0.2 / 1.5).clamp(-5.0, 5.0), expected, atol=1e-4)


def test_token_contributions_split_the_pooled_score_exactly():
    """Hand-computed: positions 1-3 are the response (start 1). sum, w = (1, 10): w . h_t per token.
    mean_max, w = (mean: 3, 0 | max: 1, 2): mean part 3 * h_t[0] / 3; dimension 0's maximum 3 is at
    position 2 (+1 * 3), dimension 1's maximum 5 at position 3 (+2 * 5)."""
    import torch

    from rlhf.reward_head import pool, token_contributions

    h = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, -1.0], [2.0, 5.0]]])
    mask, start = torch.ones(1, 4, dtype=torch.long), torch.tensor([1])
    got = token_contributions(h, mask, start, "sum", torch.tensor([1.0, 10.0]))
    assert got.tolist() == [[0.0, 21.0, -7.0, 52.0]]
    w = torch.tensor([3.0, 0.0, 1.0, 2.0])
    got = token_contributions(h, mask, start, "mean_max", w)
    assert got.tolist() == [[0.0, 1.0, 6.0, 12.0]] and float(pool(h, mask, start) @ w) == 19.0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a bf16 PPO step: still exact float32
        for pooling, weight in (("sum", torch.tensor([1.0, 10.0])), ("mean_max", w)):
            got = token_contributions(h.bfloat16(), mask, start, pooling, weight)
            assert got.dtype == torch.float32
    assert got.tolist() == [[0.0, 1.0, 6.0, 12.0]]
    # any rows, padding included: the shares add up to the head's score
    torch.manual_seed(0)
    h = torch.randn(3, 7, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1] * 7, [0, 1, 1, 1, 0, 0, 0]])
    start = torch.tensor([3, 2, 2])
    for pooling, dim in (("sum", 5), ("mean_max", 10)):
        w = torch.randn(dim)
        shares = token_contributions(h, mask, start, pooling, w)
        assert torch.allclose(shares.sum(1), pool(h, mask, start, pooling) @ w, atol=1e-5)
        assert (shares[mask == 0] == 0).all() and (shares[:, :2] == 0).all()


def test_ties_teach_the_head_which_differences_do_not_matter():
    """Decisive pairs differ in both features (chosen = rejected + (1, 1)): either could be the
    reason. Ties differ in feature 1 only: so it is not. With the ties the head leans on feature 0."""
    import torch

    from rlhf.reward_head import fit_head, pair_losses

    torch.manual_seed(0)
    rej = torch.randn(8, 2)
    tie_b = torch.randn(8, 2)
    chosen = torch.cat([rej + torch.tensor([1.0, 1.0]), tie_b + torch.tensor([0.0, 1.0])])
    rejected = torch.cat([rej, tie_b])
    ties, margin, groups = [False] * 8 + [True] * 8, [0.0] * 16, list(range(16))
    without = fit_head(chosen[:8], rejected[:8], margin[:8], groups[:8]).weight
    with_ties = fit_head(chosen, rejected, margin, groups, ties=ties).weight
    assert without[1] > 0.5 * without[0] > 0
    assert abs(with_ties[1]) < 0.4 * with_ties[0]  # 0.49 vs 1.53 (without: 1.04 vs 1.47)
    # the tie loss: log 2 at equal rewards, the same either way round; decisive pairs as Bradley-Terry
    losses = pair_losses(
        torch.tensor([0.0, 2.0, -2.0, 2.0]), torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.tensor([True, True, True, False])
    )
    assert losses[0].item() == pytest.approx(math.log(2))
    assert losses[1].item() == pytest.approx(losses[2].item()) and losses[1] > losses[0]
    assert losses[3].item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_kept_ties_train_the_head_and_never_count_as_held_out_pairs(tiny_model_dir, tmp_path, store):
    """An export with ties (`ties: keep`): the head trains on them (train_ties), the held-out
    accuracy is over decisive pairs only, and a TRL fine-tune drops them."""
    import datasets

    export = marker_export(store, tmp_path)
    ds = datasets.load_from_disk(str(export))
    n_train, n_test = len(ds["train"]), len(ds["test"])

    def mark(split: str, every: int) -> datasets.Dataset:
        return ds[split].map(lambda ex, i: {"is_tie": i % every == 0}, with_indices=True)

    tied_export = tmp_path / "tied"
    datasets.DatasetDict({"train": mark("train", 3), "test": mark("test", 4)}).save_to_disk(str(tied_export))
    (tied_export / "manifest.json").write_text((export / "manifest.json").read_text())
    ties_train, ties_test = len(range(0, n_train, 3)), len(range(0, n_test, 4))
    s = read_json(train_reward(tied_export, RewardOptions(model=str(tiny_model_dir))) / "summary.json")
    assert (s["train_pairs"], s["train_ties"]) == (n_train - ties_train, ties_train)
    assert s["test_pairs"] == s["eval_accuracy_interval"]["n"] == n_test - ties_test
    s = read_json(
        train_reward(tied_export, RewardOptions(model=str(tiny_model_dir), freeze_backbone=False), max_steps=1)
        / "summary.json"
    )
    assert s["train_pairs"] == n_train - ties_train and s["test_pairs"] == n_test - ties_test
