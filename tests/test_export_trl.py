"""The exported dataset trains TRL's RewardTrainer as it is, in both formats (tiny model, 2 steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf.io import ExportOptions, export_preferences, import_preferences

WORDS = ["sky", "fox", "rain", "dog", "text", "world", "haiku", "users"]


def _store_with_pairs(store, tmp_path: Path, n: int = 24) -> None:
    """n pairs over n distinct prompts; every chosen reply holds the marker word 'good'."""
    lines = [
        {
            "prompt": f"Explain the {WORDS[i % 8]} number {i}.",
            "chosen": f"A good answer about {WORDS[i % 8]} {i}.",
            "rejected": f"A bad answer {i}.",
            "margin": i % 4,
        }
        for i in range(n)
    ]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert import_preferences(store, src).added == n


@pytest.mark.parametrize("fmt", ["conversational", "text"])
def test_reward_trainer_trains_on_export(store, tmp_path: Path, tiny_model_dir: Path, fmt: str) -> None:
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlhf.models import load_tokenizer

    _store_with_pairs(store, tmp_path)
    result = export_preferences(store, tmp_path / "export", ExportOptions(format=fmt, test_fraction=0.25))
    ds = load_from_disk(str(result.path))
    n_train = len(ds["train"])
    assert n_train + len(ds["test"]) == 24 and 0 < n_train < 24

    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=128,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["test"], processing_class=tok
    )

    # TRL drops (not truncates) pairs longer than max_length: none may be lost here.
    prepared = trainer.train_dataset
    assert len(prepared) == n_train
    assert "margin" in prepared.column_names  # the margin column reaches TRL's loss
    # What the reward model reads for the first pair: TRL appends `chosen` to `prompt`.
    row = ds["train"][0]
    seen = tok.decode(prepared[0]["chosen_ids"])
    if fmt == "text":
        # text: prompt + "\n" (our separator) + chosen + EOS, no chat template
        assert seen == row["prompt"] + "\n" + row["chosen"].lstrip("\n") + tok.eos_token
        assert row["chosen"].startswith("\n")
    else:
        # conversational: the chat template over [user prompt, assistant reply]
        assert seen == tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
        assert seen.startswith("<|im_start|>user\n")

    trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
