"""Shared pieces of the app: the store handle, who is logged in, safe rendering of user text, and the
panels of background process jobs (PPO runs, rounds).

Every piece of text that came from a user or a model goes through `render_text` / `render_prompt`:
Markdown with raw HTML disabled (Streamlit's default; this package never passes
`unsafe_allow_html`), so `<script>` or `<img onerror>` shows as literal text.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from labeling_ui.jobs import JobRunner
from labeling_ui.process_jobs import ProcessJob, load_job, log_tail, stop_job
from rlhf.errors import WorkbenchError
from rlhf.schema import Annotator
from rlhf.store import Store, default_db_url

USER_KEY = "user_id"


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store:
    # One Store (engine, connection pool, queue leases) per database per server process, shared by
    # every session and never mutated per user.
    return Store(url)


@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    """Background jobs of this server process (they outlive the session that started them)."""
    return JobRunner()


def get_store() -> Store:
    """The store named by RLHF_DB_URL / RLHF_HOME (keyed by URL, so tests can switch homes)."""
    return _store(default_db_url())


def store_or_stop() -> Store:
    """The store, ready to use, or a friendly error and the end of this run."""
    try:
        store = get_store()
        store.require_ready()
    except WorkbenchError as e:
        st.error(str(e))
        st.stop()
    return store


# -- who is logged in ----------------------------------------------------------------------------


def log_in(annotator: Annotator) -> None:
    st.session_state[USER_KEY] = annotator.id


def log_out() -> None:
    """Button callback: give the in-flight item back and forget this session's state."""
    user_id = st.session_state.get(USER_KEY)
    if user_id is not None:
        get_store().release_comparison(user_id)
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def current_user() -> Annotator | None:
    """The logged-in annotator, re-read every run so a deactivation takes effect at once."""
    user_id = st.session_state.get(USER_KEY)
    if user_id is None:
        return None
    user = get_store().get_annotator(user_id)
    if user is None or not user.active:
        st.session_state.pop(USER_KEY, None)
        st.session_state["login_message"] = "Your account was deactivated; ask an admin."
        return None
    return user


def require_admin() -> Annotator:
    """Stop the page unless an admin is logged in (annotators never see admin data)."""
    user = current_user()
    if user is None or user.role != "admin":
        st.error("This page is for admins only.")
        st.stop()
    return user


def show_error(e: Exception) -> None:
    """A library error as one friendly message (never a traceback)."""
    st.error(str(e))


# -- safe rendering ------------------------------------------------------------------------------

_ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "ai": "assistant",
}


def render_text(text: str, raw: bool = False) -> None:
    """Model or user text: Markdown with raw HTML shown as text, or verbatim when `raw`."""
    if raw:
        st.code(text, language=None, wrap_lines=True)
    else:
        st.markdown(text)


def render_prompt(content: str | list[dict[str, Any]], raw: bool = False) -> None:
    """A plain prompt, or chat messages as a conversation."""
    if isinstance(content, str):
        render_text(content, raw)
        return
    for message in content:
        role = str(message.get("role", "user"))
        name = _ROLE_NAMES.get(role.lower())
        if name:
            box = st.chat_message(name)
        else:  # system / tool / anything else: a neutral avatar and the role as a caption
            box = st.chat_message("system", avatar=":material/settings:")
        with box:
            if not name:
                st.caption(role)
            render_text(str(message.get("content", "")), raw)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for display; "n/a" when a measure is undefined."""
    return "n/a" if value is None else f"{value:.{digits}f}"


# -- uploads -------------------------------------------------------------------------------------

MAX_UPLOAD_MB = 20


def check_upload(uploaded: Any, suffixes: tuple[str, ...], max_mb: int = MAX_UPLOAD_MB) -> list[str]:
    """Problems with an uploaded file (type by name and by content, size), before anything is read."""
    problems = []
    name = str(uploaded.name)
    if not name.lower().endswith(suffixes):
        problems.append(f"{name}: expected a {' or '.join(suffixes)} file")
    size = getattr(uploaded, "size", None) or len(uploaded.getvalue())
    if size > max_mb * 1024 * 1024:
        problems.append(f"{name}: {size / 1e6:.1f} MB is over the {max_mb} MB limit; import it with the CLI")
    head = uploaded.getvalue()[:4096]
    if b"\x00" in head:
        problems.append(f"{name}: looks like a binary file, not text")
    return problems


def upload_to_temp(uploaded: Any, folder: str) -> Any:
    """Write an upload to `folder` under its own (sanitised) name, so errors name the user's file."""
    from pathlib import Path

    safe = Path(str(uploaded.name)).name.replace("\x00", "") or "upload"
    path = Path(folder) / safe
    path.write_bytes(uploaded.getvalue())
    return path


# -- background process jobs (the PPO runs and Rounds pages) ---------------------------------------


def stop_job_then_rerun(job_id: str, jobs_folder: str, error_key: str, grace_s: float) -> None:
    """Stop button callback: SIGTERM to the job's process group, SIGKILL after `grace_s`; then the whole
    page reruns (not only the jobs fragment the button sits in), so the job shows as ended. A failure
    to stop is left in `st.session_state[error_key]` for the page to show."""
    try:
        stop_job(load_job(Path(jobs_folder) / f"{job_id}.json"), grace_s=grace_s)
    except ValueError as e:
        st.session_state[error_key] = str(e)
    st.rerun()  # from a callback: escalates the interaction to a full-app rerun


def jobs_to_show(jobs: Sequence[ProcessJob], ended: int) -> list[ProcessJob]:
    """The running jobs, then the newest `ended` ended ones."""
    return [j for j in jobs if j.active] + [j for j in jobs if not j.active][:ended]


def job_log(job: ProcessJob) -> None:
    """The job's command and the end of its log, as code (text), open when it failed."""
    with st.expander("Log (last lines)", expanded=job.status == "failed"):
        st.code(shlex.join(job.command), language="bash", wrap_lines=True)
        st.code(log_tail(job) or "(nothing logged yet)", language=None)
