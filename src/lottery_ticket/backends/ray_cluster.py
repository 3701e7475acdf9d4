"""The Ray backend: one Ray task per unit of work, on a cluster or a private local Ray instance.

Why Ray: the paper's Section 4 and its successors are thousands of GPU-hours; Ray core tasks
give scheduling by resources (fractional GPUs), retries when a node dies and one driver for a
cluster, and we do not write our own scheduler.

- Connecting: to `address` (`--ray-address`, an existing cluster) or else to a private local
  instance started for this command and stopped after it (`ray.init(address="local")`).
  Never implicitly: a bare `ray.init()` would follow `RAY_ADDRESS` or a stale cluster file.
- Resources: each task asks for `cpus_per_run` CPUs and `gpus_per_run` GPUs (fractional: 0.25
  packs four LeNet runs on one GPU). With `--device cuda` a task trains on the GPU Ray assigned
  it (Ray sets CUDA_VISIBLE_DEVICES, so it is `cuda` there). Threads follow the CPU share.
- Paths and environment: experiment directories and --data-root are made absolute on the driver;
  `LTH_DATA`, `LTH_LOCK_LEASE_SECONDS` and `PYTHONPATH` reach the workers through the task's
  runtime environment. Results are written straight to the experiment directory, which every
  node must mount at the same path: each task first checks that it sees the experiment's
  recorded hyperparameters (a sweep line: the directory the sweep was started in). Only small
  status records come back through Ray's object store.
- Faults: a task whose node or worker dies is retried on another node (`MAX_RETRIES`); its run
  resumes from its last checkpoint once the dead holder's lock lease expires (lock.py; the
  takeover is logged and reported in the task's status record). Complete runs are never trained
  again (the runner loads them).
- Stopping: SIGINT/SIGTERM on the driver cancels the tasks (a running task gets SIGINT: it
  writes its checkpoint and stops), force-cancels what is still running after
  CANCEL_GRACE_SECONDS, and raises `procs.Stopped`: run the same command again to resume.
- Progress: the tasks send `procs.progress` events to an actor on the driver's node; the driver
  shows one view (runs done / running / queued / failed, iterations per second, ETA, runs per
  node) and prints each failure with its run, node and the error's last lines.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import ray

from lottery_ticket import lock, procs
from lottery_ticket.errors import LotteryError
from lottery_ticket.layout.files import is_experiment, read_experiment
from lottery_ticket.runner import ProgressView
from lottery_ticket.schedule import Schedule

ENVIRONMENT = ("LTH_DATA", lock.LEASE_ENV, "PYTHONPATH")  # passed to every task when set here
MAX_RETRIES = 3  # retries of a task whose node or worker process died
CANCEL_GRACE_SECONDS = 30.0  # after a stop: how long running tasks get to write their checkpoints
POLL_SECONDS = 0.5


# --------------------------------------------------------------------------- on the driver


class RayBackend:
    """`run_jobs(fn, jobs, threads, options, runs, what)` as Ray tasks (see the module docstring).
    After a call, `records` holds each job's status record, `events` every progress event (see
    `RayProgressView.events`) and `timings` the seconds spent connecting (`connect`: starting a
    private instance) and running (`run`)."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 max_retries: int = MAX_RETRIES):
        self.address, self.cpus, self.gpus, self.max_retries = address, cpus_per_run, gpus_per_run, max_retries
        self.records: list[dict] = []
        self.events: list[tuple] = []
        self.timings: dict[str, float] = {}

    def run_jobs(self, fn, jobs: list, threads: int, options, runs: int | None = None, what: str = "jobs",
                 after: list[tuple[int, ...]] | None = None) -> list:
        jobs = [_with_absolute_paths(job) for job in jobs]
        options = dataclasses.replace(options, bars=False, data_root=(
            os.path.abspath(options.data_root) if options.data_root else None))
        started = time.monotonic()
        owned = self._connect(options.quiet)
        self.timings = {"connect": time.monotonic() - started}
        try:
            return self._run(fn, jobs, threads, options, runs, what, after)
        finally:
            self.timings["run"] = time.monotonic() - started - self.timings["connect"]
            if owned:
                ray.shutdown()

    def _connect(self, quiet: bool) -> bool:
        """Connect to the cluster at `address`, or start a private local instance; True if this
        call connected (and so disconnects after). An already connected process is used as it is."""
        if ray.is_initialized():
            return False
        main = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        kwargs = dict(logging_level="WARNING", log_to_driver=not quiet)
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(address="local", include_dashboard=False, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise LotteryError(f"cannot connect to {where}: {str(e).strip().splitlines()[-1]}") from None
        for s, handler in handlers.items():  # (ray.init installs its own; ours stop at the next step)
            signal.signal(s, handler)
        return True

    def _run(self, fn, jobs: list, threads: int, options, runs: int | None, what: str,
             after: list[tuple[int, ...]] | None) -> list:
        resources = ray.cluster_resources()
        if not options.quiet:
            where = self.address or "a private local Ray instance"
            print(f"starting {len(jobs)} {what} on Ray ({where}: {len(ray.nodes())} nodes, "
                  f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs), "
                  f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}"
                  + (f" + {self.gpus:g} GPU" if self.gpus else "") + f" x {threads} threads per run"
                  + (f" ({runs} training runs)" if runs else ""), file=sys.stderr, flush=True)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        hub = ProgressHub.options(num_cpus=0, scheduling_strategy=here).remote()  # dies only with the driver's node
        env = {name: os.environ[name] for name in ENVIRONMENT if os.environ.get(name)}
        if env.get("LTH_DATA"):
            env["LTH_DATA"] = os.path.abspath(env["LTH_DATA"])
        task = ray.remote(run_unit).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries,
                                            retry_exceptions=False, runtime_env={"env_vars": env})
        labels = [job_label(job) for job in jobs]
        # A job is submitted once the jobs it waits for (`after`, see schedule.py) finished without
        # failing; Ray queues the submitted ones by resources, the longest chain submitted first.
        schedule = Schedule(after if after is not None else [()] * len(jobs))
        where: dict = {}  # task ref -> job index

        def submit_ready() -> None:
            while (i := schedule.next()) is not None:
                ref = task.remote(fn, jobs[i], options, threads, _expected_view(jobs[i]), hub, labels[i])
                where[ref] = i
                pending.append(ref)

        view = RayProgressView(runs, len(jobs), quiet=options.quiet)
        self.events = view.events
        self.records = [{} for _ in jobs]
        failures: list[tuple[str, str, str]] = []  # (label, node, error text)
        pending, stopped, force_at = [], None, None
        submit_ready()
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
                view.feed(_drain(hub))
                for ref in done:
                    i = where[ref]
                    self.records[i] = _status(ref, labels[i], view)
                    if self.records[i]["status"] == "failed":
                        failures.append((labels[i], self.records[i]["node"], self.records[i]["error"]))
                        view.failed += 1
                        view.write(f"failed: {labels[i]} on node {self.records[i]['node']}:\n  "
                                   + "\n  ".join(_last_lines(self.records[i]["error"])))
                    elif self.records[i]["status"] == "ok":
                        schedule.finished(i)
                if stopped is None and not procs.stop_requested():
                    submit_ready()
                view.jobs_done = sum(1 for r in self.records if r)
                view.render()
                if stopped is None and procs.stop_requested():
                    stopped = procs.stop_signal()
                    force_at = time.monotonic() + CANCEL_GRACE_SECONDS
                    for ref in pending:
                        ray.cancel(ref)  # a running task gets SIGINT: checkpoint, then stop
                elif force_at is not None and time.monotonic() > force_at:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    force_at = None
        except BaseException:  # e.g. a second signal: stop everything now
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            view.close()
            with contextlib.suppress(Exception):
                ray.kill(hub)
        if stopped is None and any(r["status"] == "stopped" for r in self.records):
            stopped = signal.SIGTERM  # a task was stopped by someone else
        if stopped is not None:
            raise procs.Stopped(stopped)
        for i in sorted(schedule.waiting):  # never started: a job it waits for failed
            self.records[i] = {"status": "failed", "node": "-", "result": None,
                               "error": "not started: a run it waits for failed"}
        if failures:
            label, node, error = failures[0]
            more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
            raise LotteryError(f"{label} failed on node {node}: {_last_lines(error)[-1]}{more}")
        return [r["result"] for r in self.records]


