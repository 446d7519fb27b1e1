"""The PPO runs page: admins only; the warning rules, samples, run comparison and job control as pure
functions with hand-computed values; the page in-process (AppTest) on hand-made run folders; jobs
started and stopped as real background processes (a sleeping Python stands in for `rlhf ppo`)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from labeling_seed import APP
from ppo_run import (
    KL_BUDGET,
    PROMPTS,
    RUNAWAY_KL,
    RUNAWAY_LENGTH,
    TIMES,
    XSS_PROMPT,
    XSS_RESPONSE,
    write_fake_ppo_run,
    write_fake_reward_folder,
)
from streamlit.testing.v1 import AppTest

from labeling_ui import ppo_dashboard as pdash
from labeling_ui import process_jobs as pj

PAGE = "app_pages/ppo.py"
SLEEPER = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
# TRL's PPOConfig fields these tests name, so that they need not import TRL (5 s): the shipped configs'
# `trl:` keys and the overrides typed below.
TRL_FIELDS = {"learning_rate", "kl_coef", "response_length"}.union(
    *((yaml.safe_load(p.read_text()).get("trl") or {}).keys() for p in pdash.list_ppo_configs())
)


@pytest.fixture
def ppo_root(home) -> Path:
    return home / "runs" / "ppo"


@pytest.fixture(autouse=True)
def no_stray_jobs(home):
    """Whatever a test started is gone after it (kill the process groups still running)."""
    yield
    jobs_root = home / "jobs"
    if jobs_root.is_dir():
        for job in pj.list_jobs(jobs_root)[0]:
            if job.active:
                os.killpg(job.pid, signal.SIGKILL)
                pj._CHILDREN.pop(job.pid, None)


@pytest.fixture
def fast_checks(monkeypatch):
    """TRL's PPOConfig field names without importing TRL (5 s): the ones these tests set."""
    monkeypatch.setattr(pdash, "trl_field_names", lambda: TRL_FIELDS)


def _ppo_page(open_app, seeded) -> AppTest:
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def _warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


def _runs_table(at: AppTest):
    return next(d.value for d in at.dataframe if "state" in d.value.columns)


def _wait(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# -- warning rules ---------------------------------------------------------------------------------


def _kl_rows(values):
    return [{"step": i + 1, "objective/kl": v} for i, v in enumerate(values)]


def test_kl_rules_budget_target_and_fast_rise():
    # Last KL 12 > budget 10: the budget rule (and not the target rule as well).
    # Rise: mean of the last 3 = (3 + 5 + 12) / 3 = 6.667 >= 2 x mean of the 3 before (1.0), +5.667 >= 1 nat.
    got = pdash.kl_warnings(_kl_rows(RUNAWAY_KL), kl_target=4.0, kl_budget=KL_BUDGET)
    assert [w.rule for w in got] == ["kl_budget", "kl_rising"]
    assert got[0].message.startswith("KL 12.00 nats at step 6 is above the run's budget (kl_budget = 10)")
    assert got[1].message == (
        "KL is rising fast: 6.67 nats on average over the last 3 steps, 1.00 over the 3 before (up to step 6)."
    )
    # No budget: 12 > 2 x target 4 = 8 -> the target rule.
    assert [w.rule for w in pdash.kl_warnings(_kl_rows(RUNAWAY_KL), kl_target=4.0)] == ["kl_target", "kl_rising"]
    # 8.0 is not above 2 x 4 (strictly above only); 8.01 is.
    assert pdash.kl_warnings(_kl_rows([8.0]), kl_target=4.0) == []
    assert [w.rule for w in pdash.kl_warnings(_kl_rows([8.01]), kl_target=4.0)] == ["kl_target"]
    # Rising rule edges: 1.0 -> 2.0 doubles and rises 1 nat exactly: warns; 0.01 -> 0.05 is x5 but 0.04 nats: not.
    assert pdash.kl_rise([1, 1, 1, 2, 2, 2]) == (1.0, 2.0)
    assert pdash.kl_rise([0.01] * 3 + [0.05] * 3) is None
    assert pdash.kl_rise([2, 2, 2, 3.9, 3.9, 3.9]) is None  # +1.9 nats but x1.95 < 2
    assert pdash.kl_rise([1, 1, 1, 2, 2]) is None  # fewer than 2 x 3 steps
    # Only PPO steps count: eval-only rows (no objective/kl) and NaN kept as text are skipped.
    rows = [{"step": 0, "eval/kl_to_ref": 50.0}, {"step": 1, "objective/kl": "nan"}, {"step": 2, "objective/kl": 1}]
    assert pdash.kl_warnings(rows, kl_target=0.1, kl_budget=None)[0].message.startswith("KL 1.00 nats at step 2")
    assert pdash.kl_warnings([], kl_target=1.0) == []


def test_length_rules_drift_and_limit():
    def rows(values):
        return [{"step": 2 * i, "eval/response_length": v} for i, v in enumerate(values)]

    # (19.5 - 10) / 10 = +95% > 50%; 19.5 >= 0.95 x 20 = 19: both rules.
    got = pdash.length_warnings(rows(RUNAWAY_LENGTH), response_length=20)
    assert [w.rule for w in got] == ["length_drift", "length_at_max"]
    assert got[0].message.startswith(
        "Responses grew by 95% since step 0: 10.0 -> 19.5 tokens on the held-out prompts at step 6."
    )
    assert got[1].message.startswith("Responses hit the length limit: 19.5 tokens on average at step 6, ")
    # Shrinking: (4 - 10) / 10 = -60%.
    assert pdash.length_warnings(rows([10.0, 4.0]))[0].message.startswith("Responses shrank by 60% since step 0")
    # Exactly +50% is not "more than 50%"; 18.9 < 19 is under the limit.
    assert pdash.length_warnings(rows([10.0, 15.0]), response_length=20) == []
    assert pdash.length_warnings(rows([18.0, 18.9]), response_length=20) == []
    # A single evaluation cannot drift, but can sit at the limit.
    assert [w.rule for w in pdash.length_warnings(rows([19.0]), response_length=20)] == ["length_at_max"]
    assert pdash.length_warnings([{"step": 1, "objective/kl": 1.0}], response_length=20) == []


def test_run_warnings_read_thresholds_from_config(tmp_path):
    steady = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "steady"))
    assert pdash.run_warnings(steady) == []
    runaway = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "runaway", RUNAWAY_KL, RUNAWAY_LENGTH))
    assert [w.rule for w in pdash.run_warnings(runaway)] == ["kl_budget", "kl_rising", "length_drift", "length_at_max"]
    assert pdash.stop_message(steady.summary) is None
    msg = pdash.stop_message({"stop": {"reason": "kl_budget", "step": 6, "kl": 12.0, "kl_budget": 10.0}})
    assert msg == "Stopped by the KL budget at step 6: KL 12.00 > 10.00. Saved policy: the starting policy (step 0)."
    diverged = {"reason": "non_finite", "step": 3, "message": "training diverged at step 3: loss/value_avg = nan"}
    assert pdash.stop_message({"stop": diverged}) == "Stopped: training diverged at step 3: loss/value_avg = nan"
    assert pdash.stop_message({"stop": {"reason": "other"}}) == "Stopped: other."


