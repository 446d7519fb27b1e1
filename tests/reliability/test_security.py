"""Security at the function level: tokens, inactive annotators, other people's labels, path
traversal, upload checks, configs refused before any work."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from labeling_seed import seed_labeling
from sqlalchemy import select, text

from rlhf.configs import build_options
from rlhf.errors import ValidationError, WorkbenchError
from rlhf.home import inside_home
from rlhf.schema import Annotator


def test_tokens_are_random_unique_and_stored_only_hashed(store):
    tokens = [store.add_annotator(f"user{i}")[1] for i in range(50)]
    assert len(set(tokens)) == 50
    assert all(len(t) >= 32 for t in tokens)  # token_urlsafe(24): 192 random bits
    with store.session() as s:
        hashes = list(s.scalars(select(Annotator.token_hash).order_by(Annotator.id)))
        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM annotators")) for v in row)
    assert hashes == [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
    assert not any(t in dump for t in tokens)  # the plain token is nowhere in the table
    assert all(store.authenticate(t).name == f"user{i}" for i, t in enumerate(tokens))
    assert store.authenticate(tokens[0][:-1]) is None and store.authenticate("") is None


def test_revoked_token_and_inactive_annotator_are_refused(store):
    seed = seed_labeling(store, n_prompts=2)
    aid, token = seed.annotator_ids[0], seed.annotator_tokens[0]
    new = store.rotate_token(aid)
    assert store.authenticate(token) is None and store.authenticate(new).id == aid
    store.set_annotator_active(aid, False)
    assert store.authenticate(new) is None
    with pytest.raises(WorkbenchError, match="deactivated"):
        store.save_label(seed.comparison_ids[0], aid, "A")


def test_an_annotator_cannot_see_or_undo_anothers_labels(store):
    seed = seed_labeling(store, n_prompts=3, required=2, n_annotators=2)
    a1, a2 = seed.annotator_ids
    lab = store.save_label(seed.comparison_ids[0], a1, "A", rationale="private note")
    # What the label page reads for a2: nothing of a1's.
    assert store.last_label(a2) is None
    assert store.annotator_progress(a2).done_total == 0
    with pytest.raises(WorkbenchError, match="not one of your labels"):
        store.discard_label(lab.id, a2)
    assert store.get_label(lab.id).status == "submitted"


def test_inside_home_refuses_traversal_absolute_paths_and_symlinks_out(tmp_path):
    home = tmp_path / "home"
    (home / "exports").mkdir(parents=True)
    assert inside_home(Path("exports/a"), home) == home / "exports" / "a"
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, home / "exports" / "link")
    for bad in ["../outside", "exports/../../outside", "/etc/passwd", str(outside), "exports/link/x"]:
        with pytest.raises(WorkbenchError, match="outside the data home"):
            inside_home(Path(bad), home)


@dataclass
class FakeUpload:
    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def getvalue(self) -> bytes:
        return self.data


def test_upload_checks_refuse_oversized_wrong_type_and_binary_files():
    from labeling_ui.components import check_upload

    assert check_upload(FakeUpload("p.jsonl", b'{"prompt": "hi"}\n'), (".jsonl", ".csv")) == []
    assert "over the 1 MB limit" in " ".join(check_upload(FakeUpload("p.csv", b"x" * (2 << 20)), (".csv",), max_mb=1))
    assert "expected a .jsonl" in " ".join(check_upload(FakeUpload("p.exe", b"MZ"), (".jsonl",)))
    assert "binary" in " ".join(check_upload(FakeUpload("p.csv", b"prompt\n\x00\x01"), (".csv",)))


def test_configs_name_every_problem_before_any_work():
    from rlhf.ppo import PPOOptions, ppo_config_fields
    from rlhf.reward import RewardOptions, reward_config_fields

    with pytest.raises(ValidationError) as e:
        build_options(
            RewardOptions,
            {"no_such_knob": 1, "lora_r": "big", "trl": {"nope": 2}},
            {"x": 1},
            reward_config_fields(),
            "reward config",
        )
    assert len(e.value.problems) == 4  # unknown top-level, unknown trl.*, unknown --set, wrong type
    with pytest.raises(ValidationError, match="lora_r"):
        build_options(RewardOptions, {"lora_r": 0}, {}, reward_config_fields(), "reward config")
    with pytest.raises(ValidationError, match="kl_horizon"):
        build_options(PPOOptions, {"kl_horizon": 0}, {}, ppo_config_fields(), "PPO config")


def test_negative_learning_rate_is_refused_before_training(tmp_path):
    from rlhf.reward import RewardOptions, build_reward_config

    with pytest.raises(ValidationError, match="learning_rate"):
        build_reward_config(RewardOptions(), {"learning_rate": -1e-5}, tmp_path / "out", has_eval=False)
    assert not (tmp_path / "out").exists()