def _drain(hub) -> list[tuple]:
    """The hub's new events (none if it is gone: progress is a view, never a reason to fail)."""
    try:
        return ray.get(hub.drain.remote(), timeout=10)
    except (ray.exceptions.RayError, TimeoutError):
        return []


def _status(ref, label: str, view: RayProgressView) -> dict:
    """The status record of a finished task (a failure or cancellation made into one)."""
    try:
        return ray.get(ref)
    except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError) as e:
        if procs.stop_requested():
            return {"status": "stopped", "node": view.task_nodes.get(label, "?"), "result": None}
        return {"status": "failed", "node": view.task_nodes.get(label, "?"), "error": str(e), "result": None}
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        text = str(e) if not isinstance(cause, LotteryError) else f"{e}\n{cause}"  # (the user's one line last)
        return {"status": "failed", "node": view.task_nodes.get(label, "?"), "error": text, "result": None}


def _last_lines(text: str, count: int = 4) -> list[str]:
    return [line.rstrip() for line in str(text).strip().splitlines() if line.strip()][-count:] or ["?"]


def _experiment_field(job) -> str | None:
    """The job's experiment directory field (`exp_dir` of runner jobs, `experiment` of branch jobs)."""
    for name in ("exp_dir", "experiment"):
        if isinstance(getattr(job, name, None), str):
            return name
    return None