# -- reading runs, samples, comparing -----------------------------------------------------------------


def test_samples_by_step_and_one_prompt_across_steps(tmp_path):
    run = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "r"))
    assert run.problems == [] and run.finished and run.checkpoints() == ["checkpoint-4", "checkpoint-6"]
    assert pdash.sample_steps(run.samples) == [0, 2, 4, 6]
    at4 = pdash.samples_at(run.samples, 4)
    assert at4.to_dict("records") == [
        {"prompt": XSS_PROMPT, "response": XSS_RESPONSE + " (step 4)", "reward": 0.4, "kl": 0.04, "length": 5},
        {"prompt": "Name a colour.", "response": "Blue. (step 4)", "reward": -0.1, "kl": 0.04, "length": 6},
    ]
    assert pdash.sample_prompts(run.samples) == PROMPTS
    history = pdash.prompt_history(run.samples, "Name a colour.")
    assert list(history.columns) == ["step", "response", "reward", "kl", "length"]
    assert list(history["step"]) == [0, 2, 4, 6]
    assert list(history["reward"]) == [-0.5, -0.3, -0.1, 0.1]  # 0.1 x step - 0.5
    assert list(history["response"]) == [f"Blue. (step {s})" for s in (0, 2, 4, 6)]
    assert pdash.samples_at(run.samples, 3).empty
    assert pdash.steps_done(run.metrics) == 6 and pdash.total_steps(run) == 6


