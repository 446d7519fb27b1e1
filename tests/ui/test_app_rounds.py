"""The Rounds page (admins): the store's labeling rounds, and one button that closes the newest labeled
round (export, reward model, PPO) and opens the next, as a real background `rlhf round` process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from labeling_seed import label_round, seed_round_zero

from labeling_ui import process_jobs as pj
from labeling_ui import rounds as rd

PAGE = "app_pages/rounds.py"
QUICK = rd.CONFIGS_DIR / "quick.yaml"


def _wait(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_stage_progress_reads_the_latest_status_per_stage():
    log = (
        "round 0 export: running (0 s)\nround 0 export: done (1 s)\nnoise <b>\n"
        "round 0 reward: skipped (1 s)\n  round 0 ppo: running (2 s)\r\n"
    )
    assert rd.stage_progress(log) == {"export": "done", "reward": "skipped", "ppo": "running"}
    assert rd.stage_progress("") == {}


def test_round_command_passes_force_only_when_asked():
    assert rd.round_command(QUICK)[-3:] == ["rlhf", "round", str(QUICK)]
    assert rd.round_command(QUICK, force=True)[-4:] == ["rlhf", "round", str(QUICK), "--force"]


def test_pipeline_configs_are_the_shipped_pipeline_yamls():
    assert [p.name for p in rd.pipeline_configs()] == ["quick.yaml", "round.yaml", "round_gpu.yaml"]


def test_round_rows_and_table(home, store, tmp_path):
    from labeling_seed import seed_labeling

    seeded = seed_labeling(store, n_prompts=3, required=1, n_annotators=1)
    store.save_label(seeded.comparison_ids[0], seeded.annotator_ids[0], "A", strength=2)
    store.save_label(seeded.comparison_ids[1], seeded.admin_id, "tie")
    (tmp_path / "round-0").mkdir()
    (tmp_path / "round-0" / "round.json").write_text(
        '{"reward_eval_accuracy": 0.75, "policy": "/p", "ppo_eval": {"reward_gain": 0.5, "policy": {"kl_to_ref": 1.5}}}'
    )
    [row] = rd.round_rows(store, tmp_path)
    assert (row.round, row.comparisons, row.labeled, row.labels) == (0, 3, 2, 2)
    assert rd.table([row]) == [
        {
            "round": 0,
            "comparisons": 3,
            "labeled": 2,
            "labels": 2,
            "closed": True,
            "reward model accuracy": 0.75,
            "PPO reward gain": 0.5,
            "KL to start": 1.5,
            "policy": "/p",
        }
    ]


def test_nothing_labeled_disables_the_button(open_app, store):
    from labeling_seed import seed_labeling

    seeded = seed_labeling(store, n_prompts=2, n_annotators=1)
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any(m.value == "**Close a round**: nothing is labeled yet." for m in at.markdown)
    assert at.button(key="round_start").disabled
    force = at.checkbox(key="round_force")
    assert force.label == "Run PPO even if the reward model learned nothing" and not force.value


def test_a_round_stopped_before_ppo_says_why_and_how_to_force(open_app, home, store):
    """A round job that ended with `rlhf round`'s stop-before-PPO error: the page says so, the log shows it."""
    import sys

    from labeling_seed import seed_labeling

    message = "error: held-out split too small to tell: 7 pairs (need >= 30); pass --force to run PPO anyway"
    script = f"import sys; print({message!r}, file=sys.stderr); sys.exit(2)"
    job = pj.start_job("round", [sys.executable, "-c", script], "close round 0 with quick.yaml")
    _wait(lambda: pj.load_job(job.record_path).status == "failed")
    seeded = seed_labeling(store, n_prompts=2, n_annotators=1)
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any(e.value.startswith("Stopped before PPO: the reward model learned nothing") for e in at.error)
    assert any(message in c.value for c in at.code)


