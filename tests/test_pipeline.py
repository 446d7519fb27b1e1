"""The pipeline (rlhf/pipeline.py): the quick round end to end on the tiny model, skip-if-done,
re-running only what a config change touches, round chaining, up-front validation, and the
simulated annotator's rule and noise."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

QUICK = Path(__file__).parents[1] / "pipelines" / "configs" / "quick.yaml"
CONFIGS = Path(__file__).parents[1] / "pipelines" / "configs"
BEFORE_PPO = ["prompts", "generate", "label", "export", "reward"]
FROM_PPO = ["ppo", "evaluate", "report"]


def write_config(path: Path, **changes: dict) -> Path:
    """quick.yaml with sections updated (one level deep), written to `path`."""
    data = yaml.safe_load(QUICK.read_text())
    for section, values in changes.items():
        data[section] = {**(data.get(section) or {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(data))
    return path


def run(config: Path, round: int | None = None) -> tuple[Path, dict[int, dict[str, str]], float]:
    """run_pipeline, recording each round's stage statuses ({round: {stage: last status}})."""
    from rlhf.pipeline import run_pipeline

    statuses: dict[int, dict[str, str]] = {}
    start = time.perf_counter()
    out = run_pipeline(
        config, round=round, progress=lambda n, stage, status: statuses.setdefault(n, {}).__setitem__(stage, status)
    )
    return out, statuses, time.perf_counter() - start


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Round 0 of the quick pipeline, run once for the module: (home, config, round dir, statuses, seconds).

    The tests below build on this home in file order (skip, then a changed PPO section, then round 1)."""
    home = tmp_path_factory.mktemp("pipeline-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLHF_HOME", str(home))
        mp.delenv("RLHF_DB_URL", raising=False)
        shutil.copytree(tiny_model_dir, home / "models" / "tiny")  # the registry's tiny, built once per session
        config = write_config(home / "quick.yaml")
        out, statuses, seconds = run(config)
        yield home, config, out, statuses, seconds


def test_quick_round_runs_end_to_end(quick) -> None:
    home, _, out, statuses, seconds = quick
    assert out == home / "pipeline" / "quick" / "round-0"
    assert statuses[0] == {s: "done" for s in BEFORE_PPO + FROM_PPO}
    for i, stage in enumerate(BEFORE_PPO + FROM_PPO, 1):
        record = json.loads((out / f"{i}-{stage}" / "stage.json").read_text())
        assert record["stage"] == stage and record["inputs"] and record["output_hash"]
    assert (out / "4-export" / "dataset" / "manifest.json").exists()
    assert (out / "5-reward" / "run" / "model" / "config.json").exists()
    assert (out / "6-ppo" / "run" / "policy" / "config.json").exists()
    # The pipeline never resumes a stage: training checkpoints are deleted once the model is saved.
    assert not (out / "5-reward" / "run" / "checkpoints").exists()
    assert not (out / "6-ppo" / "run" / "checkpoints").exists()
    page = (out / "report.html").read_text()
    # Self-contained: the four plots are inline SVG, nothing is fetched.
    assert page.count("<svg") == 4 and "src=" not in page and "<script" not in page
    for title in ("PPO reward", "KL to the reference", "Reward-model accuracy", "win rate against the starting model"):
        assert title in page
    assert "simulated annotator" in page and "Before / after samples" in page
    # The same four plots as PNG files.
    pngs = json.loads((out / "8-report" / "stage.json").read_text())["pngs"]
    assert [Path(p).name for p in pngs] == ["reward.png", "kl.png", "reward_model.png", "rounds.png"]
    for p in pngs:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).parent == out / "plots"
    report = json.loads((out / "report.json").read_text())
    assert report["ppo"]["curves"]["objective/kl"] and report["ppo"]["curves"]["eval/reward_mean"]
    assert report["reward_model"]["eval_accuracy"] is not None
    assert [r["round"] for r in report["rounds"]] == [0]
    assert report["ppo"]["samples"] and {"reference", "policy"} <= set(report["ppo"]["samples"][0])


def test_labels_follow_the_simulated_annotator(quick) -> None:
    from rlhf.pipeline import simulated_label

    _, _, out, _, _ = quick
    candidates = [json.loads(x) for x in (out / "2-generate" / "candidates.jsonl").read_text().splitlines()]
    labels = [json.loads(x) for x in (out / "3-label" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == len(candidates) == 24  # 24 prompts x 1 pair (K = 2)
    for c, lab in zip(candidates, labels):
        assert lab == simulated_label(c["comparison"], (c["a"], c["finish_a"]), (c["b"], c["finish_b"]), 0.1, 0)
    record = json.loads((out / "3-label" / "stage.json").read_text())
    assert record["flipped"] == sum(x["flipped"] for x in labels)


def test_second_run_skips_every_stage(quick) -> None:
    _, config, out, _, _ = quick
    stamp = (out / "6-ppo" / "stage.json").stat().st_mtime_ns
    again, statuses, seconds = run(config)
    assert again == out
    assert statuses[0] == {s: "skipped" for s in BEFORE_PPO + FROM_PPO}
    assert (out / "6-ppo" / "stage.json").stat().st_mtime_ns == stamp
    assert seconds < 5  # no model is loaded


def test_changing_ppo_reruns_ppo_and_later_stages_only(quick) -> None:
    home, _, out, _, _ = quick
    ppo = yaml.safe_load(QUICK.read_text())["ppo"]
    changed = write_config(
        home / "quick-lr.yaml", name="quick", ppo={**ppo, "trl": {**ppo["trl"], "learning_rate": 5e-4}}
    )
    old_key = json.loads((out / "6-ppo" / "stage.json").read_text())["key"]
    _, statuses, _ = run(changed)
    assert statuses[0] == {**{s: "skipped" for s in BEFORE_PPO}, **{s: "done" for s in FROM_PPO}}
    record = json.loads((out / "6-ppo" / "stage.json").read_text())
    assert record["key"] != old_key and record["config"]["trl"]["learning_rate"] == 5e-4


def test_round_one_generates_from_round_zero_policy(quick) -> None:
    from sqlalchemy import select

    from rlhf.schema import Comparison, Completion
    from rlhf.store import Store

    home, config, _, _, _ = quick
    out, statuses, _ = run(config, round=1)
    root = home / "pipeline" / "quick"
    assert out == root / "round-1"
    # Round 0 is brought back to the config's PPO settings (the previous test changed them), then round 1 runs.
    assert statuses[0] == {**{s: "skipped" for s in BEFORE_PPO}, **{s: "done" for s in FROM_PPO}}
    assert statuses[1] == {s: "done" for s in BEFORE_PPO + FROM_PPO}
    policy = str(root / "round-0" / "6-ppo" / "run" / "policy")
    store = Store(f"sqlite:///{root / 'store.db'}")
    with store.session() as s:
        comps = list(s.scalars(select(Comparison).where(Comparison.round == 1)))
        models = set(s.scalars(select(Completion.model).where(Completion.id.in_([c.completion_a_id for c in comps]))))
    store.engine.dispose()
    assert len(comps) == 24 and models == {policy}
    assert json.loads((out / "6-ppo" / "run" / "config.json").read_text())["policy_path"] == policy
    export = json.loads((out / "4-export" / "stage.json").read_text())
    assert export["rounds"] == [0, 1]  # the reward model learns from both rounds' labels
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert set(report["evaluation"]) == {"base", "round 0", "round 1"}
    assert report["evaluation"]["base"]["win_rate_rm"] == 0.5  # the start against itself: all ties


def test_bad_config_fails_before_any_stage_naming_every_problem(home: Path, tmp_path: Path) -> None:
    from rlhf.errors import ValidationError
    from rlhf.pipeline import run_pipeline

    bad = write_config(
        tmp_path / "bad.yaml",
        prompts="no/such/prompts.jsonl",
        generation={"temperature": -1, "bogus": 1},
        annotator={"name": "alice", "noise": 1.5, "rule": "shorter"},
        export={"ties": "sometimes"},
        reward={"trl": {"learning_rate": 1e-3, "not_a_trl_field": 1}},
        ppo={"kl_target": -2, "policy": "tiny"},
        evaluation={"prompts": 0},
        extra_section={"x": 1},
    )
    with pytest.raises(ValidationError) as e:
        run_pipeline(bad)
    text = "\n".join(e.value.problems)
    for needle in (
        "extra_section",
        "no/such/prompts.jsonl",
        "generation: `temperature`",
        "generation: unknown option `bogus`",
        "annotator: `name` must start with `simulated`",
        "annotator: `rule`",
        "annotator: `noise`",
        "export: `ties`",
        "reward: unknown TRL config field `trl.not_a_trl_field`",
        "ppo: `policy` is set by the pipeline",
        "evaluation: `prompts`",
    ):
        assert needle in text, needle
    # `kl_target` is only checked once the section's fields parse: with `policy` refused it still is.
    assert "ppo: `kl_target`" in text
    assert not (home / "pipeline").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("name", ["quick.yaml", "round.yaml", "round_gpu.yaml"])
def test_shipped_configs_load(home: Path, name: str) -> None:
    from rlhf.pipeline import load_pipeline_config

    text = (CONFIGS / name).read_text()
    assert text.startswith("#") and f"rlhf pipeline run pipelines/configs/{name}" in text.split("\n\n")[0]
    config = load_pipeline_config(CONFIGS / name)
    assert config.annotator.name.startswith("simulated") and config.prompts == "demo"


def test_simulated_verdict_rule() -> None:
    from rlhf.pipeline import simulated_verdict

    # 1) ended by itself beats cut off, whatever the lengths: strength 2.
    assert simulated_verdict("short", "eos", "a much longer answer", "length") == ("A", 2)
    assert simulated_verdict("a much longer answer", "length", "short", "eos") == ("B", 2)
    # 2) both cut off (or both ended): the longer stripped text wins, strength 1.
    assert simulated_verdict("abc", "length", "abcdef", "length") == ("B", 1)
    assert simulated_verdict("abcdef", "eos", "abc", "eos") == ("A", 1)
    # 3) "  ab " strips to 2 characters, like "xy": a tie (no strength).
    assert simulated_verdict("  ab ", "eos", "xy", "eos") == ("tie", None)


def test_simulated_noise_flips_with_the_seeded_draw() -> None:
    from rlhf.pipeline import flip_draw, simulated_label

    # random.Random("0:<id>").random(): id 1 -> 0.1894, 2 -> 0.4752, 3 -> 0.3220, 4 -> 0.6719.
    assert [round(flip_draw(0, i), 4) for i in (1, 2, 3, 4)] == [0.1894, 0.4752, 0.322, 0.6719]
    longer_b = (("abc", "length"), ("abcdef", "length"))  # the rule says B
    # noise 0.3: draws below 0.3 flip -> id 1 (0.189) flips to A; ids 2 (0.475), 3 (0.322), 4 (0.672) stay B.
    assert [simulated_label(i, *longer_b, noise=0.3, seed=0)["choice"] for i in (1, 2, 3, 4)] == ["A", "B", "B", "B"]
    # noise 0.5: ids 1, 2, 3 flip; 4 stays.
    assert [simulated_label(i, *longer_b, noise=0.5, seed=0)["choice"] for i in (1, 2, 3, 4)] == ["A", "A", "A", "B"]
    assert all(simulated_label(i, *longer_b, noise=0.0, seed=0)["choice"] == "B" for i in range(1, 50))
    assert all(simulated_label(i, *longer_b, noise=1.0, seed=0)["choice"] == "A" for i in range(1, 50))
    # Another seed, other draws: seed 7 gives id 1 -> 0.989 (no flip at 0.5), id 2 -> 0.251 (flip).
    assert [simulated_label(i, *longer_b, noise=0.5, seed=7)["choice"] for i in (1, 2)] == ["B", "A"]
    # A tie has no side to flip.
    tie = simulated_label(1, ("ab", "eos"), ("xy", "eos"), noise=1.0, seed=0)
    assert tie == {"comparison": 1, "choice": "tie", "strength": None, "flipped": False}


def test_round_window_hand_computed() -> None:
    from rlhf.pipeline import round_window

    assert round_window(10, 0, 4) == [0, 1, 2, 3]
    assert round_window(10, 1, 4) == [4, 5, 6, 7]
    assert round_window(10, 2, 4) == [8, 9, 0, 1]  # wraps around the pool's end
    assert round_window(10, 5, 4) == [0, 1, 2, 3]  # 5 x 4 = 20 = 0 mod 10
    assert round_window(10, 3, None) == list(range(10))
    assert round_window(10, 3, 12) == list(range(10))
    assert round_window(0, 0, 4) == []


def test_rounds_label_new_prompts_and_evaluation_prompts_are_held_out(quick) -> None:
    """quick.yaml: 160 demo prompts, evaluation.prompts 8 and ppo.eval_prompts 8 -> the last 8 are
    held out, the pool is the first 152; round 0 labels pool[0:24], round 1 pool[24:48]."""
    from sqlalchemy import select

    from rlhf.schema import Comparison, Prompt
    from rlhf.store import Store

    home, config, _, _, _ = quick
    run(config, round=1)  # up to date after the previous test: only skips
    root = home / "pipeline" / "quick"
    store = Store(f"sqlite:///{root / 'store.db'}")
    with store.session() as s:
        ids = list(s.scalars(select(Prompt.id).order_by(Prompt.id)))
        contents = {p.id: p.content for p in s.scalars(select(Prompt))}
        by_round = {n: set(s.scalars(select(Comparison.prompt_id).where(Comparison.round == n))) for n in (0, 1)}
    store.engine.dispose()
    assert len(ids) == 160
    pool, held = ids[:152], ids[152:]
    assert by_round[0] == set(pool[:24]) and by_round[1] == set(pool[24:48])
    for n in (0, 1):
        gen = json.loads((root / f"round-{n}" / "2-generate" / "stage.json").read_text())
        assert gen["prompts"] == {"pool": 152, "held_out": 8, "first": 24 * n, "count": 24}
        ppo_prompts = [json.loads(x) for x in (root / f"round-{n}" / "6-ppo" / "prompts.jsonl").open()]
        assert [p["prompt"] for p in ppo_prompts if p["split"] == "train"] == [contents[i] for i in pool]
        assert [p["prompt"] for p in ppo_prompts if p["split"] == "test"] == [contents[i] for i in held]
        ppo_cfg = json.loads((root / f"round-{n}" / "6-ppo" / "run" / "config.json").read_text())
        assert ppo_cfg["prompts"]["train"] + ppo_cfg["prompts"]["skipped_too_long"] == 152  # too long for tiny
        assert ppo_cfg["prompts"]["eval"] == 8
        evaluated = json.loads((root / f"round-{n}" / "7-evaluate" / "evaluation.json").read_text())["responses"]
        assert [e["prompt"] for e in evaluated] == [contents[i] for i in held]
    report = json.loads((root / "round-1" / "report.json").read_text())
    assert report["prompts"] == {"pool": 152, "held_out": 8, "first": 24, "count": 24}
    assert "the last 8 prompts are held out" in (root / "round-1" / "report.html").read_text()
