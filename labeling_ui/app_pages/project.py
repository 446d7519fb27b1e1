"""Project (admins): import prompts, generate candidates in the background, import preferences, settings."""

from __future__ import annotations

import dataclasses
import tempfile

import streamlit as st

from labeling_ui.components import (
    MAX_UPLOAD_MB,
    check_upload,
    job_runner,
    require_admin,
    show_error,
    store_or_stop,
    upload_to_temp,
)
from rlhf.errors import WorkbenchError

require_admin()
store = store_or_stop()


try:  # the import/export module is part of the library; say so plainly if this install lacks it
    from rlhf import io as rio
except ImportError as e:
    rio = None
    io_missing = f"Import is unavailable in this install (`rlhf.io`: {e})."

st.title("Project")
counts = store.counts()
cols = st.columns(5)
cols[0].metric("Prompts", counts["prompts"])
cols[1].metric("Comparisons", counts["comparisons"])
cols[2].metric("Pending", counts["comparisons_pending"])
cols[3].metric("Completed", counts["comparisons_completed"])
cols[4].metric("Labels", counts["labels_submitted"])

tab_prompts, tab_generate, tab_prefs, tab_settings = st.tabs(
    ["Import prompts", "Generate candidates", "Import preferences", "Settings"]
)


def run_import(kind: str, uploaded, dry_run: bool) -> None:
    """Validate the upload, hand it to rlhf.io through a temporary file, report the result."""
    if rio is None:
        st.error(io_missing)
        return
    suffixes = (".jsonl", ".json", ".csv")
    if problems := check_upload(uploaded, suffixes):
        st.error("\n".join(problems))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = upload_to_temp(uploaded, tmp)
        try:
            fn = rio.import_prompts if kind == "prompts" else rio.import_preferences
            result = fn(store, path, dry_run=dry_run)
        except WorkbenchError as e:
            show_error(e)
            return
    what = "prompts" if kind == "prompts" else "comparisons"
    verb = "would add" if result.dry_run else "added"
    st.success(
        f"{uploaded.name}: {result.read} records read; {verb} {result.added} {what}; "
        f"{result.already_present} already present."
    )


def import_form(kind: str, key: str, label: str) -> None:
    """One upload form (file, dry-run switch, submit) that hands the file to `run_import`."""
    with st.form(f"import_{key}"):
        up = st.file_uploader(label, type=["jsonl", "json", "csv"], key=f"{key}_file", max_upload_size=MAX_UPLOAD_MB)
        dry = st.checkbox("Dry run (validate only)", key=f"{key}_dry")
        if st.form_submit_button(f"Import {kind}", type="primary"):
            if up is None:
                st.warning("Choose a file first.")
            else:
                run_import(kind, up, dry)


with tab_prompts:
    st.caption(
        f"JSON Lines (`prompt` text or chat `messages`, optional `category`, `tags`, `split`) or CSV "
        f"with a header row; up to {MAX_UPLOAD_MB} MB. All or nothing: one bad line imports nothing."
    )
    import_form("prompts", "prompts", "Prompts file")

with tab_prefs:
    st.caption(
        "TRL preference rows (`prompt`, `chosen`, `rejected`, optional `margin`) or Anthropic HH style "
        "(`chosen` / `rejected` transcripts). They become completed comparisons labelled by `imported`."
    )
    import_form("preferences", "prefs", "Preferences file")

# -- generation (background thread; the fragment below polls its progress) ----------------------
runner = job_runner()


def start_generation(model: str, settings, limit: int, category: str | None, round_: int, required: int) -> None:
    from rlhf.generate import generate_candidates

    def work(progress):
        return generate_candidates(
            store,
            model,
            settings,
            limit=limit or None,
            category=category,
            required_labels=required,
            round=round_,
            progress=progress,
        )

    try:
        runner.start("generate", f"{model}: up to {limit or 'all'} prompts, K={settings.num_candidates}", work)
    except WorkbenchError as e:
        st.session_state["generate_error"] = str(e)


