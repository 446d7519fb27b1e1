"""PPO runs (admins): start a PPO run in the background and stop it; watch a run live (reward, KL and
its coefficient, non-score reward, entropy, length, clip fraction) with warnings when KL or length
runs away; browse the held-out samples by step and one prompt across steps; compare two runs; queue a
run's held-out pairs for a blind human evaluation and read the tuned policy's win rate by people.

Runs are `rlhf ppo ...` processes (`labeling_ui.process_jobs`), never work inside this script. Data,
rules and charts come from `labeling_ui.ppo_dashboard`; this file only lays them out.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from labeling_ui import ppo_dashboard as pdash
from labeling_ui import reward_inspector as ri
from labeling_ui.components import (
    get_store,
    job_log,
    jobs_to_show,
    render_text,
    require_admin,
    show_error,
    stop_job_then_rerun,
)
from labeling_ui.process_jobs import list_jobs, start_job
from rlhf.errors import WorkbenchError
from rlhf.human_eval import TIES_NOTE, human_evaluation_results, queue_human_evaluation
from rlhf.runs import runs_dir

JOB_REFRESH_S = 2.0  # the jobs panel while a job runs
RUN_REFRESH_S = 5.0  # a live run's charts
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this
MAX_RUNNING_JOBS = 1  # PPO holds several models in memory: one run at a time on a laptop-class machine
ENDED_JOBS_SHOWN = 3
STATUS_ICONS = {
    "running": ":material/directions_run:",
    "stopping": ":material/hourglass_top:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "stopped": ":material/stop_circle:",
    "lost": ":material/help:",
}

require_admin()
st.title("PPO runs")
ss = st.session_state
raw = ss.get("raw_text", False)
ss.setdefault("ppo_policy", "(config)")
ss.setdefault("ppo_policy_dir", "")
ss.setdefault("ppo_max_steps", 20)
ss.setdefault("ppo_more", "")
ss.setdefault("ppo_name", "app")
for key in ("kl_target", "kl_coef", "kl_budget", "learning_rate"):
    ss.setdefault(f"ppo_set_{key}", None)

try:
    root = runs_dir("ppo")
    reward_root = runs_dir("reward")
    jobs, job_problems = list_jobs(kind="ppo")
except WorkbenchError as e:
    show_error(e)
    st.stop()
for problem in job_problems:
    st.warning(problem)
runs = pdash.list_ppo_runs(root, jobs)


# -- 1) start a run --------------------------------------------------------------------------------
def start_run() -> None:
    """Button callback: validate the form, then start `rlhf ppo ...` as a background process."""
    overrides = {k: ss[f"ppo_set_{k}"] for k in ("kl_target", "kl_coef", "kl_budget", "learning_rate")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    more, problems = pdash.parse_override_lines(ss["ppo_more"])
    overrides.update(more)
    policy, folder = ss["ppo_policy"], ss["ppo_policy_dir"].strip()
    if policy == "folder":
        if not folder:
            problems.append("type the policy folder")
        policy = str(Path(folder).expanduser().resolve()) if folder else None
    elif policy == "(config)":
        policy = None
    req = pdash.PPORequest(
        reward_run=ss["ppo_reward"],
        config=ss["ppo_config"] or None,
        policy=policy,
        max_steps=None if ss["ppo_max_steps"] is None else int(ss["ppo_max_steps"]),
        overrides=overrides,
        name=ss["ppo_name"].strip(),
    )
    running = [j for j in list_jobs(kind="ppo")[0] if j.active]
    if len(running) >= MAX_RUNNING_JOBS:
        problems.append(f"a PPO job is already running ({running[0].id}); stop it or wait for it to finish")
    problems += pdash.request_problems(req, pdash.trl_field_names())  # the first call imports TRL (~5 s)
    if problems:
        ss["ppo_start_problems"] = problems
        return
    req.with_run_name()
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(pdash.REPO), os.environ.get("PYTHONPATH")) if p)}
    try:
        job = start_job(
            "ppo",
            pdash.build_ppo_command(req),
            pdash.describe_request(req),
            meta={"run_name": req.run_name, "max_steps": req.max_steps, "reward_run": req.reward_run},
            env=env,
        )
    except WorkbenchError as e:
        ss["ppo_start_problems"] = [str(e)]
        return
    ss["ppo_started"] = job.id
    ss["ppo_follow"] = job.id  # show its run once the folder appears


with st.expander("Start a PPO run", expanded=not runs and not jobs, icon=":material/play_arrow:"):
    reward_runs = [r for r in ri.list_reward_runs(reward_root) if (r.path / "model").is_dir()]
    configs = pdash.list_ppo_configs()
    if not reward_runs:
        st.info(
            f"PPO needs a finished reward run, and `{reward_root}` holds none. Train one first: "
            "`rlhf train-reward EXPORT_DIR` (see the Reward model page)."
        )
    else:
        reward_labels = {str(r.path): r.label() for r in reward_runs}
        c = st.columns([3, 2])
        c[0].selectbox(
            "Reward run",
            list(reward_labels),
            format_func=reward_labels.get,
            key="ppo_reward",
            help="Its model scores the responses and starts the value model; the policy must share its tokenizer.",
        )
        config_names = {str(p): p.name for p in configs} | {"": "(none: built-in defaults)"}
        c[1].selectbox(
            "Config",
            list(config_names),
            format_func=config_names.get,
            key="ppo_config",
            help="pipelines/configs/*_ppo.yaml: our options at the top, TRL's PPOConfig fields under `trl:`",
        )
        config_policy = "default"
        if ss["ppo_config"]:
            text, config_policy = pdash.preview_config(Path(ss["ppo_config"]))
            with st.expander(f"Show {Path(ss['ppo_config']).name}"):
                st.code(text, language="yaml")
        policies = {
            "(config)": f"the config's ({config_policy})",
            "default": "default: the embedded SmolLM2-135M-Instruct",
            "tiny": "tiny: the 2-layer test model (seconds per run)",
            "folder": "a local folder…",
        }
        c = st.columns([3, 1, 1])
        c[0].selectbox("Policy", list(policies), format_func=policies.get, key="ppo_policy")
        c[1].number_input(
            "Max steps",
            min_value=1,
            step=10,
            key="ppo_max_steps",
            help="PPO steps (batches of rollouts). Empty: the config's episodes / one pass over the prompts.",
        )
        c[2].text_input("Run name", key="ppo_name", help="The run folder is <UTC time>-<name>-<6 hex>.")
        if ss["ppo_policy"] == "folder":
            st.text_input("Policy folder", key="ppo_policy_dir", placeholder="/path/to/a/saved/model")
        st.caption("Overrides (empty: the config's value)")
        c = st.columns(4)
        c[0].number_input(
            "kl_target", min_value=0.0, format="%g", key="ppo_set_kl_target", help="Adaptive KL: nats per response"
        )
        c[1].number_input("kl_coef", min_value=0.0, format="%g", key="ppo_set_kl_coef", help="Starting coefficient")
        c[2].number_input(
            "kl_budget", min_value=0.0, format="%g", key="ppo_set_kl_budget", help="Stop when objective/kl exceeds it"
        )
        c[3].number_input("learning_rate", min_value=0.0, format="%.2e", key="ppo_set_learning_rate")
        st.text_area(
            "More overrides (KEY=VALUE per line: our options or any TRL PPOConfig field)",
            key="ppo_more",
            height=80,
            placeholder="response_length=48\nnum_ppo_epochs=2\nlora=true",
        )
        st.button(
            "Start PPO run", key="ppo_start_run", type="primary", icon=":material/play_arrow:", on_click=start_run
        )
    if problems := ss.pop("ppo_start_problems", None):
        st.error("Not started:\n" + "\n".join(f"- {p}" for p in problems))
    if started := ss.pop("ppo_started", None):
        st.success(f"Started job {started}: it shows below, and its run in the list once the models are loaded.")


# -- 2) jobs started from the app ------------------------------------------------------------------
def show_job(job) -> None:
    run_dir = pdash.job_run_dir(job, root)
    run = pdash.load_ppo_run(run_dir) if run_dir is not None else None
    with st.container(border=True):
        head, button = st.columns([5, 1], vertical_alignment="center")
        where = f" → run `{run_dir.name}`" if run_dir is not None else ""
        head.markdown(f"{STATUS_ICONS.get(job.status, '')} **{job.status}** · job `{job.id}`{where}")
        head.text(job.description)
        if job.active:
            button.button(
                "Stop",
                key=f"ppo_stop_{job.id}",
                icon=":material/stop:",
                on_click=stop_job_then_rerun,
                args=(job.id, str(job.root), "ppo_job_error", STOP_GRACE_S),
                disabled=job.status == "stopping",
                help=f"SIGTERM to its process group, SIGKILL after {STOP_GRACE_S:g} s; the run keeps its last "
                "checkpoint",
            )
            done = pdash.steps_done(run.metrics) if run else 0
            total = pdash.total_steps(run, job)
            elapsed = pdash.fmt_duration(job.elapsed())
            if run is None:
                st.progress(0.0, text=f"Starting: loading the models… ({elapsed})")
            else:
                frac = min(1.0, done / total) if total else 0.0
                st.progress(frac, text=f"Step {done} / {total or '?'} · {elapsed} elapsed")
        else:
            took = pdash.fmt_duration(job.elapsed())
            if job.status == "finished":
                st.success(f"Finished after {took}.")
            elif job.status == "failed":
                st.error(f"Failed with exit code {job.returncode} after {took}. The end of its log is below.")
            elif job.status == "stopped":
                saved = run.checkpoints() if run else []
                kept = (
                    f"The run keeps its last checkpoint, {saved[-1]}."
                    if saved
                    else "It had saved no checkpoint yet (see save_steps)."
                )
                st.warning(f"Stopped from the app after {took}. {kept}")
            else:
                st.warning("The process ended without recording an exit code (killed from outside the app?).")
        job_log(job)


any_active = any(j.active for j in jobs)


@st.fragment(run_every=JOB_REFRESH_S if any_active else None)
def jobs_panel() -> None:
    try:
        current, _ = list_jobs(kind="ppo")
    except WorkbenchError as e:
        show_error(e)
        return
    shown = jobs_to_show(current, ENDED_JOBS_SHOWN)
    if shown:
        st.subheader("Jobs")
    for job in shown:
        show_job(job)
    if error := ss.pop("ppo_job_error", None):
        st.error(error)
    if any_active and not any(j.active for j in current):
        st.rerun()  # the whole page: stop polling, list the finished run
    listed = {r.path for r in runs}
    if any(j.active and (d := pdash.job_run_dir(j, root)) is not None and d not in listed for j in current):
        st.rerun()  # a job's run folder appeared: the whole page, to list it and follow it live


jobs_panel()

# -- 3) one run ------------------------------------------------------------------------------------
if not runs:
    st.info(
        f"No PPO run yet in `{root}`. Start one above, or from a shell: "
        "`rlhf ppo --reward REWARD_RUN --config pipelines/configs/tiny_ppo.yaml --max-steps 20`."
    )
    st.stop()

st.divider()
paths = [str(r.path) for r in runs]
if (follow := ss.get("ppo_follow")) is not None:  # a run this session started: select it once it exists
    followed = next((j for j in jobs if j.id == follow), None)
    folder = pdash.job_run_dir(followed, root) if followed is not None else None
    if folder is not None and str(folder) in paths:
        ss["ppo_run"] = str(folder)
        del ss["ppo_follow"]
    elif followed is None or not followed.active:
        del ss["ppo_follow"]
# Options show the run id only: a keyed selectbox keeps showing the label its option had when picked, so
# a state in the label ("live") would go stale; the table below has each run's state.
picked = st.selectbox("Run", paths, format_func=lambda p: Path(p).name, key="ppo_run", help="Newest first")
with st.expander(f"All runs ({len(runs)})", icon=":material/list:"):
    st.dataframe(pdash.runs_frame(runs), hide_index=True)
listing = next(r for r in runs if str(r.path) == picked)


def show_header(run: pdash.PPORun, live: bool, job) -> None:
    train = pdash.train_rows(run.metrics)
    done, total = pdash.steps_done(run.metrics), pdash.total_steps(run, job)
    c = st.columns(6)
    ended = job.status if job is not None and job.status in ("stopped", "failed") else "unfinished"
    c[0].metric("Status", "live" if live else ("finished" if run.finished else ended))
    c[1].metric("Steps", f"{done} / {total}" if total else str(done))
    scores = pdash.series(train, "objective/scores")
    c[2].metric(
        "Reward",
        pdash.fmt_number(scores[-1][1]) if scores else "n/a",
        f"{scores[-1][1] - scores[0][1]:+.3f} since step {scores[0][0]}" if len(scores) > 1 else None,
        help="objective/scores: mean reward-model score of the step's rollouts (normalised when "
        "normalize_rewards), since the first step",
    )
    kl = pdash.last_value(train, "objective/kl")
    c[3].metric("KL", pdash.fmt_number(kl[1]) if kl else "n/a", help="objective/kl: nats per response (sampled)")
    coef = pdash.last_value(run.metrics, "kl/coef")
    c[4].metric("KL coefficient", pdash.fmt_number(coef[1], 4) if coef else "n/a", help="kl/coef at the last step")
    ev = pdash.series(run.metrics, "eval/reward_mean")
    c[5].metric(
        "Held-out reward",
        pdash.fmt_number(ev[-1][1]) if ev else "n/a",
        f"{ev[-1][1] - ev[0][1]:+.3f} vs step {ev[0][0]}" if len(ev) > 1 else None,
        help="eval/reward_mean on the fixed held-out prompts (step 0 = the reference policy)",
    )


def show_charts(run: pdash.PPORun) -> None:
    panels = [(t, pdash.curves_frame(run.metrics, keys)) for t, keys in pdash.CHARTS.items()]
    panels = [(t, f) for t, f in panels if not f.empty]
    if not panels:
        st.info("No metrics logged yet (metrics.jsonl is missing or empty).")
        return
    for i, (title, frame) in enumerate(panels):
        if i % 2 == 0:
            cols = st.columns(2, gap="large")  # a row per two charts, so the rows line up
        with cols[i % 2]:
            keys = pdash.CHARTS[title]
            st.markdown(f"**{title}**" + (f" · `{keys[0]}`" if len(keys) == 1 else ""))
            st.altair_chart(pdash.curves_chart(frame, pdash.chart_rules(run, keys)), width="stretch")
    show_phase_times(run)


def show_phase_times(run: pdash.PPORun) -> None:
    times = pdash.phase_times(run.metrics)
    if times.empty:  # TRL's own loop (value_model: separate) and older runs log no time/* keys
        return
    st.markdown("**Where a step's time goes** · `time/*`")
    left, right = st.columns([3, 2], gap="large")
    left.altair_chart(pdash.phase_chart(times), width="stretch")
    right.dataframe(
        times,
        hide_index=True,
        column_config={
            "median s": st.column_config.NumberColumn(format="%.3f", help="Median over the steps"),
            "share": st.column_config.NumberColumn(format="percent", help="Of the sum of the medians"),
        },
    )


def show_samples(run: pdash.PPORun) -> None:
    steps = pdash.sample_steps(run.samples)
    if not steps:
        st.info("No samples yet: samples.jsonl gets the held-out responses of every evaluation (eval_steps).")
        return
    step = st.columns(2)[0].select_slider("Evaluation step", steps, value=steps[-1], key=f"ppo_sample_step_{run.id}")
    frame = pdash.samples_at(run.samples, step)
    st.caption(f"{len(frame)} held-out responses at step {step} (step 0: the reference policy)")
    st.dataframe(
        frame,
        hide_index=True,
        column_config={
            "reward": st.column_config.NumberColumn(format="%.3f"),
            "kl": st.column_config.NumberColumn("KL / token", format="%.4f"),
        },
    )
    for i, row in frame.iterrows():
        title = f"#{i + 1} · reward {pdash.fmt_number(row['reward'])} · {row['length']} tokens"
        with st.expander(title):
            st.markdown("**Prompt**")
            with st.container(border=True):
                render_text(row["prompt"], raw)
            st.markdown("**Response**")
            with st.container(border=True):
                render_text(row["response"], raw)


def show_prompt_history(run: pdash.PPORun) -> None:
    prompts = pdash.sample_prompts(run.samples)
    if not prompts:
        st.info("No samples yet.")
        return
    prompt = st.selectbox(
        "Prompt", prompts, key=f"ppo_prompt_{run.id}", format_func=lambda p: p if len(p) < 120 else p[:117] + "…"
    )
    history = pdash.prompt_history(run.samples, prompt)
    with st.container(border=True):
        render_text(prompt, raw)
    st.dataframe(
        history,
        hide_index=True,
        column_config={
            "reward": st.column_config.NumberColumn(format="%.3f"),
            "kl": st.column_config.NumberColumn("KL / token", format="%.4f"),
        },
    )
    for _, row in history.iterrows():
        st.markdown(
            f"**Step {row['step']}** · reward {pdash.fmt_number(row['reward'])} · "
            f"KL {pdash.fmt_number(row['kl'], 4)} · {row['length']} tokens"
        )
        with st.container(border=True):
            render_text(row["response"], raw)


def show_report(run: pdash.PPORun) -> None:
    report = run.report
    if report is None:
        st.info("No report.json yet: it is written at the end of a run with held-out prompts (eval_prompts > 0).")
        return
    ref, pol = report.get("reference") or {}, report.get("policy") or {}
    c = st.columns(4)
    c[0].metric(
        "Held-out reward, tuned",
        pdash.fmt_number(pol.get("reward_mean")),
        f"{pdash.fmt_number(report.get('reward_gain'))} vs reference {pdash.fmt_number(ref.get('reward_mean'))}",
    )
    wr = pdash.report_win_rate(report)
    c[1].metric(
        "Win rate vs reference",
        pdash._pct(report.get("win_rate")),
        f"{wr['n']} prompts" if wr else None,
        "off",
        delta_arrow="off",
        help="By the reward model, ties count half",
    )
    c[2].metric("KL to reference", pdash.fmt_number(pol.get("kl_to_ref"), 4), help="Exact, per token")
    c[3].metric(
        "Response length, tuned",
        pdash.fmt_number(pol.get("response_length"), 1),
        f"{pdash.fmt_number(report.get('length_change'), 1)} tokens vs reference",
        "off",
    )
    st.markdown(
        f"Win rate vs reference {pdash.fmt_win_rate(wr)}, 95% Wilson interval (by the reward model, ties "
        "count half; W/T/L: prompts won / tied / lost)"
    )
    pairs = pdash.report_pairs(report)
    st.caption(f"{report.get('prompts', len(pairs))} held-out prompts at step {report.get('step')}")
    for i, p in enumerate(pairs):
        title = (
            f"#{i + 1} · reward {pdash.fmt_number(p.get('reward_reference'))} → "
            f"{pdash.fmt_number(p.get('reward_policy'))}"
        )
        with st.expander(title):
            with st.container(border=True):
                render_text(str(p.get("prompt") or ""), raw)
            left, right = st.columns(2)
            for col, name, key in ((left, "Reference", "reference"), (right, "Tuned", "policy")):
                with col:
                    st.markdown(f"**{name}** · {p.get(f'length_{key}', '?')} tokens")
                    with st.container(border=True):
                        render_text(str(p.get(key) or ""), raw)


def queue_human_eval(run_path: str, limit_key: str, labels_key: str) -> None:
    """Button callback: the run's first N held-out pairs into the annotators' queue (idempotent)."""
    try:
        counts = queue_human_evaluation(
            get_store(), Path(run_path), limit=int(ss[limit_key]), required_labels=int(ss[labels_key])
        )
    except WorkbenchError as e:
        ss["ppo_human_eval_error"] = str(e)
        return
    ss["ppo_human_eval_queued"] = counts


def show_human_eval(run: pdash.PPORun) -> None:
    pairs = pdash.report_pairs(run.report)
    st.caption(
        "People compare the reference's and the tuned policy's responses on this run's held-out prompts in the "
        "normal labeling page, blind (no model names; sides at random). These comparisons are never exported "
        "as training data."
    )
    if not pairs:
        st.info("No held-out pairs to evaluate: report.json (with its pairs) is written at the end of a run.")
    else:
        limit_key, labels_key = f"ppo_human_eval_limit_{run.id}", f"ppo_human_eval_labels_{run.id}"
        ss.setdefault(limit_key, len(pairs))
        ss.setdefault(labels_key, int(get_store().get_setting("overlap") or 1))
        c = st.columns([1, 1, 2], vertical_alignment="bottom")
        c[0].number_input("Held-out prompts", min_value=1, max_value=len(pairs), step=1, key=limit_key)
        c[1].number_input("Labels each", min_value=1, step=1, key=labels_key, help="Annotators per comparison")
        c[2].button(
            "Queue human evaluation",
            key="ppo_human_eval_queue",
            icon=":material/how_to_vote:",
            on_click=queue_human_eval,
            args=(str(run.path), limit_key, labels_key),
            help="Adds nothing for prompts already queued; identical response pairs are skipped",
        )
    if error := ss.pop("ppo_human_eval_error", None):
        st.error(f"Not queued: {error}")
    if (q := ss.pop("ppo_human_eval_queued", None)) is not None:
        st.success(
            f"Queued {q['queued']} comparisons ({q['required_labels']} label(s) each) from {q['considered']} "
            f"held-out prompts; {q['already_queued']} already queued, {q['identical_skipped']} skipped "
            "(identical responses)."
        )
    try:
        results = human_evaluation_results(get_store(), run.id)
    except WorkbenchError as e:
        show_error(e)
        return
    if not results["comparisons"]:
        st.info("No human evaluation queued for this run yet.")
        return
    wr = results["win_rate"]
    c = st.columns(3)
    c[0].metric(
        "Win rate by people",
        "n/a" if wr["value"] is None else f"{wr['value']:.2f}",
        f"95% [{wr['low']:.2f}, {wr['high']:.2f}]" if wr["n"] else None,
        "off",
        delta_arrow="off",
        help=f"The tuned policy vs the reference; {TIES_NOTE}",
    )
    c[1].metric("Human labels", wr["n"], help="Submitted labels (undone ones do not count)")
    c[2].metric(
        "Waiting for labels",
        results["pending"],
        help=f"Of {results['comparisons']} evaluation comparisons, these still need labels",
    )
    st.markdown(
        f"Win rate by people {pdash.fmt_win_rate(wr)}, 95% Wilson interval ({TIES_NOTE}; n = labels; W/T/L: "
        f"labels won / tied / lost; {results['both_bad']} both bad)"
    )
    if results["by_annotator"]:
        st.dataframe(
            pdash.human_eval_frame(results),
            hide_index=True,
            column_config={"win rate": st.column_config.NumberColumn(format="%.2f")},
        )


def show_compare(run: pdash.PPORun) -> None:
    others = [r for r in runs if r.path != run.path]
    if not others:
        st.info("Only one run so far: nothing to compare it with.")
        return
    other_path = st.selectbox(
        "Compare with", [str(r.path) for r in others], format_func=lambda p: Path(p).name, key="ppo_compare"
    )
    other = pdash.load_ppo_run(Path(other_path))
    for problem in other.problems:
        st.error(f"{other.id}: {problem}")
    table = pdash.compare_table([run, other])
    st.dataframe(table, hide_index=True, height=35 * (len(table) + 1) + 3)  # every row, no inner scroll
    frame = pdash.compare_frame([run, other])
    keys = [k for k in pdash.COMPARE_KEYS if k in set(frame["metric"])]
    for i, key in enumerate(keys):
        if i % 2 == 0:
            cols = st.columns(2, gap="large")
        with cols[i % 2]:
            st.markdown(f"**{key}**")
            st.altair_chart(pdash.curves_chart(frame[frame["metric"] == key], color="run"), width="stretch")


@st.fragment(run_every=RUN_REFRESH_S if listing.live else None)
def run_view(path: str, was_live: bool) -> None:
    run = pdash.load_ppo_run(Path(path))
    current_jobs, _ = list_jobs(kind="ppo")
    job = pdash.job_for_run(current_jobs, run.path, root)
    live = pdash.is_live(run.path, job)
    if was_live and not live:
        st.rerun()  # finished (or gone quiet): redraw the page once and stop refreshing
    for problem in run.problems:
        st.error(f"{run.id}: {problem}")
    show_header(run, live, job)
    warnings = pdash.run_warnings(run)
    if msg := pdash.stop_message(run.summary):
        st.warning(msg, icon=":material/front_hand:")
        warnings = [w for w in warnings if w.rule != "kl_budget"]  # the stop message says it already
    for w in warnings:
        st.warning(w.message, icon=":material/warning:")
    if live:
        st.caption(f"Live: refreshes every {RUN_REFRESH_S:g} s until summary.json appears.")
    tabs = st.tabs(
        ["Charts", "Samples by step", "One prompt across steps", "Report", "Human evaluation", "Compare runs", "Config"]
    )
    with tabs[0]:
        show_charts(run)
    with tabs[1]:
        show_samples(run)
    with tabs[2]:
        show_prompt_history(run)
    with tabs[3]:
        show_report(run)
    with tabs[4]:
        show_human_eval(run)
    with tabs[5]:
        show_compare(run)
    with tabs[6]:
        if run.config:
            st.json(run.config, expanded=1)
        else:
            st.info("No config.json yet (it is written once the models are loaded).")
        if run.summary:
            st.markdown("**summary.json**")
            st.json(run.summary, expanded=1)


run_view(picked, listing.live)
