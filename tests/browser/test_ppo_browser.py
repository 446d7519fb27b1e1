"""The PPO runs page in a real Chromium: an admin opens a finished run (charts, warnings), browses its
samples (inert XSS), compares it with another run and looks at the start form; screenshots go to
test-artifacts/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_ui import app_button, wait_for_idle
from ppo_run import RUNAWAY_KL, RUNAWAY_LENGTH, write_fake_ppo_run, write_fake_reward_folder

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _expect():
    from playwright.sync_api import expect

    return expect


def _screenshot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let Vega finish drawing
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_admin_watches_and_compares_ppo_runs(app, page):
    ARTIFACTS.mkdir(exist_ok=True)
    runs = app.home / "runs" / "ppo"
    write_fake_ppo_run(runs / "20260101-120000-steady")
    stop = {"reason": "kl_budget", "step": 6, "kl": 12.0, "kl_budget": 10.0, "kept_checkpoint": "checkpoint-4",
            "kept_step": 4}  # fmt: skip
    write_fake_ppo_run(runs / "20260102-120000-runaway", RUNAWAY_KL, RUNAWAY_LENGTH, stop=stop, learning_rate=3e-3)
    write_fake_reward_folder(app.home / "runs" / "reward" / "20260101-000000-rm")
    expect = _expect()
    page.set_viewport_size({"width": 1400, "height": 2400})
    page.goto(f"{app.url}/ppo?token={app.seed.admin_token}")
    expect(page.get_by_role("heading", name="PPO runs")).to_be_visible()
    expect(page.get_by_text("Stopped by the KL budget at step 6")).to_be_visible()
    expect(page.get_by_text("KL is rising fast")).to_be_visible()
    expect(page.get_by_text("is above the run's budget")).to_have_count(0)  # said by the stop message
    expect(page.get_by_text("Responses hit the length limit")).to_be_visible()
    expect(page.locator("[data-testid='stVegaLiteChart']:visible")).to_have_count(8)
    _screenshot(page, "ppo_dashboard.png")

    # Samples by step: the latest step first; prompt and response text stays literal.
    page.get_by_role("tab", name="Samples by step").click()
    expect(page.get_by_text("2 held-out responses at step 6")).to_be_visible()
    page.get_by_text(re.compile(r"^#1 · reward 0\.600")).click()
    expect(page.get_by_text("<script>alert('p')</script>", exact=False).first).to_be_visible()
    assert page.locator("img[src='x']").count() == 0
    _screenshot(page, "ppo_dashboard_samples.png")

    page.get_by_role("tab", name="One prompt across steps").click()
    expect(page.get_by_text("Step 6 · reward 0.600").first).to_be_visible()

    page.get_by_role("tab", name="Compare runs").click()
    expect(page.get_by_text("Compare with")).to_be_visible()
    expect(page.locator("[data-testid='stVegaLiteChart']:visible")).to_have_count(6)  # COMPARE_KEYS
    _screenshot(page, "ppo_dashboard_compare.png")

    page.get_by_text("Start a PPO run").click()
    expect(app_button(page, "ppo_start_run")).to_be_visible()
    _screenshot(page, "ppo_dashboard_start.png")
    assert page.dialogs == []


def test_admin_sees_jobs_and_stops_one(app, page):
    """Jobs are known to the server from their files (these were started by the test process): a live
    run's progress and log, a failed job's exit code; Stop ends the process group."""
    import sys

    from labeling_ui import process_jobs as pj

    ARTIFACTS.mkdir(exist_ok=True)
    jobs = app.home / "jobs"
    write_fake_ppo_run(app.home / "runs" / "ppo" / "20260103-120000-app-abc123", finished=False)
    failed = pj.start_job(
        "ppo", [sys.executable, "-c", "import sys; print('error: no prompts <b>in the store</b>'); sys.exit(2)"],
        "reward 20260101-000000-rm · tiny_ppo.yaml · 8 steps", root=jobs,
    )  # fmt: skip
    running = pj.start_job(
        "ppo", [sys.executable, "-c", "import time; print('step 6 of 8', flush=True); time.sleep(120)"],
        "reward 20260101-000000-rm · tiny_ppo.yaml · 8 steps", meta={"run_name": "app-abc123", "max_steps": 8},
        root=jobs,
    )  # fmt: skip
    try:
        expect = _expect()
        page.set_viewport_size({"width": 1400, "height": 1600})
        page.goto(f"{app.url}/ppo?token={app.seed.admin_token}")
        expect(page.get_by_text(re.compile(r"^Step 6 / 8 · "))).to_be_visible()
        expect(page.get_by_text("Failed with exit code 2")).to_be_visible()
        expect(page.get_by_text("error: no prompts <b>in the store</b>", exact=True)).to_be_visible()  # the log
        expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value("20260103-120000-app-abc123")
        expect(page.get_by_test_id("stMetricValue").first).to_have_text("live")
        _screenshot(page, "ppo_dashboard_jobs.png")
        # By the app's own key: a header "Stop" of Streamlit's shows while the jobs panel reruns.
        stop = app_button(page, f"ppo_stop_{running.id}")
        expect(stop).to_be_enabled()
        wait_for_idle(page)
        stop.click()
        expect(page.get_by_text(re.compile("Stopped from the app after"))).to_be_visible()
        assert pj.load_job(running.record_path).status == "stopped"
        assert pj.load_job(failed.record_path).returncode == 2
        assert page.dialogs == []
    finally:
        for job in (running, failed):
            proc = pj._CHILDREN.pop(job.pid, None)
            if proc is not None:
                proc.kill()
                proc.wait()
