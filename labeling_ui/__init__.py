"""The Streamlit labeling app: annotators compare responses; admins run projects and check quality.

Run it with `streamlit run labeling_ui/streamlit_app.py`. Pages stay thin: every rule lives in the
`rlhf` library (the store's queue, `rlhf.agreement`), and this package only draws and dispatches.
"""
