"""Background jobs for admin pages (candidate generation): a thread per job, progress polled by the UI.

One `JobRunner` per server process (`st.cache_resource`); jobs outlive the session that started them,
so an admin can leave the page, come back and still see the progress. One job of a kind at a time.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf.errors import WorkbenchError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass
class Job:
    id: int
    kind: str
    description: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    done: int = 0
    total: int = 0
    status: str = "running"  # running | done | failed
    message: str = ""
    result: Any = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class JobRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.jobs: list[Job] = []

    def running(self, kind: str) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.kind == kind and j.status == "running"), None)

    def latest(self, kind: str) -> Job | None:
        with self._lock:
            return next((j for j in reversed(self.jobs) if j.kind == kind), None)

    def start(self, kind: str, description: str, work: Callable[[ProgressFn], Any]) -> Job:
        """Run `work(progress)` in a daemon thread; refuses a second running job of the same kind."""
        with self._lock:
            if any(j.kind == kind and j.status == "running" for j in self.jobs):
                raise WorkbenchError(f"a {kind} job is already running; wait for it to finish")
            job = Job(next(self._ids), kind, description)
            self.jobs.append(job)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        def run() -> None:
            try:
                job.result = work(progress)
                job.status = "done"
            except WorkbenchError as e:
                job.status, job.message = "failed", str(e)
            except Exception as e:  # a bug: keep the traceback in the server log, a line in the UI
                log.exception("%s job %d failed", kind, job.id)
                job.status, job.message = "failed", f"{type(e).__name__}: {e}"
            finally:
                job.finished = time.time()

        threading.Thread(target=run, name=f"{kind}-job-{job.id}", daemon=True).start()
        return job