def test_chart_data_and_rules(tmp_path):
    run = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "r"))
    reward = pdash.curves_frame(run.metrics, pdash.CHARTS["Reward"])
    scores = reward[reward["metric"] == "objective/scores"]
    assert list(scores["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(scores["value"]) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ev = reward[reward["metric"] == "eval/reward_mean"]
    assert list(ev["step"]) == [0, 2, 4, 6] and list(ev["value"]) == pytest.approx([0.1, 0.3, 0.5, 0.7])
    kl = pdash.curves_frame(run.metrics, ("objective/kl", "kl/coef"))
    assert list(kl[kl["metric"] == "objective/kl"]["value"]) == [2.0, 2.2, 2.1, 2.4, 2.3, 2.5]
    assert list(kl[kl["metric"] == "kl/coef"]["step"]) == [0, 1, 2, 3, 4, 5, 6]
    assert pdash.chart_rules(run, ("objective/kl",)) == {"kl_target": 4.0, "kl_budget": 10.0}
    assert pdash.chart_rules(run, ("eval/response_length",)) == {"response_length": 20}
    assert pdash.chart_rules(run, ("objective/entropy",)) == {}
    spec = pdash.curves_chart(kl, {"kl_target": 4.0}).to_dict()
    assert len(spec["layer"]) == 3  # the lines, the target's rule and its label


def test_compare_two_runs(tmp_path):
    a = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "a"))
    b = pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "b", RUNAWAY_KL, RUNAWAY_LENGTH, learning_rate=3e-3))
    table = pdash.compare_table([a, b]).set_index("quantity")
    assert list(table.columns) == ["a", "b"]
    assert table.loc["status"].tolist() == ["finished (completed)", "finished (completed)"]
    assert table.loc["learning_rate"].tolist() == ["0.001", "0.003"]
    assert table.loc["last objective/kl"].tolist() == ["2.500", "12.000"]
    # report.json (build_ppo_report of the step-0 and step-6 samples): reference rewards 0 and -0.5 -> -0.25;
    # tuned 0.6 and 0.1 -> 0.35; both prompts won -> 100%; KL (0.06 x 5 + 0.06 x 6) / 11 tokens = 0.06.
    assert table.loc["reward, reference"].tolist() == ["-0.250", "-0.250"]
    assert table.loc["reward, tuned"].tolist() == ["0.350", "0.350"]
    assert table.loc["reward gain"].tolist() == ["0.600", "0.600"]
    assert table.loc["win rate vs reference"].tolist() == ["100.0%", "100.0%"]
    assert table.loc["win rate, 95% interval"].tolist() == ["1.00 [0.34, 1.00] (n=2) · W/T/L 2/0/0"] * 2
    assert table.loc["KL to reference (per token)"].tolist() == ["0.060", "0.060"]
    frame = pdash.compare_frame([a, b])
    assert set(frame["run"]) == {"a", "b"} and set(frame["metric"]) == set(pdash.COMPARE_KEYS)
    kl_b = frame[(frame["run"] == "b") & (frame["metric"] == "objective/kl")]
    assert list(kl_b["value"]) == RUNAWAY_KL
    # An unfinished run: no summary or report numbers, steps from the metrics.
    (tmp_path / "a" / "summary.json").unlink()
    (tmp_path / "a" / "report.json").unlink()
    col = pdash.compare_table([pdash.load_ppo_run(tmp_path / "a")]).set_index("quantity")["a"]
    assert (col["status"], col["steps"], col["reward gain"]) == ("not finished", "6", "n/a")


