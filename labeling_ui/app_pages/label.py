"""Label: one comparison at a time: the prompt, responses A and B side by side, choice, strength."""

from __future__ import annotations

import streamlit as st

from labeling_ui import labeling as lab
from labeling_ui.components import current_user, get_store, render_prompt, render_text
from rlhf.schema import STRENGTHS

user = current_user()
if user is None:  # the navigation only offers this page to logged-in users; belt and braces
    st.stop()
store = get_store()
lab.init_state()
item = lab.ensure_item()
raw = st.session_state.get("raw_text", False)

# 1) progress and guidelines ---------------------------------------------------------------------
progress = store.annotator_progress(user.id)
top = st.columns([3, 1, 1], vertical_alignment="bottom")
top[0].subheader(f"Comparison #{item.id}" if item else "Your queue")
top[1].metric("Done today", progress.done_today)
top[2].metric("Remaining", progress.remaining)
if progress.done_total + progress.remaining:
    st.progress(progress.done_total / (progress.done_total + progress.remaining))
guidelines = store.get_setting("guidelines") or ""
with st.expander("Guidelines", icon=":material/menu_book:", expanded=bool(guidelines) and progress.done_total == 0):
    if guidelines:
        render_text(guidelines)
    else:
        st.caption("No guidelines yet; an admin can add them.")

if flash := st.session_state.flash:
    st.session_state.flash = None
    kind, message = flash
    if kind == "success":
        st.toast(message, icon=":material/check:")
    else:
        getattr(st, kind)(message)

# 2) the item ------------------------------------------------------------------------------------
if item is None:
    st.success("Nothing left in your queue. Thank you!", icon=":material/task_alt:")
    if st.session_state.skipped:
        st.button(
            f"Show the {len(st.session_state.skipped)} skipped item(s) again",
            on_click=lab.revisit_skipped,
        )
    st.button("Undo last", on_click=lab.undo, shortcut=lab.KEYS["undo"])
    st.stop()

st.markdown("**Prompt**")
with st.container(border=True, key="prompt"):
    render_prompt(item.prompt.content, raw)
left, right = lab.sides_of(item)
cols = st.columns(2, gap="medium")
for col, name, completion in ((cols[0], "A", left), (cols[1], "B", right)):
    with col:
        st.markdown(f"**Response {name}**")
        # Long answers scroll inside their box, so both stay side by side and the buttons in view.
        height = 420 if len(completion.text) > 1200 else "content"
        with st.container(border=True, height=height, key=f"response_{name}"):
            render_text(completion.text, raw)

# 3) the judgement -------------------------------------------------------------------------------
side, strength = st.session_state.side, st.session_state.strength
choice_cols = st.columns(4)
for col, (value, label) in zip(
    choice_cols,
    (("left", "A is better"), ("right", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad")),
    strict=True,
):
    col.button(
        label,
        key=f"choose_{value}",
        on_click=lab.choose,
        args=(value,),
        type="primary" if side == value else "secondary",
        shortcut=lab.KEYS[value],
        width="stretch",
    )
strength_cols = st.columns(4)
for i, (col, label) in enumerate(zip(strength_cols, STRENGTHS, strict=True)):
    col.button(
        label.capitalize(),
        key=f"strength_{i}",
        on_click=lab.set_strength,
        args=(i,),
        type="primary" if strength == i and side not in ("tie", "both_bad") else "secondary",
        shortcut=lab.KEYS["strength"][i],
        disabled=side in ("tie", "both_bad"),
        width="stretch",
    )
st.text_input("Rationale (optional)", key="rationale", placeholder="Why? (optional; Enter saves the text)")
actions = st.columns([2, 1, 1])
actions[0].button(
    "Submit", key="submit", on_click=lab.submit, type="primary", shortcut=lab.KEYS["submit"], width="stretch"
)
actions[1].button("Skip", key="skip", on_click=lab.skip, shortcut=lab.KEYS["skip"], width="stretch")
actions[2].button("Undo last", key="undo", on_click=lab.undo, shortcut=lab.KEYS["undo"], width="stretch")
st.caption(lab.SHORTCUT_HELP)
