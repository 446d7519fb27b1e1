"""RLHF Workbench: preference store, labeling, reward modelling and PPO on top of TRL.

The library never imports streamlit; the UI (`labeling_ui`) imports the library.
"""

__version__ = "0.1.0"
