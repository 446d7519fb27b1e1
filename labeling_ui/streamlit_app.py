"""Entry point: `streamlit run labeling_ui/streamlit_app.py` (store from RLHF_HOME / RLHF_DB_URL).

Logs the visitor in (a `?token=` link or the form), then offers only the pages their role may see:
annotators get the labeling page; admins also get project, annotator, quality, data, reward-model,
PPO-run and rounds pages. Each admin page checks the role again itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

try:
    import labeling_ui  # noqa: F401  (installed with the package)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labeling_ui.components import current_user, log_in, log_out, store_or_stop

st.set_page_config(page_title="RLHF Workbench", page_icon=":material/thumbs_up_down:", layout="wide")
store = store_or_stop()

# A login link: authenticate once, then drop the token from the address bar (and from history).
if token := st.query_params.get("token"):
    del st.query_params["token"]
    user = store.authenticate(token)
    if user is None:
        st.session_state["login_message"] = "That login link is not valid (or the account is deactivated)."
    else:
        log_in(user)

user = current_user()
if user is None:
    page = st.navigation([st.Page("app_pages/login.py", title="Log in", icon=":material/login:")], position="hidden")
else:
    label = st.Page("app_pages/label.py", title="Label", icon=":material/thumbs_up_down:", default=True)
    if user.role == "admin":
        admin = [
            st.Page("app_pages/project.py", title="Project", icon=":material/folder_open:", url_path="project"),
            st.Page("app_pages/annotators.py", title="Annotators", icon=":material/group:", url_path="annotators"),
            st.Page("app_pages/quality.py", title="Quality", icon=":material/insights:", url_path="quality"),
            st.Page("app_pages/data.py", title="Data", icon=":material/table_view:", url_path="data"),
            st.Page("app_pages/reward.py", title="Reward model", icon=":material/model_training:", url_path="reward"),
            st.Page("app_pages/ppo.py", title="PPO runs", icon=":material/monitoring:", url_path="ppo"),
            st.Page("app_pages/rounds.py", title="Rounds", icon=":material/autorenew:", url_path="rounds"),
        ]
        page = st.navigation({"Labeling": [label], "Admin": admin})
    else:
        page = st.navigation([label], position="hidden")
    with st.sidebar:
        st.markdown(f"Logged in as **{user.name}** ({user.role})")
        st.toggle("Show raw text", key="raw_text", help="Responses verbatim, without Markdown formatting.")
        st.button("Log out", on_click=log_out, icon=":material/logout:")
page.run()
