"""Data (admins): browse and filter comparisons and labels; export the preference dataset as a zip."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from labeling_ui.components import render_prompt, render_text, require_admin, show_error, store_or_stop
from rlhf.errors import WorkbenchError
from rlhf.home import data_home
from rlhf.schema import STRENGTHS
from rlhf.store import ComparisonFilter

require_admin()
store = store_or_stop()
st.title("Data")
raw = st.session_state.get("raw_text", False)
tab_comparisons, tab_labels, tab_export = st.tabs(["Comparisons", "Labels", "Export"])

annotators = {a.id: a.name for a in store.list_annotators()}

with tab_comparisons:
    c = st.columns([1, 1, 1, 1, 2])
    status = c[0].selectbox("Status", ["(any)", "pending", "completed"], key="f_status")
    category = c[1].selectbox("Category", ["(any)", *store.categories()], key="f_category")
    round_ = c[2].selectbox("Round", ["(any)", *store.rounds()], key="f_round")
    annotator = c[3].selectbox(
        "Labelled by",
        ["(anyone)", *annotators],
        format_func=lambda i: annotators.get(i, i),
        key="f_annotator",
    )
    search = c[4].text_input("Prompt contains", key="f_search")
    page_size = 200
    page = st.number_input("Page", min_value=1, value=1, key="f_page") - 1
    rows = store.list_comparisons(
        ComparisonFilter(
            status=None if status == "(any)" else status,
            category=None if category == "(any)" else category,
            round=None if round_ == "(any)" else int(round_),
            annotator_id=None if annotator == "(anyone)" else int(annotator),
            search=search or None,
            limit=page_size,
            offset=page * page_size,
        )
    )
    st.caption(f"{len(rows)} comparison(s) on this page; select a row to see it in full.")
    table = pd.DataFrame(
        rows, columns=["comparison", "prompt", "category", "round", "status", "labels", "required", "source"]
    )
    event = st.dataframe(
        table, hide_index=True, on_select="rerun", selection_mode="single-row", key="comparisons_table"
    )
    selected = event.selection.rows if event is not None else []
    if selected:
        comp = store.get_comparison(int(table.iloc[selected[0]]["comparison"]))
        st.subheader(f"Comparison #{comp.id}")
        with st.container(border=True):
            render_prompt(comp.prompt.content, raw)
        cols = st.columns(2)
        for col, name, completion in ((cols[0], "A", comp.completion_a), (cols[1], "B", comp.completion_b)):
            with col:
                st.markdown(f"**{name}** · `{completion.model}` · {completion.num_tokens or '?'} tokens")
                with st.container(border=True):
                    render_text(completion.text, raw)
        labels = pd.DataFrame(
            [
                {
                    "annotator": lab.annotator.name,
                    "choice": lab.choice,
                    "strength": STRENGTHS[lab.strength] if lab.strength is not None else None,
                    "seen left": lab.shown_left,
                    "time s": lab.time_spent_s,
                    "status": lab.status,
                    "rationale": lab.rationale,
                }
                for lab in comp.labels
            ]
        )
        st.dataframe(labels, hide_index=True)

with tab_labels:
    c = st.columns(3)
    who = c[0].selectbox(
        "Annotator", ["(anyone)", *annotators], format_func=lambda i: annotators.get(i, i), key="l_annotator"
    )
    lstatus = c[1].selectbox("Status", ["(any)", "submitted", "discarded"], key="l_status")
    limit = c[2].number_input("Show at most", min_value=10, max_value=10000, value=500, step=100, key="l_limit")
    labels = store.list_labels(
        annotator_id=None if who == "(anyone)" else int(who),
        status=None if lstatus == "(any)" else lstatus,
        limit=int(limit),
    )
    st.dataframe(pd.DataFrame(labels), hide_index=True)

# -- export ----------------------------------------------------------------------------------------------


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, Path(folder.name) / p.relative_to(folder))
    return buf.getvalue()


with tab_export:
    try:
        from rlhf.io import ExportOptions, export_preferences
    except ImportError as e:
        st.error(f"Export is unavailable in this install (`rlhf.io`: {e}).")
        st.stop()
    defaults = ExportOptions()
    st.caption("Same as `rlhf export`: a `datasets` folder in TRL's preference columns plus manifest.json.")
    with st.form("export"):
        c = st.columns(3)
        name = c[0].text_input("Folder name (under the data home's exports/)", value="preferences")
        test_fraction = c[1].number_input(
            "Test fraction", min_value=0.0, max_value=0.9, value=float(defaults.test_fraction), step=0.05
        )
        seed = c[2].number_input("Seed", min_value=0, value=int(defaults.seed))
        c = st.columns(4)
        ties = c[0].selectbox("Ties", ["drop", "keep"], index=["drop", "keep"].index(defaults.ties))
        both_bad = c[1].selectbox("Both bad", ["drop", "keep"], index=["drop", "keep"].index(defaults.both_bad))
        disagreement = c[2].selectbox(
            "Disagreement",
            ["majority", "unanimous"],
            index=["majority", "unanimous"].index(defaults.disagreement),
        )
        min_labels = c[3].number_input("Min labels", min_value=1, value=int(defaults.min_labels))
        c = st.columns(3)
        margin = c[0].selectbox("Margin", ["strength", "none"], index=["strength", "none"].index(defaults.margin))
        fmt_ = c[1].selectbox(
            "Format",
            ["auto", "conversational", "text"],
            index=["auto", "conversational", "text"].index(defaults.format),
        )
        rounds = c[2].multiselect("Rounds (none: all)", store.rounds())
        force = st.checkbox("Replace the folder if it exists")
        if st.form_submit_button("Export", type="primary"):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
                st.error("`name` must be 1-100 letters, digits, dots, dashes or underscores.")
            else:
                options = ExportOptions(
                    test_fraction=float(test_fraction),
                    seed=int(seed),
                    ties=ties,
                    both_bad=both_bad,
                    disagreement=disagreement,
                    min_labels=int(min_labels),
                    margin=margin,
                    format=fmt_,
                    rounds=[int(r) for r in rounds] or None,
                )
                try:
                    result = export_preferences(store, data_home() / "exports" / name, options, force=force)
                except WorkbenchError as e:
                    show_error(e)
                else:
                    st.session_state["export_done"] = (str(result.path), result.counts)
    if done := st.session_state.get("export_done"):
        path, counts = Path(done[0]), done[1]
        st.success(f"Exported to {path}")
        st.json(counts, expanded=False)
        if path.exists():
            st.download_button(
                "Download as zip",
                data=zip_folder(path),
                file_name=f"{path.name}.zip",
                mime="application/zip",
                type="primary",
                icon=":material/download:",
                on_click="ignore",
            )