def _with_absolute_paths(job):
    name = _experiment_field(job)
    if name is None:
        return job
    return dataclasses.replace(job, **{name: os.path.abspath(getattr(job, name))})


def job_label(job) -> str:
    """A job in one short phrase, for the progress view and failure lines."""
    name = _experiment_field(job)
    if name is None:
        return f"line {getattr(job, 'line', job)!r}"
    parts = [getattr(job, name)]
    for field in ("branch", "control", "trial", "level", "run_index"):
        if hasattr(job, field):
            parts.append(f"{field} {getattr(job, field)}")
    return ", ".join(str(p) for p in parts)


def experiment_fingerprint(exp_dir: str) -> str | None:
    """The recorded hyperparameters and seed of the experiment in `exp_dir` (None: not there)."""
    if not is_experiment(exp_dir):
        return None
    hp, seed = read_experiment(exp_dir)
    return json.dumps({"hparams": hp.to_dict(), "seed": seed}, sort_keys=True)


def _expected_view(job) -> tuple[str, str | None]:
    """What a task must see before it starts: (experiment directory, its fingerprint), or for a
    job without one (a sweep line) the directory the driver runs in, (cwd, None)."""
    name = _experiment_field(job)
    if name is None:
        return os.getcwd(), None
    return getattr(job, name), experiment_fingerprint(getattr(job, name))


class RayProgressView(ProgressView):
    """`runner.ProgressView` fed from the hub's events, plus what a cluster adds: queued and
    failed runs, and which node runs what."""

    def __init__(self, runs: int | None, jobs: int, quiet: bool = False):
        self.quiet = quiet
        self.failed = 0
        self.run_nodes: dict[str, str] = {}  # run -> node it (last) started on
        self.task_nodes: dict[str, str] = {}  # job label -> node it (last) started on
        self.events: list[tuple] = []  # every event as (arrival time.time(), node, pid, kind, key, value)
        self._queue = _ListQueue()
        if not quiet:
            super().__init__(runs, jobs)
        else:
            self.runs, self.jobs, self.bar = runs, jobs, None
            self.running, self.done, self.jobs_done, self.trained, self.totals = {}, 0, 0, 0, []
            self.started = self.last_plain = time.monotonic()

    def feed(self, events: list[tuple]) -> None:
        now = time.time()
        self.events.extend((now, *event) for event in events)
        for node, pid, kind, key, value in events:
            if kind == "task":
                self.task_nodes[key] = node
                continue
            if kind == "start":
                self.run_nodes[key] = node
            self._queue.items.append((pid, kind, key, value))
        if self.quiet:
            self._queue.items.clear()
            return
        self.update(self._queue, self.jobs_done)

    def started_line(self, key: str, iteration: int, total: int) -> str:
        return f"{super().started_line(key, iteration, total)} on node {self.run_nodes.get(key, '?')}"

    def summary(self) -> str:
        text = super().summary()
        if self.runs:
            text += f", {max(0, self.runs - self.done - len(self.running))} queued"
        text += f", {self.failed} failed"
        nodes = collections.Counter(self.run_nodes.get(key, "?") for key in self.running)
        if nodes:
            text += "; running on " + ", ".join(f"{node}: {n}" for node, n in sorted(nodes.items()))
        return text

    def write(self, text: str) -> None:
        if not self.quiet:
            super().write(text)

    def render(self) -> None:
        if not self.quiet:
            super().render()

    def close(self) -> None:
        if not self.quiet:
            super().close()