def test_broken_files_are_problems_not_exceptions(tmp_path):
    path = write_fake_ppo_run(tmp_path / "r")
    (path / "summary.json").write_text('{"global_step": ', encoding="utf-8")
    (path / "report.json").write_text("[1, 2]", encoding="utf-8")
    lines = (path / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, '{"step": 1, "objective/kl"')  # a cut line in the middle: counted
    (path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "obj', encoding="utf-8")  # and at the end
    run = pdash.load_ppo_run(path)
    assert run.problems == [
        "summary.json is not valid JSON (Expecting value at line 1, column 17)",
        "report.json should hold a JSON object, not list",
        "metrics.jsonl: 1 unreadable line(s) skipped",
    ]
    assert run.finished and run.report is None and pdash.steps_done(run.metrics) == 6
    listing = pdash.list_ppo_runs(tmp_path)
    assert [(r.id, r.state, r.steps) for r in listing] == [("r", "finished", None)]  # summary unreadable


def test_list_runs_newest_first_and_live(tmp_path):
    write_fake_ppo_run(tmp_path / "20260101-000000-a")
    write_fake_ppo_run(tmp_path / "20260102-000000-b", finished=False)
    (tmp_path / ".tmp-folder").mkdir()
    runs = pdash.list_ppo_runs(tmp_path)
    table = pdash.runs_frame(runs)
    assert list(table["run"]) == ["20260102-000000-b", "20260101-000000-a"]
    assert list(table["state"]) == ["live", "finished (completed)"]
    assert table["steps"].isna().tolist() == [True, False] and table["steps"][1] == 6
    later = time.time() + pdash.LIVE_WINDOW_S + 1  # nothing written for 2 minutes: no longer live
    assert pdash.list_ppo_runs(tmp_path, now=later)[0].state == "not finished (stopped or crashed)"
    assert pdash.list_ppo_runs(tmp_path / "absent") == []


# -- the command and its checks --------------------------------------------------------------------


def test_build_command_and_request_checks(tmp_path):
    reward = write_fake_reward_folder(tmp_path / "reward")
    config = pdash.CONFIGS_DIR / "tiny_ppo.yaml"
    req = pdash.PPORequest(
        str(reward), str(config), "tiny", 5, {"kl_target": 3.0, "learning_rate": 1e-5}, "demo", "demo-abc123"
    )
    assert pdash.build_ppo_command(req, python="py") == [
        "py", "-m", "rlhf", "ppo", "--reward", str(reward), "--config", str(config), "--policy", "tiny",
        "--max-steps", "5", "--set", "kl_target=3.0", "--set", "learning_rate=1.0e-05", "--set", "name=demo-abc123",
    ]  # fmt: skip
    assert pdash.yaml_scalar(1e-5) == "1.0e-05" and pdash.yaml_scalar(True) == "true"  # what `--set` reads back
    trl = TRL_FIELDS
    assert pdash.request_problems(req, trl) == []
    bad = pdash.PPORequest(
        str(tmp_path / "missing"),
        str(tmp_path / "nope.yaml"),
        str(tmp_path / "no-model"),
        0,
        {"kl_target": "high", "bogus": 1, "name": "x"},
        "bad name!",
    )
    assert pdash.request_problems(bad, trl) == [
        "reward run missing has no model/ folder (did it finish?)",
        f"config file {tmp_path / 'nope.yaml'} does not exist",
        f"policy folder {tmp_path / 'no-model'} does not exist or holds no model (config.json)",
        "max steps must be >= 1, got 0",
        "run name 'bad name!': use 1-40 letters, digits, - or _",
        "`name` is set by the app; leave it out of the overrides",
        "unknown option `bogus` (--set); see the config's comments or `--help`",
        "`kl_target` must be float | None, got 'high'",
    ]
    assert pdash.parse_override_lines("# comment\nresponse_length=48\n\nlora=true") == (
        {"response_length": 48, "lora": True},
        [],
    )
    assert pdash.parse_override_lines("oops")[1] == ["`--set oops`: expected KEY=VALUE"]


# -- background processes ----------------------------------------------------------------------------


def test_job_status_table():
    assert pj.job_status(None, False, True) == "running"
    assert pj.job_status(None, True, True) == "stopping"
    assert pj.job_status(0, False, False) == "finished"
    assert pj.job_status(3, False, False) == "failed"
    assert pj.job_status(-15, True, False) == "stopped"  # stopped from the app: whatever code the signal left
    assert pj.job_status(None, True, False) == "stopped"  # SIGKILLed wrapper: no record
    assert pj.job_status(None, False, False) == "lost"  # gone without a record, not stopped by us


def test_start_stop_and_fail_real_processes(home):
    job = pj.start_job("ppo", SLEEPER, "sleeps", meta={"run_name": "x"})
    assert (job.status, job.active) == ("running", True)
    _wait(lambda: "ready" in pj.log_tail(job))  # the wrapper is up (a signal before its handler kills it)
    assert os.getpgid(job.pid) == job.pid  # its own process group
    listed, problems = pj.list_jobs(kind="ppo")
    assert [j.id for j in listed] == [job.id] and problems == [] and listed[0].meta == {"run_name": "x"}
    stopped = pj.stop_job(listed[0], grace_s=5)
    assert stopped.status == "stopped" and stopped.returncode == -signal.SIGTERM
    assert pj.load_job(job.record_path).status == "stopped"
    assert pj.stop_job(stopped).status == "stopped"  # stopping an ended job changes nothing

    # A command that ignores SIGTERM is killed after the grace period (wrapper and all: no exit record).
    stubborn = pj.start_job(
        "ppo", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)"]
    )  # fmt: skip
    _wait(lambda: "ready" in pj.log_tail(stubborn))
    t = time.monotonic()
    assert pj.stop_job(stubborn, grace_s=0.5).status == "stopped"
    assert time.monotonic() - t < 5

    failing = pj.start_job("ppo", [sys.executable, "-c", "import sys; print('boom <b>'); sys.exit(3)"])
    _wait(lambda: pj.load_job(failing.record_path).status != "running")
    failed = pj.load_job(failing.record_path)
    assert (failed.status, failed.returncode) == ("failed", 3)
    assert pj.log_tail(failed) == "boom <b>"
    (home / "jobs" / "broken.json").write_text("{", encoding="utf-8")
    jobs, problems = pj.list_jobs()
    assert [j.id for j in jobs] == [failing.id, stubborn.id, job.id]
    assert problems == ["job record broken.json is unreadable (Expecting property name enclosed in double quotes: "
                        "line 1 column 2 (char 1))"]  # fmt: skip


