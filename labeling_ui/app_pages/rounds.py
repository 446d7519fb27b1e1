"""Rounds (admins): the whole RLHF loop from the app. The table shows each labeling round of the store;
one button closes the newest labeled round and opens the next: every label so far is exported, the
reward model trains on it, PPO tunes the previous round's policy against it, and the tuned policy
writes the next round's candidates into the annotators' queues. A reward model that learned nothing
measurable stops the round before PPO, unless "Run PPO even if the reward model learned nothing" is
ticked (`rlhf round --force`).

Below, the reports of headless pipeline rounds (`rlhf pipeline run`, `make pipeline`), the same
self-contained HTML page the pipeline writes.

The work is `rlhf round CONFIG` as a background process (`labeling_ui.process_jobs`), never inside this
script; data and progress come from `labeling_ui.rounds`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from labeling_ui import rounds as rd
from labeling_ui.components import job_log, jobs_to_show, require_admin, show_error, stop_job_then_rerun, store_or_stop
from labeling_ui.process_jobs import list_jobs, start_job
from rlhf.errors import WorkbenchError
from rlhf.home import data_home

JOB_REFRESH_S = 2.0
STOP_GRACE_S = 10.0
ENDED_JOBS_SHOWN = 2
STAGE_ICONS = {"running": ":material/progress_activity:", "done": ":material/check:", "skipped": ":material/check:"}

require_admin()
store = store_or_stop()
st.title("Rounds")
st.caption(
    "One button runs a whole RLHF round on what the annotators labeled: export every label, train the "
    "reward model, run PPO from the previous round's policy, then generate the next round's candidates "
    "with the tuned policy. Annotators find them in their queues; when they have labeled them, close "
    "that round the same way."
)
ss = st.session_state

try:
    rows = rd.round_rows(store)
    jobs, job_problems = list_jobs(kind="round")
except WorkbenchError as e:
    show_error(e)
    st.stop()
for problem in job_problems:
    st.warning(problem)

# -- 1) the rounds so far --------------------------------------------------------------------------
if not rows:
    st.info("No candidates yet: generate some on the Project page, then have annotators label them.")
else:
    st.dataframe(
        pd.DataFrame(rd.table(rows)),
        hide_index=True,
        column_config={
            "closed": st.column_config.CheckboxColumn(help="A reward model and a PPO policy were trained on it"),
            "reward model accuracy": st.column_config.NumberColumn(format="%.3f", help="Held-out pairs"),
            "PPO reward gain": st.column_config.NumberColumn(
                format="%+.3f", help="Tuned minus starting policy, mean reward on held-out prompts"
            ),
            "KL to start": st.column_config.NumberColumn(format="%.3f", help="Nats per response, held-out prompts"),
        },
    )
labeled = [r for r in rows if r.labels]
target = labeled[-1].round if labeled else None
total_labels = sum(x.labels for x in rows)
# Closed already, and no label came in since: closing it again would only skip every stage.
up_to_date = bool(labeled and labeled[-1].closed and labeled[-1].closed.get("labels") == total_labels)
active = [j for j in jobs if j.active]


# -- 2) close a round ------------------------------------------------------------------------------
def start_round() -> None:
    """Button callback: check, then start `rlhf round CONFIG` in the background."""
    from rlhf.pipeline import load_pipeline_config, store_round_problems

    config = Path(ss["round_config"])
    problems = []
    if [j for j in list_jobs(kind="round")[0] if j.active]:
        problems.append("a round is already running; wait for it or stop it")
    try:
        problems += store_round_problems(load_pipeline_config(config), store)
    except WorkbenchError as e:
        problems.append(str(e))
    if problems:
        ss["round_problems"] = problems
        return
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(rd.REPO), os.environ.get("PYTHONPATH")) if p)}
    force = bool(ss.get("round_force"))
    try:
        job = start_job(
            "round",
            rd.round_command(config, force=force),
            f"close round {target} with {config.name}, then generate round {target + 1}"
            + (" (PPO even if the reward model learned nothing)" if force else ""),
            meta={"round": target, "config": str(config), "force": force},
            env=env,
        )
    except WorkbenchError as e:
        ss["round_problems"] = [str(e)]
        return
    ss["round_started"] = job.id


with st.container(border=True):
    if target is None:
        st.markdown("**Close a round**: nothing is labeled yet.")
    elif up_to_date:
        st.markdown(
            f"**Round {target} is closed** and no label came in since; its policy wrote round {target + 1}'s "
            f"candidates. Once annotators have labeled round {target + 1}, close it here."
        )
    else:
        r = labeled[-1]
        again = " again (new labels since it was closed)" if r.closed else ""
        st.markdown(
            f"**Close round {target}{again}** ({r.labeled} of {r.comparisons} comparisons labeled, {r.labels} "
            f"labels; {total_labels} labels in all rounds) **and start round {target + 1}**"
        )
    configs = {str(p): p.name for p in rd.pipeline_configs()}
    # The config the last round was closed with (its model is the policy's base), else round.yaml.
    last = next((str(r.closed.get("config_file")) for r in reversed(rows) if r.closed), None)
    default = last if last in configs else next((k for k, v in configs.items() if v == "round.yaml"), "")
    ss.setdefault("round_config", default)
    st.selectbox(
        "Config",
        list(configs),
        format_func=configs.get,
        key="round_config",
        help="A pipeline YAML (pipelines/configs/): its generation, export, reward and ppo sections are used; "
        "round.yaml: SmolLM2 (about 12 min here), quick.yaml: the tiny test model (seconds)",
    )
    if ss["round_config"]:
        with st.expander(f"Show {Path(ss['round_config']).name}"):
            st.code(Path(ss["round_config"]).read_text(encoding="utf-8"), language="yaml")
    st.checkbox(
        "Run PPO even if the reward model learned nothing",
        key="round_force",
        help="Without it, the round stops after the reward model when its held-out accuracy is not above chance "
        "and the untrained model's by more than noise (or too few held-out pairs to tell): PPO would only "
        "optimise noise. The job's log then says why",
    )
    st.button(
        f"Close round {target} and start round {target + 1}" if target is not None else "Close round",
        type="primary",
        icon=":material/autorenew:",
        on_click=start_round,
        disabled=target is None or up_to_date or bool(active),
        key="round_start",
    )
    if problems := ss.pop("round_problems", None):
        st.error("Not started:\n" + "\n".join(f"- {p}" for p in problems))
    if started := ss.pop("round_started", None):
        st.success(f"Started job {started}: its progress shows below.")


# -- 3) the round jobs -----------------------------------------------------------------------------
def show_job(job) -> None:
    log = rd.read_log(job.log_path)
    stages = rd.stage_progress(log)
    with st.container(border=True):
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(f"**{job.status}** · job `{job.id}` · {job.description}")
        if job.active:
            button.button(
                "Stop",
                key=f"round_stop_{job.id}",
                icon=":material/stop:",
                on_click=stop_job_then_rerun,
                args=(job.id, str(job.root), "round_job_error", STOP_GRACE_S),
                disabled=job.status == "stopping",
                help="Stops the round; a re-run redoes the stage that was cut and skips the finished ones",
            )
        finished = sum(stages.get(s) in ("done", "skipped") for s in rd.ROUND_STAGES)
        if job.active:
            st.progress(finished / len(rd.ROUND_STAGES), text=f"{finished} of {len(rd.ROUND_STAGES)} stages done")
        cols = st.columns(len(rd.ROUND_STAGES))
        for col, stage in zip(cols, rd.ROUND_STAGES):
            status = stages.get(stage, "waiting")
            col.markdown(f"{STAGE_ICONS.get(status, ':material/schedule:')} {rd.STAGE_TITLES[stage]}  \n*{status}*")
        if job.status == "finished":
            st.success("Finished: the next round's candidates are in the annotators' queues.")
        elif job.status == "failed" and rd.STOPPED_BEFORE_PPO in log:
            st.error(
                "Stopped before PPO: the reward model learned nothing measurable (the log below says why). "
                "Label more pairs, or tick *Run PPO even if the reward model learned nothing* and close the "
                "round again."
            )
        elif job.status == "failed":
            st.error(f"Failed with exit code {job.returncode}. The end of its log is below.")
        elif job.status == "stopped":
            st.warning("Stopped from the app. Closing the round again resumes at the unfinished stage.")
        elif job.status == "lost":
            st.warning("The process ended without recording an exit code (killed from outside the app?).")
        job_log(job)


@st.fragment(run_every=JOB_REFRESH_S if active else None)
def jobs_panel() -> None:
    try:
        current, _ = list_jobs(kind="round")
    except WorkbenchError as e:
        show_error(e)
        return
    shown = jobs_to_show(current, ENDED_JOBS_SHOWN)
    if shown:
        st.subheader("Round jobs")
    for job in shown:
        show_job(job)
    if error := ss.pop("round_job_error", None):
        st.error(error)
    if active and not any(j.active for j in current):
        st.rerun()  # the whole page: the table shows the closed round and the new one


jobs_panel()


# -- 4) pipeline reports (`rlhf pipeline run`: the simulated annotator's rounds) --------------------
st.subheader("Pipeline reports")
reports = rd.pipeline_reports(data_home())
if not reports:
    st.caption("No pipeline round yet: `make pipeline` or `rlhf pipeline run CONFIG` writes one.")
else:
    labels = {str(p): rd.report_label(p) for p in reports}
    chosen = st.selectbox("Report", list(labels), format_func=labels.get, key="round_report")
    st.caption(f"`{chosen}`: the page the pipeline wrote (plots inline; PNGs in its `plots/` folder)")
    page = Path(chosen).read_text(encoding="utf-8")
    # A sandboxed iframe: the report is our own HTML (every text in it escaped), no scripts.
    components.html(page, height=900, scrolling=True)
    st.download_button("Download report.html", page, file_name="report.html", mime="text/html")
