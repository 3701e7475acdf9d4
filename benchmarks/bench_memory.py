"""Peak memory (resident set) of a small LeNet lottery experiment, run as a child process.

    .venv/bin/python benchmarks/bench_memory.py [--levels 2] [--iterations 1000] [-- extra lth flags]

Runs `lth lottery --levels L --iterations N --quiet` in a temporary directory and reports the
child's peak RSS (getrusage RUSAGE_CHILDREN ru_maxrss, i.e. VmHWM of the largest child).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("extra", nargs="*", help="more `lth lottery` flags (after --)")
    args = parser.parse_args()
    lth = Path(sys.executable).with_name("lth")
    root = data_root()
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(lth), "lottery", "--output-dir", str(Path(tmp) / "exp"), "--levels", str(args.levels),
                   "--iterations", str(args.iterations), "--quiet", "--no-download", *args.extra]
        if root is not None:
            command += ["--data-root", str(root)]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"{' '.join(command[1:])}")
    print(f"peak RSS {peak_kib / 1024:.0f} MiB ({peak_kib / 1024**2:.2f} GiB) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