with tab_generate:
    from rlhf.generate import GenerationSettings

    defaults = GenerationSettings()
    running = runner.running("generate")
    with st.form("generate"):
        c1, c2, c3 = st.columns(3)
        model = c1.text_input("Model", value="default", help="`default` (embedded SmolLM2), a local path, or a hub id")
        limit = c2.number_input("Prompts (0 = all without candidates)", min_value=0, value=20, step=10)
        category = c3.selectbox("Category", ["(all)", *store.categories()])
        c1, c2, c3, c4 = st.columns(4)
        k = c1.number_input("Candidates per prompt (K)", min_value=2, max_value=8, value=defaults.num_candidates)
        do_sample = c2.checkbox("Sample", value=defaults.do_sample, help="Off: greedy (needs K = 1)")
        temperature = c3.number_input("Temperature", min_value=0.05, max_value=3.0, value=defaults.temperature)
        max_new = c4.number_input("Max new tokens", min_value=1, max_value=2048, value=defaults.max_new_tokens)
        c1, c2, c3, c4 = st.columns(4)
        top_k = c1.number_input("Top-k (0 = off)", min_value=0, value=defaults.top_k)
        top_p = c2.number_input("Top-p", min_value=0.01, max_value=1.0, value=defaults.top_p)
        seed = c3.number_input("Seed", min_value=0, value=defaults.seed)
        round_ = c4.number_input("Round", min_value=0, value=max(store.rounds() or [0]))
        required = st.number_input(
            "Labels per comparison (overlap)",
            min_value=1,
            max_value=10,
            value=int(store.get_setting("overlap")),
        )
        if st.form_submit_button("Generate", type="primary", disabled=running is not None):
            settings = dataclasses.replace(
                defaults,
                num_candidates=int(k),
                do_sample=do_sample,
                temperature=float(temperature),
                max_new_tokens=int(max_new),
                top_k=int(top_k),
                top_p=float(top_p),
                seed=int(seed),
            )
            if problems := settings.problems():
                st.error("\n".join(f"- {p}" for p in problems))
            else:
                start_generation(
                    model.strip() or "default",
                    settings,
                    int(limit),
                    None if category == "(all)" else category,
                    int(round_),
                    int(required),
                )
                st.rerun()
    if err := st.session_state.pop("generate_error", None):
        st.error(err)

    @st.fragment(run_every=1.0 if running else None)
    def generation_status() -> None:
        job = runner.latest("generate")
        if job is None:
            st.caption("No generation has run in this server yet.")
            return
        if job.status == "running":
            total = f"{job.done}/{job.total} prompts" if job.total else "loading the model..."
            st.progress(job.fraction, text=f"Generating ({job.description}): {total}")
            st.caption("You can keep using the app; this updates every second.")
        elif job.status == "done":
            r = job.result
            st.success(
                f"Done ({job.description}): {r.prompts} prompts, {r.completions} completions, "
                f"{r.comparisons} comparisons, {r.identical_pairs_skipped} identical pairs skipped, "
                f"{r.tokens_per_s:.0f} tokens/s."
            )
        else:
            st.error(f"Generation failed ({job.description}): {job.message}")
        if running and job.status != "running":
            st.rerun()  # the whole page, to stop polling and enable the form again

    generation_status()

# -- settings --------------------------------------------------------------------------------------


def save_settings() -> None:
    try:
        store.set_setting("overlap", int(st.session_state.overlap_input))
        store.set_setting("guidelines", st.session_state.guidelines_input)
        st.session_state["settings_saved"] = True
    except WorkbenchError as e:
        st.session_state["settings_error"] = str(e)


with tab_settings:
    st.number_input(
        "Overlap: labels each new comparison needs",
        min_value=1,
        max_value=10,
        value=int(store.get_setting("overlap")),
        key="overlap_input",
        help="2 or more lets the Quality page measure agreement. Applies to comparisons created from now on.",
    )
    edit, preview = st.columns(2)
    edit.text_area(
        "Guidelines (Markdown, shown to annotators)",
        value=store.get_setting("guidelines") or "",
        height=300,
        key="guidelines_input",
    )
    with preview:
        st.caption("Preview")
        with st.container(border=True):
            st.markdown(st.session_state.guidelines_input or "_(empty)_")
    st.button("Save settings", type="primary", on_click=save_settings)
    if st.session_state.pop("settings_saved", False):
        st.success("Settings saved.")
    if err := st.session_state.pop("settings_error", None):
        st.error(err)
