"""Where a study's evaluations run: in this process (`Local`, the default), or on a cluster's
workers (engine.cluster), through one interface.

    results = gather(Local(explorer), sweep.point_task, {key: job, ...})     # key -> result

A study names its evaluations as jobs, each under a key that says what it is (a recipe as JSON,
a unit, a candidate's name), and a task: a module-level function `task(worker, job) -> result`
that a `Worker` runs (its explorer, a workspace, and `memo`, what the task keeps between jobs on
that worker, such as a reference's outputs). A runner runs the tasks and hands the results back as
they arrive, each with the name of the worker that gave it; `gather` skips the keys already done
(a results file read back with --resume) and tells `on_result` of each new one as it arrives, so
that the caller writes it down before the next.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass
class Worker:
    """What a task runs with: one loaded model (`explorer`), a workspace on it, made on first
    use, and `memo` for what a task keeps between jobs on this worker."""

    explorer: object
    name: str = "this process"
    memo: dict = field(default_factory=dict)
    _work: object = None

    @property
    def work(self):
        if self._work is None:
            self._work = self.explorer.workspace()
        return self._work


class Local:
    """The jobs one after another in this process, on an explorer already loaded (or on a
    workspace of it, so that a study runs where its caller's applied recipe lives)."""

    def __init__(self, explorer, work=None):
        self.worker = Worker(explorer, f"this process ({os.getpid()})", _work=work)

    @property
    def workers(self) -> list[str]:
        return [self.worker.name]

    def run(self, task: Callable, jobs: dict) -> Iterator[tuple[str, object, str]]:
        """(key, result, worker) for each job, in the order given."""
        for key, job in jobs.items():
            yield key, task(self.worker, job), self.worker.name

    def close(self) -> None:
        pass


def gather(runner, task: Callable, jobs: dict, done: dict | None = None, on_result=None,
           progress=None, labels: dict | None = None) -> dict:
    """key -> result for every job: those in `done` as they are, the others run by `runner`.
    `on_result(key, result, worker)` is called as each new result arrives, `progress(k, n, text)`
    after it (k counting the done ones too; the text names the worker and the job's label, from
    `labels`, else its key). The result is in the order of `jobs`."""
    done = dict(done or {})
    todo = {k: j for k, j in jobs.items() if k not in done}
    n, k = len(jobs), len(jobs) - len(todo)
    for key, result, worker in runner.run(task, todo) if todo else ():
        done[key] = result
        k += 1
        if on_result:
            on_result(key, result, worker)
        if progress:
            progress(k, n, f"{worker}: {(labels or {}).get(key, key)}")
    return {key: done[key] for key in jobs}