def test_log_tail_folds_progress_bars(home):
    job = pj.start_job("ppo", [sys.executable, "-c", "print('a\\r b\\r c\\n' + '\\n'.join(map(str, range(50))))"])
    _wait(lambda: pj.load_job(job.record_path).status == "finished")
    assert pj.log_tail(job, lines=3) == "47\n48\n49"
    assert pj.log_tail(job, lines=53).splitlines()[:3] == ["a", " b", " c"]


# -- the page --------------------------------------------------------------------------------------


def test_annotators_cannot_reach_the_page(open_app, seeded, ppo_root):
    write_fake_ppo_run(ppo_root / "20260101-000000-a")
    annotator = open_app(seeded.annotator_tokens[0])
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        annotator.switch_page(PAGE)
    direct = AppTest.from_file(str(APP.parent / PAGE), default_timeout=30)
    direct.session_state["user_id"] = seeded.annotator_ids[0]
    direct.run()
    assert not direct.exception
    assert [e.value for e in direct.error] == ["This page is for admins only."]
    assert not direct.title and not direct.metric and not direct.selectbox and not direct.button


def test_no_runs_and_no_reward_runs(open_app, seeded):
    at = _ppo_page(open_app, seeded)
    assert at.title[0].value == "PPO runs"
    infos = [i.value for i in at.info]
    assert "PPO needs a finished reward run" in infos[0] and "No PPO run yet" in infos[1]
    assert not at.error and [b.label for b in at.button] == ["Log out"]


def test_admin_sees_a_run_header_charts_and_no_warnings(open_app, seeded, ppo_root):
    run = write_fake_ppo_run(ppo_root / "20260101-000000-steady")
    os.utime(run / "metrics.jsonl", (1.7e9, 1.7e9))
    at = _ppo_page(open_app, seeded)
    assert not at.error and _warnings(at) == []
    assert at.selectbox(key="ppo_run").value == str(run)
    m = _metrics(at)
    assert m["Status"][0] == "finished" and m["Steps"][0] == "6 / 6"
    assert m["Reward"] == ("0.600", "+0.500 since step 1")  # objective/scores: 0.6 - 0.1
    assert m["KL"][0] == "2.500" and m["KL coefficient"][0] == "0.0500"
    assert m["Held-out reward"] == ("0.700", "+0.600 vs step 0")  # 0.7 - 0.1
    bold = [md.value.split("**")[1] for md in at.markdown if md.value.startswith("**")]
    assert [t for t in bold if t in pdash.CHARTS] == list(pdash.CHARTS)  # every panel has data, in order
    # The report tab: reference -0.25 -> tuned 0.35, both prompts won, KL 0.06 per token.
    assert m["Held-out reward, tuned"] == ("0.350", "0.600 vs reference -0.250")
    assert m["Win rate vs reference"] == ("100.0%", "2 prompts") and m["KL to reference"][0] == "0.0600"
    # Both prompts won: 2/2, Wilson 95% by hand: centre (1 + 0.96) / 2.92073 = 0.67106, half
    # 0.67106 * sqrt(0 + 3.8415 / 16) = 0.32882 -> [0.3424, 1.0000].
    assert (
        "Win rate vs reference 1.00 [0.34, 1.00] (n=2) · W/T/L 2/0/0, 95% Wilson interval (by the reward model, "
        "ties count half; W/T/L: prompts won / tied / lost)"
    ) in [md.value for md in at.markdown]
    assert not any("Where a step's time goes" in md.value for md in at.markdown)  # no time/* metrics logged


def test_step_time_by_phase(open_app, seeded, ppo_root, tmp_path):
    # ppo_run.TIMES: medians generation 1.0, reward 0.3, train_backward 0.5, optimizer 0.1 (sum 1.9),
    # in the order a step runs them; the metrics' step 0 (the reference's evaluation) has none.
    times = pdash.phase_times(pdash.load_ppo_run(write_fake_ppo_run(tmp_path / "t", times=TIMES)).metrics)
    assert times.to_dict("list") == {
        "phase": ["generation", "reward", "train_backward", "optimizer"],
        "median s": pytest.approx([1.0, 0.3, 0.5, 0.1]),
        "share": pytest.approx([1.0 / 1.9, 0.3 / 1.9, 0.5 / 1.9, 0.1 / 1.9]),
        "steps": [6, 6, 6, 6],
    }
    assert pdash.phase_times([{"step": 1, "objective/kl": 1.0}]).empty
    write_fake_ppo_run(ppo_root / "20260101-000000-timed", times=TIMES)
    at = _ppo_page(open_app, seeded)
    assert not at.error
    assert "**Where a step's time goes** · `time/*`" in [md.value for md in at.markdown]
    shown = next(d.value for d in at.dataframe if "phase" in d.value.columns)
    assert list(shown["phase"]) == ["generation", "reward", "train_backward", "optimizer"]
    assert list(shown["median s"]) == pytest.approx([1.0, 0.3, 0.5, 0.1])


