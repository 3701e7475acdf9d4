"""Peak memory of a LeNet lottery experiment: the whole process tree, sampled while it runs.

    .venv/bin/python benchmarks/bench_memory.py [--levels 3] [--trials 2] [--iterations 1000] [--seconds S]
        [-- extra lth flags]

Runs `lth lottery --levels L --trials T --iterations N --quiet` in a temporary directory. With
T >= 2 the trials train in worker processes (one per core), so the experiment's memory is the
sum over the process tree: it is sampled every 20 ms from /proc (`lth` and every
descendant; Pss, which splits shared pages among the processes that share them, and Rss), and
its peak is reported beside the largest single process's own peak (getrusage RUSAGE_CHILDREN
ru_maxrss, i.e. VmHWM). `--seconds S` stops the experiment (SIGTERM: it checkpoints and exits)
after S seconds, for models whose runs are long (e.g. `--seconds 300 -- --preset conv2`: data
loading, the workers, the first evaluation and training steps are all under way by then).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks_common import data_root


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def memory_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process: Pss divides each shared page (the torch libraries every process
    maps) among the processes sharing it, so Pss sums to the physical memory actually used."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(maxsplit=1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values["Rss:"], values["Pss:"]


def tree_memory_kib(root: int) -> tuple[int, int]:
    """Summed (Rss, Pss) of `root` and all its descendants."""
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        r, p = memory_kib(pid)
        rss, pss = rss + r, pss + p
        stack.extend(children(pid))
    return rss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=None, help="stop the experiment after this many seconds")
    parser.add_argument("extra", nargs="*", help="more `lth lottery` flags (after --)")
    args = parser.parse_args()
    lth = Path(sys.executable).with_name("lth")
    root = data_root()
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(lth), "lottery", "--output-dir", str(Path(tmp) / "exp"), "--levels", str(args.levels),
                   "--trials", str(args.trials), "--iterations", str(args.iterations), "--quiet", "--no-download",
                   *args.extra]
        if root is not None:
            command += ["--data-root", str(root)]
        started = time.perf_counter()
        process = subprocess.Popen(command)
        peak_rss = peak_pss = 0
        stopped = False
        while process.poll() is None:
            rss, pss = tree_memory_kib(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.02)
            if args.seconds is not None and not stopped and time.perf_counter() - started > args.seconds:
                process.terminate()
                stopped = True
        seconds = time.perf_counter() - started
        if stopped:
            print(f"(stopped after {args.seconds:.0f} s, as asked)")
        elif process.returncode != 0:
            raise SystemExit(f"lth lottery failed with exit code {process.returncode}")
    peak_process = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(" ".join(command[1:]))
    print(f"peak memory of the whole experiment (all processes, sampled): {peak_pss / 1024:.0f} MiB "
          f"= {peak_pss * 1024 / 1e9:.2f} GB physical (sum of Pss); {peak_rss / 1024:.0f} MiB summed Rss, "
          f"which counts the shared torch libraries once per process")
    print(f"largest single process: {peak_process / 1024:.0f} MiB peak Rss; {seconds:.1f} s")


if __name__ == "__main__":
    main()
