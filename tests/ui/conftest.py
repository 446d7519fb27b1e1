"""AppTest fixtures: a seeded store and the app driven in-process (no browser, no server)."""

from __future__ import annotations

import pytest
from labeling_seed import APP, Seeded, seed_labeling
from streamlit.testing.v1 import AppTest


@pytest.fixture
def seeded(store) -> Seeded:
    return seed_labeling(store, n_prompts=4, required=1, n_annotators=2, xss=True)


@pytest.fixture
def open_app():
    """open_app(token=None) -> a run AppTest, logged in through a `?token=` link when given."""

    def _open(token: str | None = None) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=30)
        if token is not None:
            at.query_params["token"] = token
        return at.run()

    return _open