class _ListQueue:
    """The `get_nowait` of a queue over a list (what `ProgressView.update` reads)."""

    def __init__(self):
        self.items: collections.deque = collections.deque()

    def get_nowait(self):
        if not self.items:
            raise queue.Empty
        return self.items.popleft()


@ray.remote
class ProgressHub:
    """Collects the tasks' progress events for the driver (an actor: tasks on any node reach it)."""

    def __init__(self):
        self.events: list[tuple] = []

    def put(self, event: tuple) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


# --------------------------------------------------------------------------- in a task


class _HubQueue:
    """procs' progress queue inside a task: each event goes to the hub, tagged with the node
    (fire and forget: never blocks the run)."""

    def __init__(self, hub, node: str):
        self.hub, self.node = hub, node

    def put_nowait(self, item: tuple) -> None:
        self.hub.put.remote((self.node, *item))


def node_name() -> str:
    """This task's node: its IP address and the start of its Ray node id (several nodes can
    share a machine)."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:6]}"


def check_sees(directory: str, fingerprint: str | None, node: str) -> None:
    """Fail, naming the node, if this node does not see what the driver saw: the experiment's
    recorded hyperparameters (results go to a filesystem every node mounts), or for a sweep line
    the directory the sweep runs in."""
    if fingerprint is None:
        if not os.path.isdir(directory):
            raise LotteryError(f"node {node} does not see the directory {directory} the command was started in; "
                               "run it from a directory on a filesystem every node mounts, at the same path")
        return
    try:
        seen = experiment_fingerprint(directory)
    except LotteryError as e:
        raise LotteryError(f"node {node}: {e}") from None
    if seen is None:
        raise LotteryError(f"node {node} does not see {Path(directory) / 'experiment.json'}: the experiment "
                           "directory must be on a filesystem every node mounts, at the same path")
    if seen != fingerprint:
        raise LotteryError(f"node {node} sees other hyperparameters in {directory} than the driver: "
                           "is it the same filesystem?")


def run_unit(fn, job, options, threads: int, expected: tuple[str, str | None], hub, label: str) -> dict:
    """One unit of work in a Ray task: check the node sees the experiment, then `fn(job,
    options)` with the task's threads and GPU; a small status record."""
    from lottery_ticket.trainer import threads as torch_threads

    started = time.monotonic()
    node = node_name()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    lock.set_host_name(f"{socket.gethostname()}/ray-{ray.get_runtime_context().get_node_id()[:12]}")
    del lock.TAKEOVERS[:]
    hub.put.remote((node, os.getpid(), "task", label, gpus))
    directory, fingerprint = expected
    check_sees(directory, fingerprint, node)
    if fingerprint is None:
        os.chdir(directory)  # (a sweep line's relative paths mean what they meant on the driver)
    if options.device.startswith("cuda"):
        if not gpus:
            raise LotteryError(f"--device {options.device} with --backend ray needs --gpus-per-run > 0")
        options = dataclasses.replace(options, device="cuda")  # the GPU(s) Ray assigned: CUDA_VISIBLE_DEVICES
    status, result = "ok", None
    procs.set_progress_queue(_HubQueue(hub, node))
    try:
        with procs.stop_on_signals(), torch_threads(threads):
            try:
                result = fn(job, options)
            except procs.Stopped:
                status = "stopped"
    finally:
        procs.set_progress_queue(None)
    return {"status": status, "result": result, "node": node, "gpus": gpus, "pid": os.getpid(),
            "takeovers": list(lock.TAKEOVERS), "seconds": time.monotonic() - started}
