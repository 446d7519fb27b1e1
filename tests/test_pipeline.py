"""The pipeline (rlhf/pipeline.py): the quick round end to end on the tiny model, skip-if-done,
re-running only what a config change touches, round chaining, up-front validation, the simulated
annotator's labels (its rules: tests/test_annotators.py), the stop before PPO when the reward model
learned nothing, and the report's intervals, verdict banner and truth-beside-reward columns.

quick.yaml's tiny random model learns nothing by design (7 held-out pairs): the runs that need PPO
pass force=True."""

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


def run(config: Path, round: int | None = None, force: bool = True) -> tuple[Path, dict[int, dict[str, str]], float]:
    """run_pipeline (forced past the reward model's verdict unless told otherwise), recording each
    round's stage statuses ({round: {stage: last status}})."""
    from rlhf.pipeline import run_pipeline

    statuses: dict[int, dict[str, str]] = {}
    start = time.perf_counter()
    out = run_pipeline(
        config,
        round=round,
        progress=lambda n, stage, status: statuses.setdefault(n, {}).__setitem__(stage, status),
        force=force,
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


def test_report_shows_intervals_the_verdict_and_the_truth(quick) -> None:
    """quick.yaml: 24 pairs, test_fraction 0.25 -> a handful of held-out pairs: `too_small`, shown
    in a red banner (PPO ran because the fixture forced it); n and intervals on every proportion."""
    from rlhf.stats import fmt_proportion

    _, _, out, _, _ = quick
    report = json.loads((out / "report.json").read_text())
    rm = report["reward_model"]
    n = rm["test_pairs"]
    assert 0 < n < 30 and rm["learning"]["status"] == "too_small" and rm["forced"] is True
    assert rm["eval_accuracy_interval"]["n"] == n and rm["eval_accuracy_interval"]["value"] == rm["eval_accuracy"]
    assert rm["eval_accuracy_before_interval"]["n"] == n
    reward_record = json.loads((out / "5-reward" / "stage.json").read_text())
    assert reward_record["learning"] == rm["learning"] and reward_record["test_pairs"] == n
    # The evaluation: each policy against the start by the rule and by the reward model.
    ev = report["evaluation"]
    base, policy = ev["base"], ev["round 0"]
    assert base["rule_win_rate"] == {"value": 0.5, "n": 8, **_wilson(4, 8), "wins": 0, "ties": 8, "losses": 0}
    assert base["win_rate_rm"] == 0.5 and base["rm_win_rate"]["ties"] == 8
    w = policy["rule_win_rate"]
    assert w["n"] == 8 and w["wins"] + w["ties"] + w["losses"] == 8 and w["value"] == policy["win_rate_rule"]
    assert (w["wins"] + w["ties"] / 2) / 8 == w["value"]
    assert policy["rule"] == "complete_then_longer" and policy["rule_score_reference"] == base["rule_score"]
    assert policy["reward_mean_reference"] == base["reward_mean"]
    assert policy["length_reference"] == base["length_chars"]
    assert policy["length_ratio"] == pytest.approx(policy["length_chars"] / base["length_chars"])
    [row] = report["rounds"]
    assert row["win_rate_vs_base_rule_interval"] == w and row["reward_learning"] == "too_small"
    assert row["rule_score"] == policy["rule_score"] and row["rule_score_base"] == base["rule_score"]
    page = (out / "report.html").read_text()
    assert '<div class="banner bad" role="alert"><b>REWARD MODEL: TOO SMALL</b>' in page
    assert "PPO ran on it anyway (forced)" in page
    assert fmt_proportion(rm["eval_accuracy_interval"]) in page
    assert fmt_proportion(w) in page and "Truth vs reward model" in page
    assert "rule score (start → policy)" in page and "win rate vs start, rule" in page


def _wilson(k: float, n: int) -> dict[str, float]:
    from rlhf.stats import wilson_interval

    low, high = wilson_interval(k, n)
    return {"low": low, "high": high}


def test_labels_follow_the_simulated_annotator(quick) -> None:
    from rlhf.annotators import simulated_label
    from rlhf.store import Store

    home, _, out, _, _ = quick
    candidates = [json.loads(x) for x in (out / "2-generate" / "candidates.jsonl").read_text().splitlines()]
    labels = [json.loads(x) for x in (out / "3-label" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == len(candidates) == 24  # 24 prompts x 1 pair (K = 2)
    store = Store(f"sqlite:///{home / 'pipeline' / 'quick' / 'store.db'}")
    texts = {p["id"]: p["content"] for p in _prompts(store)}
    for c, lab in zip(candidates, labels):
        a, b = (c["a"], c["finish_a"]), (c["b"], c["finish_b"])
        expected = simulated_label("complete_then_longer", c["comparison"], texts[c["prompt_id"]], a, b, 0.1, 0)
        assert lab == expected
    record = json.loads((out / "3-label" / "stage.json").read_text())
    assert record["flipped"] == sum(x["flipped"] for x in labels)
    rationales = {x.rationale for x in _labels(store)}
    store.engine.dispose()
    assert rationales == {"simulated:complete_then_longer"}


def _prompts(store) -> list[dict]:
    from sqlalchemy import select

    from rlhf.schema import Prompt

    with store.session() as s:
        return [{"id": p.id, "content": p.content} for p in s.scalars(select(Prompt))]


def _labels(store) -> list:
    from sqlalchemy import select

    from rlhf.schema import Label

    with store.session() as s:
        return list(s.scalars(select(Label)))


def test_without_force_the_round_stops_before_ppo(quick) -> None:
    """A fresh pipeline (another name, same home) of the quick config: the reward model's verdict
    stops it after the reward stage, with the verdict's message; nothing of PPO is written."""
    from rlhf.errors import WorkbenchError

    home, _, _, _, _ = quick
    config = write_config(home / "quick-stop.yaml", name="quick-stop")
    with pytest.raises(WorkbenchError) as e:
        run(config, force=False)
    out = home / "pipeline" / "quick-stop" / "round-0"
    learning = json.loads((out / "5-reward" / "stage.json").read_text())["learning"]
    assert learning["status"] == "too_small"
    assert str(e.value) == learning["message"] + "; pass --force to run PPO anyway"
    assert sorted(p.name for p in out.iterdir()) == [f"{i}-{s}" for i, s in enumerate(BEFORE_PPO, 1)]
    assert not (out / "report.html").exists()


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
    # The SmolLM2 rounds label by a content rule; the tiny random model writes no lists: the length rule.
    rule = "complete_then_longer" if name == "quick.yaml" else "addresses_reader"
    assert (config.annotator.rule, config.annotator.noise) == (rule, 0.1)


def test_annotator_config_uses_the_annotators_rules() -> None:
    from rlhf import annotators
    from rlhf.pipeline import AnnotatorConfig

    assert AnnotatorConfig().rule == annotators.DEFAULT_RULE == "addresses_reader"
    for name in annotators.RULES:
        assert AnnotatorConfig(rule=name).problems() == []
    [problem] = AnnotatorConfig(rule="shorter").problems()
    assert problem == (
        "`rule` must be one of uses_list, addresses_reader, gives_numbers, complete_then_longer, got 'shorter'"
    )


def test_reward_verdict_of_a_summary_written_before_the_verdict() -> None:
    """An older summary.json (no `learning`, no interval) gets both computed the way rlhf.reward does;
    a newer one's are taken as written."""
    from rlhf.pipeline import reward_verdict
    from rlhf.stats import learning_verdict, proportion

    old = {"eval_accuracy": 0.8, "eval_accuracy_before": 0.5, "test_pairs": 100}
    v = reward_verdict(old)
    assert v["test_pairs"] == 100 and v["learning"] == learning_verdict(0.8, 100, 0.5)
    assert v["learning"]["status"] == "learned"
    assert v["eval_accuracy_interval"] == proportion(80, 100)
    assert v["eval_accuracy_before_interval"] == proportion(50, 100)
    new = {**old, "learning": {"status": "learned_nothing", "message": "m"}, "eval_accuracy_interval": {"n": 1}}
    assert reward_verdict(new)["learning"]["status"] == "learned_nothing"
    assert reward_verdict(new)["eval_accuracy_interval"] == {"n": 1}
    empty = reward_verdict({})
    assert empty["learning"]["status"] == "too_small" and empty["eval_accuracy_interval"]["value"] is None


def test_require_learning() -> None:
    from rlhf.errors import WorkbenchError
    from rlhf.pipeline import require_learning

    require_learning({"status": "learned", "message": "fine"}, force=False)
    nothing = {"status": "learned_nothing", "message": "the reward model LEARNED NOTHING measurable: ..."}
    with pytest.raises(WorkbenchError) as e:
        require_learning(nothing, force=False)
    assert str(e.value) == "the reward model LEARNED NOTHING measurable: ...; pass --force to run PPO anyway"
    require_learning(nothing, force=True)  # forced: no error
    with pytest.raises(WorkbenchError, match="too few; pass --force"):
        require_learning({"status": "too_small", "message": "too few"}, force=False)


def _report(learning: dict, evaluation: dict) -> dict:
    """A minimal round report for render_report_html."""
    from rlhf.stats import proportion

    return {
        "pipeline": "p",
        "config_file": "c.yaml",
        "round": 0,
        "annotator": {"name": "simulated", "rule": "uses_list", "noise": 0.1, "labels": 3, "choices": {}, "flipped": 0},
        "stages": {},
        "export": {},
        "reward_model": {
            "eval_accuracy_interval": proportion(40, 50),
            "eval_accuracy_before_interval": proportion(25, 50),
            "learning": learning,
        },
        "ppo": {"seconds_per_step": 1.0, "samples": []},
        "evaluation": evaluation,
        "rounds": [],
    }


def test_report_html_banners() -> None:
    from rlhf.pipeline import render_report_html
    from rlhf.stats import win_rate

    plots = dict.fromkeys(("rounds", "reward_model", "reward", "kl"), "")
    truth_up = {"reward_mean": 1.0, "reward_mean_reference": 0.0, "rule_score": 0.6, "rule_score_reference": 0.2}
    truth_down = {**truth_up, "rule_score": 0.1, "rule_win_rate": win_rate([0.0, 0.0, 0.5, 1.0])}
    learned = {"status": "learned", "message": "held-out accuracy 0.80 [0.67, 0.89] (n=50) is above 0.50"}
    page = render_report_html(_report(learned, {"base": {}, "round 0": truth_up}), plots)
    assert 'class="banner bad"' not in page and "<b>Reward model learned</b>" in page
    assert "0.80 [0.67, 0.89] (n=50)" in page and "0.50 [0.37, 0.63] (n=50)" in page
    nothing = {"status": "learned_nothing", "message": "the reward model LEARNED NOTHING measurable"}
    page = render_report_html(_report(nothing, {"base": {}, "round 0": truth_down}), plots)
    assert '<div class="banner bad" role="alert"><b>REWARD MODEL: LEARNED NOTHING</b>' in page
    assert "<b>REWARD UP, TRUTH DOWN</b> for round 0" in page
    assert "0.2 → 0.1" in page and "0.0 → 1.0" not in page and "0 → 1" in page
    assert "0.38 [0.09, 0.78] (n=4)" in page and "1 / 1 / 2" in page  # rule win rate: W / T / L


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
