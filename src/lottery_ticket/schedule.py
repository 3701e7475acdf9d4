"""What runs next: a list of jobs with dependencies, started longest remaining path first.

A job graph is a list of jobs and, for each job, the indices of the jobs it waits for (`after`).
Any backend that runs jobs (the local process pool of `runner.run_jobs`, or another) asks a
`Schedule` for the next job whenever it has a free worker and tells it which jobs finished.

The order is Hu's critical-path rule (T. C. Hu, "Parallel sequencing and assembly line
problems", Operations Research 9(6), 1961): among the jobs whose dependencies are done, start the
one with the longest chain of jobs still to come after it (ties: the earlier in the list). For
jobs of equal length in a forest -- a lottery's trials are chains of levels, each control run hangs
off its level -- this gives the shortest total time on any number of workers. So the trials' next
levels go first while they alone can keep every worker busy, and a control run starts as soon as
its level's masks exist and a worker would otherwise wait (at the latest when the levels run out).
Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence


def critical_path_ranks(after: Sequence[Sequence[int]]) -> list[int]:
    """For each job, the number of jobs on the longest chain starting at it (itself included);
    ValueError for a dependency that is not a job or a cycle."""
    count = len(after)
    dependents: list[list[int]] = [[] for _ in range(count)]
    for job, needs in enumerate(after):
        for need in needs:
            if not 0 <= need < count or need == job:
                raise ValueError(f"job {job} waits for {need}, which is not another job")
            dependents[need].append(job)
    rank = [0] * count
    state = [0] * count  # 0 new, 1 on the current path, 2 ranked
    for root in range(count):
        if state[root]:
            continue
        stack = [(root, iter(dependents[root]))]
        state[root] = 1
        while stack:  # depth first without recursion (chains can be thousands of levels long)
            job, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                rank[job] = 1 + max((rank[d] for d in dependents[job]), default=0)
                state[job] = 2
            elif state[child] == 1:
                raise ValueError(f"the job dependencies have a cycle through job {child}")
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(dependents[child])))
    return rank


class Schedule:
    """The jobs of a graph not started yet; `next()` the one to start now (None: none is ready),
    `finished(i)` when job i is done."""

    def __init__(self, after: Sequence[Sequence[int]]):
        self.after = [frozenset(needs) for needs in after]
        self.rank = critical_path_ranks(after)
        self.waiting = set(range(len(after)))
        self.done: set[int] = set()

    def next(self) -> int | None:
        ready = [job for job in self.waiting if self.after[job] <= self.done]
        if not ready:
            return None
        job = min(ready, key=lambda j: (-self.rank[j], j))
        self.waiting.remove(job)
        return job

    def finished(self, job: int) -> None:
        self.done.add(job)

    def __bool__(self) -> bool:
        """Whether jobs are still waiting to start."""
        return bool(self.waiting)