@pytest.mark.slow
def test_one_button_closes_round_zero_and_opens_round_one(open_app, home, store, tiny_model_dir):
    """The whole loop from the app: a real `rlhf round quick.yaml` process on the tiny model."""
    assert seed_round_zero(store, home, tiny_model_dir) == 24
    admin, token = store.add_annotator("boss", role="admin")
    at = open_app(token)
    at.switch_page(PAGE).run()
    assert not at.exception
    [table] = at.dataframe
    assert list(table.value["round"]) == [0] and list(table.value["labels"]) == [24]
    assert not list(table.value["closed"])[0]
    button = at.button(key="round_start")
    assert button.label == "Close round 0 and start round 1" and not button.disabled
    at.selectbox(key="round_config").set_value(str(QUICK))
    at.checkbox(key="round_force").check()  # the tiny model's reward model cannot show learning
    button.click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Started job ")
    [job] = pj.list_jobs(home / "jobs", kind="round")[0]
    assert job.command[-4:] == ["rlhf", "round", str(QUICK), "--force"]
    assert at.button(key="round_start").disabled  # one round job at a time
    _wait(lambda: pj.load_job(job.record_path).status != "running", timeout=600)
    job = pj.load_job(job.record_path)
    assert job.status == "finished", pj.log_tail(job, lines=60)

    at.run()
    assert not at.exception
    rows = at.dataframe[0].value
    assert list(rows["round"]) == [0, 1] and list(rows["closed"]) == [True, False]
    assert rows["reward model accuracy"][0] is not None and rows["comparisons"][1] > 0
    assert any(s.value.startswith("Finished: the next round's candidates") for s in at.success)
    assert sum("*done*" in m.value for m in at.markdown) == 4  # the four stages
    assert Path(rows["policy"][0], "config.json").exists()
    # Round 0 is closed and nothing new is labeled: nothing to close until round 1 is labeled.
    assert any(m.value.startswith("**Round 0 is closed** and no label came in since") for m in at.markdown)
    assert at.button(key="round_start").disabled

    # Annotators label round 1: the button now closes round 1, with the config round 0 was closed with.
    label_round(store, 1, "bob")
    at.run()
    assert at.button(key="round_start").label == "Close round 1 and start round 2"
    assert at.selectbox(key="round_config").value == str(QUICK)
    # Another base model would pair round 0's tiny policy with a SmolLM2 reward model: refused at once.
    at.selectbox(key="round_config").set_value(str(rd.CONFIGS_DIR / "round.yaml"))
    at.button(key="round_start").click().run()
    assert at.error[0].value.startswith("Not started:\n- round 0 was closed with generation.model 'tiny'")
    assert len(pj.list_jobs(home / "jobs", kind="round")[0]) == 1


def test_pipeline_reports_are_shown_newest_first(open_app, home, store):
    from labeling_seed import seed_labeling

    old = home / "pipeline" / "quick" / "round-0" / "report.html"
    new = home / "pipeline" / "round" / "round-1" / "report.html"
    for path, title in ((old, "old"), (new, "new")):
        path.parent.mkdir(parents=True)
        path.write_text(f"<html><body><h1>RLHF pipeline {title}</h1></body></html>", encoding="utf-8")
    os.utime(old, (1_000_000, 1_000_000))
    assert rd.pipeline_reports(home) == [new, old]
    assert [rd.report_label(p) for p in (new, old)] == ["round round 1", "quick round 0"]
    seeded = seed_labeling(store, n_prompts=2, n_annotators=1)
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert not at.exception
    box = at.selectbox(key="round_report")
    assert box.options == ["round round 1", "quick round 0"] and box.value == str(new)
    [frame] = [e for e in at.main if getattr(e, "type", "") == "iframe"]
    assert "RLHF pipeline new" in frame.proto.srcdoc
    box.set_value(str(old)).run()
    [frame] = [e for e in at.main if getattr(e, "type", "") == "iframe"]
    assert "RLHF pipeline old" in frame.proto.srcdoc


def test_no_pipeline_report_says_how_to_make_one(open_app, store):
    from labeling_seed import seed_labeling

    seeded = seed_labeling(store, n_prompts=2, n_annotators=1)
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert any("make pipeline" in c.value for c in at.caption)
