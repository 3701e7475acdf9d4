"""Where an experiment's units of work run: `local` (this machine's process pool, the default)
or `ray` (the tasks of a Ray cluster; `pip install 'lottery_ticket[ray]'`).

A unit is a frozen job dataclass run by a runner function, `fn(job, options)`: a lottery level
or control run (`runner.run_job`, a job graph from `runner.lottery_jobs`), a control or branch
run (`branches.run_branch`), a sweep line. A backend runs a list of them, each once the jobs it
waits for (`after[i]`, indices; see `schedule.py`) are done, and returns their results in order:

    backend.run_jobs(fn, jobs, threads, options, runs=None, what="jobs", after=None) -> list

`runner.run_jobs(..., backend=None)` is the local pool; given a backend it hands the jobs to it.
Seeds come from the job alone, so results do not depend on the backend or on which node ran what.
"""

from __future__ import annotations

from typing import Protocol

from lottery_ticket.errors import LotteryError

BACKENDS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'lottery_ticket[ray]'"


class Backend(Protocol):
    def run_jobs(self, fn, jobs: list, threads: int, options, runs: int | None = None,
                 what: str = "jobs", after: list[tuple[int, ...]] | None = None) -> list: ...


def make_backend(name: str, address: str | None = None, cpus_per_run: float = 1.0,
                 gpus_per_run: float = 0.0) -> Backend | None:
    """The backend called `name`: None for `local` (runner.run_jobs' own pool), else a
    `RayBackend`; asking for Ray without Ray installed is a one-line error saying what to install."""
    if name == "local":
        return None
    if name != "ray":
        raise LotteryError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise LotteryError(f"--backend ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    from lottery_ticket.backends.ray_cluster import RayBackend

    return RayBackend(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
