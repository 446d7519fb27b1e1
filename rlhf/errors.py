"""The one exception family the library raises for problems a user can fix.

The CLI turns a `WorkbenchError` into one message and exit code 2; the UI into `st.error`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A problem with the user's input, files or environment, with a message saying how to fix it."""


class ValidationError(WorkbenchError):
    """Several problems found at once (litgpt style: collect all, raise once)."""

    def __init__(self, what: str, problems: list[str], limit: int = 20):
        self.what = what
        self.problems = list(problems)
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        lines = [f"{what}: {len(self.problems)} problem(s), nothing was changed"]
        lines += [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class TrainingDiverged(WorkbenchError):
    """A training run stopped on a NaN/inf or exploding loss. Its run folder holds the last good
    checkpoint's model and a summary.json whose `stop` says why; the message says what to do."""