def test_win_rate_of_older_reports(tmp_path):
    report = json.loads((write_fake_ppo_run(tmp_path / "r") / "report.json").read_text())
    assert pdash.fmt_win_rate(pdash.report_win_rate(report)) == "1.00 [0.34, 1.00] (n=2) · W/T/L 2/0/0"
    # No `win_rate_interval`: from the pairs' rewards (one tie, one loss -> 0.5 of 2 = 0.25) ...
    del report["win_rate_interval"]
    report["pairs"][0]["reward_policy"] = report["pairs"][0]["reward_reference"]
    report["pairs"][1]["reward_policy"] = report["pairs"][1]["reward_reference"] - 1
    # 0.5 of 2 by hand: centre (0.25 + 0.9604) / 2.9208 = 0.41441, half 0.67105 * sqrt(0.09375 + 0.2401)
    # = 0.38773 -> [0.0267, 0.8021]
    assert pdash.fmt_win_rate(pdash.report_win_rate(report)) == "0.25 [0.03, 0.80] (n=2) · W/T/L 0/1/1"
    # ... else from win_rate and prompts, without W/T/L; nothing at all: n/a.
    del report["pairs"]
    assert pdash.fmt_win_rate(pdash.report_win_rate(report)) == "1.00 [0.34, 1.00] (n=2)"
    assert pdash.fmt_win_rate(pdash.report_win_rate({})) == "n/a"


def test_runaway_run_warns(open_app, seeded, ppo_root):
    stop = {"reason": "kl_budget", "step": 6, "kl": 12.0, "kl_budget": 10.0, "kept_checkpoint": "checkpoint-4",
            "kept_step": 4}  # fmt: skip
    write_fake_ppo_run(ppo_root / "20260101-000000-runaway", RUNAWAY_KL, RUNAWAY_LENGTH, stop=stop)
    at = _ppo_page(open_app, seeded)
    warnings = _warnings(at)
    assert warnings[0] == "Stopped by the KL budget at step 6: KL 12.00 > 10.00. Saved policy: checkpoint-4 (step 4)."
    assert [w.split(":")[0].split(" is")[0] for w in warnings[1:]] == [  # not the budget rule: said above
        "KL",
        "Responses grew by 95% since step 0",
        "Responses hit the length limit",
    ]


def test_samples_browsing_and_prompt_history_stay_text(open_app, seeded, ppo_root):
    write_fake_ppo_run(ppo_root / "20260101-000000-s")
    at = _ppo_page(open_app, seeded)
    slider = at.select_slider(key="ppo_sample_step_20260101-000000-s")
    assert slider.value == 6 and slider.options == ["0", "2", "4", "6"]
    slider.set_value(2).run()
    step2 = next(d.value for d in at.dataframe if "prompt" in d.value.columns)
    assert list(step2["reward"]) == [0.2, -0.3] and list(step2["response"])[1] == "Blue. (step 2)"
    at.selectbox(key="ppo_prompt_20260101-000000-s").set_value("Name a colour.").run()
    history = next(d.value for d in at.dataframe if list(d.value.columns)[0] == "step")
    assert list(history["step"]) == [0, 2, 4, 6] and list(history["reward"]) == [-0.5, -0.3, -0.1, 0.1]
    # Model and prompt text is Markdown without HTML: the tags stay literal text, never unsafe_allow_html.
    assert any(XSS_PROMPT in md.value for md in at.markdown)
    assert any(XSS_RESPONSE in md.value for md in at.markdown)
    assert all(not getattr(md.proto, "allow_html", False) for md in at.markdown)


def test_compare_runs_on_the_page(open_app, seeded, ppo_root):
    write_fake_ppo_run(ppo_root / "20260101-000000-a")
    write_fake_ppo_run(ppo_root / "20260102-000000-b", RUNAWAY_KL, RUNAWAY_LENGTH, learning_rate=3e-3)
    at = _ppo_page(open_app, seeded)
    assert at.selectbox(key="ppo_compare").value == str(ppo_root / "20260101-000000-a")
    table = next(d.value for d in at.dataframe if "quantity" in d.value.columns).set_index("quantity")
    assert list(table.columns) == ["20260102-000000-b", "20260101-000000-a"]
    assert table.loc["learning_rate"].tolist() == ["0.003", "0.001"]
    assert table.loc["last objective/kl"].tolist() == ["12.000", "2.500"]
    overlays = [md.value for md in at.markdown if md.value.strip("*") in pdash.COMPARE_KEYS]
    assert overlays == [f"**{k}**" for k in pdash.COMPARE_KEYS]


