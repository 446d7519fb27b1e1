"""Stage configs: every shipped YAML loads; unknown keys and wrong types are refused all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.configs import build_options, parse_sets, read_yaml
from rlhf.errors import ValidationError, WorkbenchError
from rlhf.reward import RewardOptions, reward_config_fields

CONFIGS = sorted((Path(__file__).parents[1] / "pipelines" / "configs").glob("*.yaml"))


def stage_of(path: Path):
    if "_reward" in path.stem:
        return RewardOptions, reward_config_fields()
    if "_ppo" in path.stem:
        from rlhf.ppo import PPOOptions, ppo_config_fields

        return PPOOptions, ppo_config_fields()
    return None


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_says_how_to_run(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and ("rlhf " in text.splitlines()[1] or "python " in text.splitlines()[1])
    stage = stage_of(path)
    if stage is None:
        pytest.skip(f"{path.name} is not a stage config")
    options, trl = build_options(stage[0], read_yaml(path), {}, stage[1], path.name)
    assert isinstance(options, stage[0]) and isinstance(trl, dict)


def test_parse_sets_reads_yaml_scalars():
    assert parse_sets(["a=1", "b=2.5e-5", "c=true", "d=text", "e="]) == {
        "a": 1,
        "b": 2.5e-5,
        "c": True,
        "d": "text",
        "e": None,
    }
    with pytest.raises(ValidationError, match="expected KEY=VALUE"):
        parse_sets(["novalue"])


def test_unknown_keys_and_wrong_types_reported_together(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle: tiny\nlora: maybe\ntrl:\n  learning_rat: 1\n  learning_rate: 0.1\n")
    with pytest.raises(ValidationError) as e:
        build_options(RewardOptions, read_yaml(cfg), {"max_pairs": "ten"}, reward_config_fields(), "reward config")
    msg = str(e.value)
    assert len(e.value.problems) == 4
    for fragment in ("`modle`", "`trl.learning_rat`", "`lora` must be", "`max_pairs` must be"):
        assert fragment in msg


def test_sets_reach_our_options_and_trl_fields():
    options, trl = build_options(
        RewardOptions, {"lora": True}, {"lora_r": 4, "learning_rate": 1e-3}, reward_config_fields(), "x"
    )
    assert options.lora and options.lora_r == 4 and trl == {"learning_rate": 1e-3}


def test_impossible_option_values_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="`lora_r` must be >= 1"):
        build_options(RewardOptions, {"lora_r": 0}, {}, reward_config_fields(), "x")


def test_bad_yaml_files(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist"):
        read_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(WorkbenchError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(WorkbenchError, match="mapping"):
        read_yaml(tmp_path / "list.yaml")


def test_pipeline_script_help_is_fast():
    script = Path(__file__).parents[1] / "pipelines" / "train_reward.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "EXPORT_DIR" in r.stdout.upper()


ACCELERATE = sorted((Path(__file__).parents[1] / "pipelines" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_configs_parse_with_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    expected = {
        "single_gpu": "NO",
        "multi_gpu": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
        "fsdp": "FSDP",
        "multi_cpu": "MULTI_CPU",
    }[path.stem]
    assert cfg.distributed_type.value == expected
    assert "accelerate launch --config_file pipelines/accelerate/" in path.read_text()
    if expected == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(path.stem[-1])
