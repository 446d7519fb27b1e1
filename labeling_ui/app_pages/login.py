"""Log in: paste the token an admin gave you (or open your `?token=...` link)."""

from __future__ import annotations

import streamlit as st

from labeling_ui.components import get_store, log_in

st.title("RLHF Workbench")
st.write("Compare two responses to a prompt and say which is better. Log in with your token.")
if message := st.session_state.pop("login_message", None):
    st.warning(message)

with st.form("login", border=True):
    token = st.text_input("Token", type="password", help="An admin creates it on the Annotators page.")
    if st.form_submit_button("Log in", type="primary"):
        user = get_store().authenticate(token)
        if user is None:
            st.error("That token is not valid (or the account is deactivated). Ask an admin for a new one.")
        else:
            log_in(user)
            st.rerun()