def test_corrupted_and_partial_runs_are_errors_not_tracebacks(open_app, seeded, ppo_root):
    run = write_fake_ppo_run(ppo_root / "20260101-000000-broken", finished=False)
    (run / "config.json").write_text("{oops", encoding="utf-8")
    (run / "samples.jsonl").unlink()
    os.utime(run / "metrics.jsonl", (1.7e9, 1.7e9))
    os.utime(run, (1.7e9, 1.7e9))  # quiet for long: not live
    at = _ppo_page(open_app, seeded)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "20260101-000000-broken: config.json is not valid JSON (Expecting property name enclosed in double quotes "
        "at line 1, column 2)"
    ]
    assert _metrics(at)["Status"][0] == "unfinished" and _metrics(at)["Steps"][0] == "6"  # no config: no total
    infos = [i.value for i in at.info]
    assert any(i.startswith("No samples yet") for i in infos)
    assert any(i.startswith("No report.json yet") for i in infos)
    assert any(i.startswith("No config.json yet") for i in infos)


def test_start_a_job_see_it_run_and_stop_it(open_app, seeded, ppo_root, home, monkeypatch, fast_checks):
    write_fake_reward_folder(home / "runs" / "reward" / "20260101-000000-rm")
    write_fake_ppo_run(ppo_root / "20990101-000000-other")  # listed first: the page still follows the new run
    calls = []

    def fake_command(req, python=sys.executable):
        calls.append(req)
        # Stands in for `rlhf ppo`: creates its run folder, logs 3 of 10 steps, then trains "forever".
        script = (
            "import json, os, pathlib, time\n"
            f"d = pathlib.Path(os.environ['RLHF_HOME']) / 'runs' / 'ppo' / ('20260101-000000-' + {req.run_name!r})\n"
            "d.mkdir(parents=True)\n"
            "(d / 'metrics.jsonl').write_text(''.join(json.dumps({'step': s, 'objective/kl': 0.1}) + '\\n' "
            "for s in (1, 2, 3)))\n"
            "print('training <b>step 3</b>', flush=True)\n"
            "time.sleep(60)\n"
        )
        return [python, "-c", script]

    monkeypatch.setattr(pdash, "build_ppo_command", fake_command)
    at = _ppo_page(open_app, seeded)
    at.selectbox(key="ppo_config").set_value(str(pdash.CONFIGS_DIR / "tiny_ppo.yaml"))
    at.selectbox(key="ppo_policy").set_value("tiny")
    at.number_input(key="ppo_max_steps").set_value(10)
    at.number_input(key="ppo_set_kl_coef").set_value(0.1)
    at.text_area(key="ppo_more").input("response_length=16")
    at.button[0].click().run()
    assert not at.exception and not at.error
    req = calls[0]
    assert (req.policy, req.max_steps, req.overrides) == ("tiny", 10, {"kl_coef": 0.1, "response_length": 16})
    assert req.run_name.startswith("app-") and req.config.endswith("tiny_ppo.yaml")
    assert at.success[0].value.startswith("Started job ")
    [job] = pj.list_jobs(home / "jobs")[0]
    _wait(lambda: "step 3" in pj.log_tail(job))

    at.run()
    box = at.selectbox(key="ppo_run")
    assert box.value.endswith(req.run_name)
    assert box.options == ["20990101-000000-other", f"20260101-000000-{req.run_name}"]
    assert list(_runs_table(at)["state"]) == ["finished (completed)", "live"]
    [progress] = [p.proto.text for p in at.get("progress")]
    assert re.fullmatch(r"Step 3 / 10 · \d+ s elapsed", progress), progress
    assert any("training <b>step 3</b>" in c.value for c in at.code)  # the log tail, as code (text)
    assert _metrics(at)["Status"][0] == "live"

    at.button[0].click().run()  # one PPO run at a time
    assert (
        at.error[0].value
        == f"Not started:\n- a PPO job is already running ({job.id}); stop it or wait for it to finish"
    )
    assert len(calls) == 1 and len(pj.list_jobs(home / "jobs")[0]) == 1

    stop = next(b for b in at.button if b.label == "Stop")
    stop.click().run()
    assert not at.exception
    assert pj.load_job(job.record_path).status == "stopped"
    assert any(
        w.startswith("Stopped from the app after ") and w.endswith("It had saved no checkpoint yet (see save_steps).")
        for w in _warnings(at)
    )
    assert not [b for b in at.button if b.label == "Stop"]
    assert list(_runs_table(at)["state"]) == ["finished (completed)", "not finished (stopped or crashed)"]
    assert _metrics(at)["Status"][0] == "stopped"


