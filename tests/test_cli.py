"""The `rlhf` command line: the foundation commands end to end on a temporary data home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.cli import DEMO_PROMPTS, main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_commands_need_an_initialised_store(home, capsys):
    code, _, err = run(capsys, "status")
    assert code == 2 and "rlhf init" in err and "Traceback" not in err


def test_init_then_status(home, capsys):
    code, out, _ = run(capsys, "init")
    assert code == 0 and str(home) in out and "schema v1" in out
    code, out, _ = run(capsys, "status")
    assert code == 0 and "comparisons_pending" in out


def test_annotator_token_printed_once_and_works(home, capsys):
    from rlhf.store import Store

    run(capsys, "init")
    code, out, _ = run(capsys, "annotators", "add", "alice", "--admin")
    assert code == 0
    token = out.strip().splitlines()[-1].split(": ")[-1]
    assert Store().authenticate(token).role == "admin"
    code, out, _ = run(capsys, "annotators", "list")
    assert "alice" in out and token not in out
    code, _, err = run(capsys, "annotators", "add", "alice")
    assert code == 2 and "already exists" in err
    code, out, _ = run(capsys, "annotators", "rotate-token", "alice")
    new = out.strip().split(": ")[-1]
    assert Store().authenticate(token) is None and Store().authenticate(new) is not None
    assert run(capsys, "annotators", "deactivate", "alice")[0] == 0
    assert Store().authenticate(new) is None
    code, _, err = run(capsys, "annotators", "deactivate", "bob")
    assert code == 2 and "no annotator named 'bob'" in err


def test_demo_prompts_ship_with_the_package_and_import(home, capsys):
    rows = [json.loads(line) for line in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 150
    cats = {r["category"] for r in rows}
    assert {"advice", "explanation", "summarization", "rewriting", "creative", "refusal"} <= cats
    run(capsys, "init")
    code, out, _ = run(capsys, "prompts", "import", str(DEMO_PROMPTS), "--dry-run")
    assert code == 0 and f"read {len(rows)}, would add {len(rows)}" in out
    code, out, _ = run(capsys, "prompts", "import", str(DEMO_PROMPTS))
    assert f"added {len(rows)}, already present 0" in out
    code, out, _ = run(capsys, "prompts", "import", str(DEMO_PROMPTS))
    assert f"added 0, already present {len(rows)}" in out


def test_bad_import_exits_2_names_the_line_and_stores_nothing(home, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\nnot json\n', encoding="utf-8")
    run(capsys, "init")
    code, _, err = run(capsys, "prompts", "import", str(bad))
    assert code == 2 and "line 2" in err and "line 3" in err and "Traceback" not in err
    from rlhf.store import Store

    assert Store().counts()["prompts"] == 0


def test_generate_then_label_then_export_round_trip(home, tiny_model_dir, tmp_path, capsys):
    import datasets

    from rlhf.store import Store

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(6)))
    run(capsys, "init")
    run(capsys, "prompts", "import", str(prompts))
    code, out, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--limit", "4")
    assert code == 0 and out.startswith("4 prompts -> 8 completions")
    code, out, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--limit", "4")
    assert out.startswith("2 prompts")  # resumed: only the remaining two
    store = Store()
    a, _ = store.add_annotator("ann")
    with store.session() as s:
        from sqlalchemy import select

        from rlhf.schema import Comparison

        ids = list(s.scalars(select(Comparison.id)))
    for cid in ids:
        store.save_label(cid, a.id, "A", 2)
    out_dir = tmp_path / "export"
    code, out, _ = run(capsys, "export", str(out_dir), "--test-fraction", "0.5")
    assert code == 0, out
    ds = datasets.load_from_disk(str(out_dir))
    assert len(ds["train"]) + len(ds["test"]) == len(ids)
    code, _, err = run(capsys, "export", str(out_dir))
    assert code == 2 and "--force" in err  # refuses to overwrite
    assert run(capsys, "export", str(out_dir), "--force")[0] == 0


def test_usage_error_exit_code_and_help_is_fast(home):
    env = {**os.environ, "RLHF_HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-m", "rlhf", "generate", "--top-p", "x"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rlhf", "--help"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and "generate" in r.stdout
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()}


@pytest.mark.slow
def test_models_prepare_and_list_the_embedded_model(home, capsys):
    code, out, _ = run(capsys, "models", "prepare", "default")
    assert code == 0 and "ready at" in out
    code, out, _ = run(capsys, "models", "list")
    assert "smollm2-135m-instruct" in out and "yes" in out
    assert Path(home / "models" / "smollm2-135m-instruct" / "model.safetensors").exists()


def test_train_reward_then_inspect(home, tmp_path, capsys):
    from reward_data import write_marker_preferences

    config = Path(__file__).parents[1] / "pipelines" / "configs" / "tiny_reward.yaml"
    run(capsys, "init")
    run(capsys, "preferences", "import", str(write_marker_preferences(tmp_path / "prefs.jsonl", 40)))
    export = tmp_path / "export"
    assert run(capsys, "export", str(export), "--test-fraction", "0.25")[0] == 0
    code, out, err = run(
        capsys, "train-reward", str(export), "--config", str(config), "--max-steps", "4", "--set", "logging_steps=1"
    )
    assert code == 0, err
    assert "reward run:" in out and "steps 4" in out
    code, out, _ = run(capsys, "inspect", "reward", "latest")
    assert code == 0 and "accuracy by strength" in out and "calibration" in out and "length bias" in out
    code, _, err = run(capsys, "train-reward", str(export), "--set", "learnig_rate=1")
    assert code == 2 and "unknown option `learnig_rate`" in err
    code, _, err = run(capsys, "inspect", "reward", "no-such-run")
    assert code == 2 and "no reward run" in err


def test_ppo_then_inspect_then_resume(home, tmp_path, capsys):
    from reward_data import write_marker_preferences

    configs = Path(__file__).parents[1] / "pipelines" / "configs"
    run(capsys, "init")
    run(capsys, "preferences", "import", str(write_marker_preferences(tmp_path / "prefs.jsonl", 40)))
    export = tmp_path / "export"
    run(capsys, "export", str(export), "--test-fraction", "0.25")
    assert (
        run(capsys, "train-reward", str(export), "--config", str(configs / "tiny_reward.yaml"), "--max-steps", "2")[0]
        == 0
    )
    code, out, err = run(
        capsys, "ppo", "--config", str(configs / "tiny_ppo.yaml"), "--max-steps", "2", "--set", "save_steps=1"
    )
    assert code == 0, err
    assert "PPO run:" in out
    ppo_dir = Path(out.split("PPO run: ")[1].split()[0])
    code, out, _ = run(capsys, "inspect", "ppo", "latest")
    assert code == 0 and "objective/kl" in out and "kl/coef" in out
    # Resume the finished run for two more steps: its saved options and reward run are reused.
    code, out, err = run(capsys, "ppo", "--resume", str(ppo_dir), "--max-steps", "4")
    assert code == 0, err
    steps = [
        json.loads(x)["step"]
        for x in (ppo_dir / "metrics.jsonl").read_text().splitlines()
        if "objective/kl" in json.loads(x)
    ]
    assert steps == [1, 2, 3, 4]
    code, _, err = run(capsys, "ppo", "--set", "kl_target=-1")
    assert code == 2 and "kl_target" in err


def test_pipeline_check_and_quick_run(home, tmp_path, capsys):
    configs = Path(__file__).parents[1] / "pipelines" / "configs"
    code, out, _ = run(capsys, "pipeline", "check", str(configs / "quick.yaml"))
    assert code == 0 and "ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngeneration:\n  temperatur: 1\nreward:\n  lora_r: 0\n")
    code, _, err = run(capsys, "pipeline", "run", str(bad))
    assert code == 2 and "temperatur" in err and "lora_r" in err
    assert not (home / "pipeline").exists()  # nothing ran
    # The tiny model's reward model cannot show learning: the round stops before PPO, unless --force.
    code, _, err = run(capsys, "pipeline", "run", str(configs / "quick.yaml"))
    assert code == 2 and "too small to tell" in err and "pass --force to run PPO anyway" in err
    assert "ppo: running" not in err
    code, out, err = run(capsys, "pipeline", "run", str(configs / "quick.yaml"), "--force")
    assert code == 0, err
    assert "reward: skipped" in err and "ppo: done" in err  # the stopped run's stages are reused
    assert Path(out.split("report: ")[1].split()[0]).exists() and "reward model: too_small" in out
    code, _, err = run(capsys, "pipeline", "run", str(configs / "quick.yaml"), "--force")
    assert code == 0 and "running" not in err and "skipped" in err  # second run: nothing to do


def test_generate_system_prompts_cycle_over_the_candidates(home, tiny_model_dir, tmp_path, capsys):
    """`--system-prompt` (repeatable): candidate k of each prompt is generated under the k-th one
    (mod n), and each completion records the one it had; the stored prompt is the user's own."""
    from sqlalchemy import select

    from rlhf.schema import Completion, Prompt
    from rlhf.store import Store

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(2)))
    run(capsys, "init")
    run(capsys, "prompts", "import", str(prompts))
    code, out, err = run(
        capsys, "generate", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "-k", "3",
        "--system-prompt", "", "--system-prompt", "Answer as a list.",
    )  # fmt: skip
    assert code == 0, err
    with Store().session() as s:
        rows = s.execute(select(Completion.prompt_id, Completion.id, Completion.settings).order_by(Completion.id)).all()
        contents = {p.content for p in s.scalars(select(Prompt))}
    by_prompt: dict[int, list[str | None]] = {}
    for pid, _, settings in rows:
        by_prompt.setdefault(pid, []).append(settings.get("system_prompt"))
        assert "system_prompts" not in settings
    assert sorted(by_prompt.values()) == [["", "Answer as a list.", ""]] * 2
    assert contents == {"Question 0?", "Question 1?"}
