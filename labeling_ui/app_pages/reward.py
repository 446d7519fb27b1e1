"""Reward model (admins): pick a reward run; its held-out report as charts and tables, training curves,
the misranked pairs, and a "try it" panel scoring typed responses (with the reward per token prefix).

Data and charts come from `labeling_ui.reward_inspector`; this file only lays them out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from labeling_ui import reward_inspector as ri
from labeling_ui.components import fmt, render_text, require_admin, show_error
from rlhf.errors import WorkbenchError
from rlhf.reward import hardware_has_bf16, load_reward_model
from rlhf.runs import runs_dir
from rlhf.stats import fmt_proportion

num = ri.as_number  # a finite float or None, whatever the JSON held
MISRANKED_PER_PAGE = 10
MAX_RESPONSES = 6
VERDICT_ICON = ":material/gpp_bad:"  # marks the learning-verdict banner (tests tell it from other errors)

require_admin()
st.title("Reward model")
raw = st.session_state.get("raw_text", False)
ss = st.session_state
ss.setdefault("rw_scored", None)  # {"run", "prompt", "responses", "scores": DataFrame} of the last "Score"
ss.setdefault("rw_trace", None)  # {"run", "response", "points"} of the last prefix trace
ss.setdefault("rw_n", 2)
for i in range(MAX_RESPONSES):
    ss.setdefault(f"rw_resp_{i}", "")
ss.setdefault("rw_prompt", "")


@st.cache_resource(show_spinner="Loading the reward model…", max_entries=2)
def reward_model(run_path: str):
    """(model, tokenizer) of a run, loaded once per server process and shared read-only (inference only)."""
    return load_reward_model(Path(run_path))


def use_bf16() -> bool:
    """Score as the run scored its own report (bf16 autocast when it trained so and the hardware has it)."""
    return bool(run.summary.get("bf16")) and hardware_has_bf16()


def load_pair(m: dict) -> None:
    """Button callback: put a misranked pair into the "Try it" inputs."""
    ss["rw_prompt"] = str(m.get("prompt") or "")
    ss["rw_resp_0"], ss["rw_resp_1"] = str(m.get("chosen") or ""), str(m.get("rejected") or "")
    ss["rw_n"] = max(2, ss["rw_n"])
    for i in range(2, MAX_RESPONSES):
        ss[f"rw_resp_{i}"] = ""
    st.toast("Loaded into the **Try it** tab (chosen = Response 1).")


# -- pick a run ----------------------------------------------------------------------------------------
try:
    root = runs_dir("reward")
except WorkbenchError as e:
    show_error(e)
    st.stop()
runs = ri.list_reward_runs(root)
if not runs:
    st.info(
        f"No finished reward run yet in `{root}`. Export the labels (`rlhf export`, or the Data page), "
        "then train one: `rlhf train-reward EXPORT_DIR` (add `--max-steps 50` for a quick look)."
    )
    st.stop()
labels = {str(r.path): r.label() for r in runs}
picked = st.selectbox("Run", list(labels), format_func=labels.get, key="rw_run", help="Newest first")
run = ri.load_reward_run(Path(picked))
for problem in run.problems:
    st.error(f"{run.path.name}: {problem}")

summary, report = run.summary, run.report
if summary:
    verdict = ri.learning(summary)
    if verdict["status"] != "learned":  # the loudest thing on the page: PPO on this model optimises noise
        st.error(ri.verdict_banner(verdict), icon=VERDICT_ICON)
    c = st.columns(4)
    c[0].metric(
        "Held-out accuracy",
        ri.pct(summary.get("eval_accuracy")),
        ri.accuracy_delta(summary),
        help="Pairwise accuracy on the held-out split: share of pairs where r(chosen) > r(rejected)",
    )
    c[1].metric(
        "Before training",
        ri.pct(summary.get("eval_accuracy_before")),
        help="The same pairs scored by the untrained score head (the baseline to beat)",
    )
    c[2].metric(
        "Annotator agreement",
        ri.pct(report.get("annotator_agreement")) if report else "n/a",
        help="Mean share of agreeing labels on held-out items with 2+ labels: a ceiling for the model. "
        "n/a when every held-out item has a single label",
    )
    c[3].metric("Pairs (train / held-out)", f"{summary.get('train_pairs', '?')} / {summary.get('test_pairs', '?')}")
    c = st.columns(4)
    dropped = summary.get("dropped_too_long")
    c[0].metric(
        "Dropped as too long",
        ri.dropped_too_long(summary) if dropped is not None else "n/a",
        help=f"Pairs over max_length, dropped by TRL (not truncated): {dropped}",
    )
    c[1].metric("Pairs / s", fmt(num(summary.get("pairs_per_second")), 1), help="Training throughput")
    c[2].metric("Reward mean", fmt(num(summary.get("reward_mean")), 3), help="Over the training responses")
    c[3].metric("Reward std", fmt(num(summary.get("reward_std")), 3), help="PPO normalises rewards with mean and std")
    st.markdown(ri.held_out_line(summary))
    if training := ri.training_line(summary):
        st.markdown(training)
        candidates = ri.candidates_frame(summary)
        if not candidates.empty:
            with st.expander("Feature kinds the head was chosen among"):
                st.dataframe(
                    candidates,
                    hide_index=True,
                    column_config={"validation accuracy": st.column_config.NumberColumn(format="percent")},
                )

tab_report, tab_curves, tab_misranked, tab_try = st.tabs(["Report", "Training curves", "Misranked pairs", "Try it"])

# -- the held-out report -------------------------------------------------------------------------------
with tab_report:
    if report is None:
        if not (run.path / "eval_report.json").exists():
            st.info(
                "This run has no eval_report.json: it had no held-out split (export with a test fraction "
                "above 0) or did not finish. Training curves and Try it still work."
            )
    else:
        overall = num(report.get("accuracy"))
        acc_iv = ri.report_interval(report)
        st.caption(
            f"{report.get('pairs', 0)} held-out pairs · accuracy {ri.pct(overall)} (red dashed line), "
            f"{fmt_proportion(acc_iv)} with its 95% interval · chance 50% (grey dotted) · the number beside "
            "each bar is its pairs; the tables below give each slice's interval"
        )
        for i, (key, (title, _)) in enumerate(ri.SLICES.items()):
            if i % 2 == 0:
                cols = st.columns(2, gap="large")  # a row per two charts, so the rows line up
            frame = ri.slice_frame(report, key)
            with cols[i % 2]:
                st.markdown(f"**{title}**")
                if frame.empty:
                    st.caption("No pairs.")
                else:
                    st.altair_chart(ri.accuracy_chart(frame, overall), width="stretch")
        with st.expander("All slices as a table"):
            st.dataframe(
                ri.slices_table(report),
                hide_index=True,
                column_config={
                    "accuracy": st.column_config.NumberColumn(format="percent"),
                    ri.INTERVAL: st.column_config.TextColumn(help="95% Wilson interval of the accuracy"),
                },
            )
            agreement = ri.slice_frame(report, "by_agreement")
            if not agreement.empty:
                st.caption("Model accuracy beside the annotators' own agreement on the same items")
                st.dataframe(
                    agreement,
                    hide_index=True,
                    column_config={
                        "accuracy": st.column_config.NumberColumn(format="percent"),
                        ri.INTERVAL: st.column_config.TextColumn(help="95% Wilson interval of the accuracy"),
                        "annotator agreement": st.column_config.NumberColumn(format="percent"),
                    },
                )

        st.subheader("Calibration")
        cal = ri.calibration_frame(report)
        ece = (report.get("calibration") or {}).get("ece")
        left, right = st.columns([3, 2])
        with left:
            if cal.empty:
                st.caption("No pairs to calibrate.")
            else:
                st.altair_chart(ri.reliability_chart(cal), width="stretch")
        with right:
            st.metric(
                "Expected calibration error",
                fmt(num(ece), 3),
                help="Mean |predicted - observed| over the bins, weighted by their size (0 = perfect)",
            )
            st.caption(
                "Predicted P(preferred) = σ(r_chosen − r_rejected), counted both ways round, so the diagram "
                "is symmetric about 50%. Right of 50%, points below the dashed diagonal mean over-confidence; "
                "above it, under-confidence."
            )
            st.dataframe(
                cal,
                hide_index=True,
                column_config={
                    "lo": st.column_config.NumberColumn("from", format="%.1f"),
                    "hi": st.column_config.NumberColumn("to", format="%.1f"),
                    "mean_predicted": st.column_config.NumberColumn("mean predicted", format="%.3f"),
                    "observed": st.column_config.NumberColumn(format="%.3f"),
                },
            )

        st.subheader("Length bias")
        lb = report.get("length_bias") or {}
        shorter, longer = lb.get("chosen_shorter") or {}, lb.get("chosen_longer") or {}
        corr = num(lb.get("pearson_reward_length"))
        c = st.columns(3)
        c[0].metric(
            "corr(reward, length)",
            "n/a" if corr is None else f"{corr:+.2f}",
            help="Pearson correlation of reward with response length (tokens) over all held-out responses",
        )
        for col, name, part in ((c[1], "shorter", shorter), (c[2], "longer", longer)):
            col.metric(
                f"Accuracy, chosen is {name}",
                ri.pct(part.get("accuracy")),
                f"{part.get('n', 0)} pairs · 95% {ri.slice_interval(part)}",
                "off",
                delta_arrow="off",
                help="Share of these pairs ranked right, its 95% Wilson interval, and how many pairs",
            )
        st.caption(
            f"{lb.get('equal_length', 0)} pair(s) of equal length left out. A model that mostly counts tokens "
            "scores well when the chosen response is longer and badly when it is shorter."
        )

# -- training curves -----------------------------------------------------------------------------------
with tab_curves:
    panels = [(t, ri.curves_frame(run.metrics, keys)) for t, keys in ri.CURVES.items()]
    panels = [(t, f) for t, f in panels if not f.empty]
    if not panels:
        st.info("No training metrics logged (metrics.jsonl is missing or empty).")
    cols = st.columns(2)
    for i, (title, frame) in enumerate(panels):
        with cols[i % 2]:
            st.markdown(f"**{title}**")
            st.altair_chart(ri.curves_chart(frame), width="stretch")
    if run.config:
        with st.expander("Resolved configuration (config.json)"):
            st.json(run.config, expanded=1)

# -- misranked pairs -----------------------------------------------------------------------------------
with tab_misranked:
    if report is None:
        st.info("No evaluation report for this run, so no misranked pairs.")
    elif not report.get("misranked"):
        st.success("No misranked held-out pair: the model ranks every one the annotators' way.")
    else:
        mis = report["misranked"]
        st.caption(
            f"{report.get('misranked_total', len(mis))} held-out pair(s) ranked the wrong way round; the "
            f"report keeps the {len(mis)} worst (largest r_rejected − r_chosen first)."
        )
        st.dataframe(
            ri.misranked_frame(report),
            hide_index=True,
            column_config={
                "comparison_id": st.column_config.NumberColumn("comparison", format="%d"),
                "gap": st.column_config.NumberColumn(format="%.3f"),
                "r_chosen": st.column_config.NumberColumn(format="%.3f"),
                "r_rejected": st.column_config.NumberColumn(format="%.3f"),
            },
            height=min(400, 36 * (len(mis) + 1) + 2),
        )
        pages = (len(mis) + MISRANKED_PER_PAGE - 1) // MISRANKED_PER_PAGE
        page = 1
        if pages > 1:
            page = int(
                st.number_input(
                    f"Page (of {pages})", min_value=1, max_value=pages, value=1, key=f"rw_page_{run.path.name}"
                )
            )
        start = (page - 1) * MISRANKED_PER_PAGE
        for i, m in enumerate(mis[start : start + MISRANKED_PER_PAGE], start=start):
            title = f"#{i + 1} · comparison {m.get('comparison_id')} · gap {fmt(num(m.get('gap')), 3)}"
            with st.expander(title, expanded=i == start):
                st.markdown("**Prompt**")
                with st.container(border=True):
                    render_text(str(m.get("prompt") or ""), raw)
                left, right = st.columns(2)
                for col, side, key in ((left, "Chosen by annotators", "chosen"), (right, "Rejected", "rejected")):
                    with col:
                        st.markdown(f"**{side}** · reward {fmt(num(m.get(f'r_{key}')), 3)}")
                        with st.container(border=True):
                            render_text(str(m.get(key) or ""), raw)
                st.button(
                    "Try it with this pair",
                    key=f"rw_load_{i}",
                    on_click=load_pair,
                    args=(m,),
                    icon=":material/science:",
                )

# -- try it --------------------------------------------------------------------------------------------
with tab_try:
    if not run.has_model:
        st.info(f"{run.path.name} holds no model/ folder, so there is nothing to score with.")
        st.stop()
    st.caption(
        "Type or paste a prompt and two or more responses: each is scored by this run's model exactly as "
        "in training (chat template when the model has one)."
    )
    st.number_input("Responses", min_value=2, max_value=MAX_RESPONSES, key="rw_n", width=160)
    with st.form("rw_try"):
        st.text_area("Prompt", key="rw_prompt", height=100)
        n = int(ss["rw_n"])
        cols = st.columns(min(n, 3))
        for i in range(n):
            cols[i % len(cols)].text_area(f"Response {i + 1}", key=f"rw_resp_{i}", height=150)
        submitted = st.form_submit_button("Score", key="rw_score_button", type="primary", icon=":material/calculate:")
    if submitted:
        prompt = ss["rw_prompt"]
        responses = [ss[f"rw_resp_{i}"] for i in range(n)]
        problems = ([] if prompt.strip() else ["type a prompt"]) + [
            f"Response {i + 1} is empty" for i, r in enumerate(responses) if not r.strip()
        ]
        if problems:
            st.error("Cannot score: " + "; ".join(problems) + ".")
        else:
            try:
                model, tok = reward_model(str(run.path))
                with st.spinner("Scoring…"):
                    scores = ri.score_responses(model, tok, prompt, responses, bf16=use_bf16())
            except Exception as e:  # the UI boundary: a corrupt model folder is a message, not a traceback
                st.error(f"Cannot score with the model in {run.path.name}/model: {e}")
            else:
                ss["rw_scored"] = {"run": str(run.path), "prompt": prompt, "responses": responses, "scores": scores}
                ss["rw_trace"] = None

    scored = ss["rw_scored"]
    if scored and scored["run"] == str(run.path):
        scores = ri.normalised(scored["scores"], summary.get("reward_mean"), summary.get("reward_std"))
        best = int(scores["reward"].idxmax())
        cols = st.columns(len(scores))
        for i, row in scores.iterrows():
            cols[i].metric(
                row["response"],
                f"{row['reward']:+.3f}",
                "best" if i == best else f"{row['reward'] - scores['reward'][best]:+.3f} vs best",
                delta_arrow="off" if i == best else "auto",
            )
        left, right = st.columns([2, 3])
        left.dataframe(
            scores,
            hide_index=True,
            column_config={
                "reward": st.column_config.NumberColumn(format="%.4f"),
                "normalised": st.column_config.NumberColumn(
                    format="%.3f", help="(reward − training mean) / training std: what PPO sees"
                ),
            },
        )
        right.altair_chart(ri.scores_chart(scores), width="stretch")
        if len(scores) == 2:
            p = ri.preference_probability(scores["reward"][0], scores["reward"][1])
            left.caption(f"P(Response 1 preferred over Response 2) = σ(r₁ − r₂) = {p:.3f}")

        st.subheader("Reward per token prefix")
        st.caption(
            "The score of the prompt plus each prefix of one response: where along the text the reward "
            "rises or falls. Dashed: the mean reward over the training responses."
        )
        with st.form("rw_trace_form"):
            c = st.columns([2, 2, 1], vertical_alignment="bottom")
            which = c[0].selectbox(
                "Response", range(len(scored["responses"])), format_func=lambda i: f"Response {i + 1}"
            )
            points = c[1].slider("Points at most", min_value=8, max_value=128, value=48, step=8)
            trace = c[2].form_submit_button("Trace", key="rw_trace_button", icon=":material/show_chart:")
        if trace:
            try:
                model, tok = reward_model(str(run.path))
                with st.spinner("Scoring prefixes…"):
                    pts = ri.trace_prefixes(
                        model, tok, scored["prompt"], scored["responses"][which], max_points=points, bf16=use_bf16()
                    )
            except Exception as e:  # the UI boundary: a corrupt model folder is a message, not a traceback
                st.error(f"Cannot score with the model in {run.path.name}/model: {e}")
            else:
                ss["rw_trace"] = {"run": str(run.path), "response": which, "points": pts}
        traced = ss["rw_trace"]
        if traced and traced["run"] == str(run.path):
            st.altair_chart(ri.prefix_chart(traced["points"], num(summary.get("reward_mean"))), width="stretch")
            with st.expander(f"Prefix scores of Response {traced['response'] + 1} as a table"):
                st.dataframe(
                    pd.DataFrame(traced["points"], columns=["tokens", "reward", "text"]),
                    hide_index=True,
                    column_config={"reward": st.column_config.NumberColumn(format="%.4f")},
                )