def test_bad_settings_start_nothing(open_app, seeded, home, fast_checks):
    write_fake_reward_folder(home / "runs" / "reward" / "20260101-000000-rm")
    at = _ppo_page(open_app, seeded)
    at.selectbox(key="ppo_policy").set_value("folder")
    at.text_area(key="ppo_more").input("bogus=1\nname=mine\nnot a pair")
    at.button[0].click().run()
    assert not at.exception
    assert at.error[0].value.splitlines() == [
        "Not started:",
        "- `--set not a pair`: expected KEY=VALUE",
        "- type the policy folder",
    ]
    at.text_area(key="ppo_more").input("bogus=1\nname=mine")
    at.button[0].click().run()
    assert at.error[0].value.splitlines()[1:] == [
        "- type the policy folder",
        "- `name` is set by the app; leave it out of the overrides",
        "- unknown option `bogus` (--set); see the config's comments or `--help`",
    ]
    assert not (home / "jobs").exists() or pj.list_jobs(home / "jobs")[0] == []


def test_a_failed_job_shows_its_exit_code_and_log(open_app, seeded, home, monkeypatch, fast_checks):
    write_fake_reward_folder(home / "runs" / "reward" / "20260101-000000-rm")
    monkeypatch.setattr(
        pdash,
        "build_ppo_command",
        lambda req, python=sys.executable: [
            python, "-c", "import sys; print('error: reward run <i>x</i> has no model', file=sys.stderr); sys.exit(2)"
        ],
    )  # fmt: skip
    at = _ppo_page(open_app, seeded)
    at.button[0].click().run()
    [job] = pj.list_jobs(home / "jobs")[0]
    _wait(lambda: pj.load_job(job.record_path).status == "failed")
    at.run()
    assert not at.exception
    failed = [e.value for e in at.error]
    assert len(failed) == 1 and failed[0].startswith("Failed with exit code 2 after ")
    assert any(c.value == "error: reward run <i>x</i> has no model" for c in at.code)
    assert json.loads(job.record_path.read_text())["command"][0] == sys.executable


def test_a_job_started_by_another_server_process(home):
    """After a server restart the job is known from its files only: /proc tells it runs, then that it ended."""
    job = pj.start_job("ppo", SLEEPER)
    _wait(lambda: "ready" in pj.log_tail(job))
    proc = pj._CHILDREN.pop(job.pid)  # as if another process had started it
    try:
        assert pj.load_job(job.record_path).status == "running"  # /proc/<pid>/cmdline names the job
        assert pj.stop_job(pj.load_job(job.record_path), grace_s=5).status == "stopped"  # a zombie is not alive
        assert pj.load_job(job.record_path).returncode == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_real_tiny_ppo_run_from_the_page(open_app, seeded, home, tiny_model_dir, monkeypatch):
    """The page starts the real `rlhf ppo` on the tiny model (about 10-15 s), and shows the finished run."""
    from reward_run import write_fake_reward_run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child's torch: a 64-dim model only waits on a 2nd thread
    write_fake_reward_run(home / "runs" / "reward" / "20260101-000000-tiny", tiny_model_dir)
    at = _ppo_page(open_app, seeded)
    at.selectbox(key="ppo_config").set_value(str(pdash.CONFIGS_DIR / "tiny_ppo.yaml"))
    at.selectbox(key="ppo_policy").set_value("folder").run()
    at.text_input(key="ppo_policy_dir").input(str(tiny_model_dir))
    at.number_input(key="ppo_max_steps").set_value(4)
    # The seeded store holds 4 prompts: 2 held out, batches of 2.
    at.text_area(key="ppo_more").input("eval_steps=2\nsave_steps=2\neval_prompts=2\nper_device_train_batch_size=2")
    at.button[0].click().run()  # checks the settings against TRL's real PPOConfig fields
    assert not at.exception and not at.error, [e.value for e in at.error]
    [job] = pj.list_jobs(home / "jobs")[0]
    _wait(lambda: not pj.load_job(job.record_path).active, timeout=120)
    job = pj.load_job(job.record_path)
    assert job.status == "finished", pj.log_tail(job)
    at.run()
    assert not at.exception and not at.error
    table = _runs_table(at)
    assert (list(table["run"]), list(table["state"]), list(table["steps"])) == (
        [Path(at.selectbox(key="ppo_run").value).name],
        ["finished (completed)"],
        [4],
    )
    m = _metrics(at)
    assert m["Status"][0] == "finished" and m["Steps"][0] == "4 / 4"
    run = pdash.load_ppo_run(Path(at.selectbox(key="ppo_run").value))
    assert run.problems == [] and pdash.sample_steps(run.samples) == [0, 2, 4]
    assert {"objective/kl", "objective/scores", "kl/coef", "policy/clipfrac_avg"} <= set(run.metrics[-1])
