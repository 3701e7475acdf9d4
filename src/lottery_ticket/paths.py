"""The on-disk layout: `<experiment>/trial_<t>/level_<k>/<run name>/`.

The ticket itself is the run `main`; control runs sit beside it as `<control>_<r>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

CONTROLS = ("reinit", "reuse", "reuse_sign", "random")

EXPERIMENT_FILE = "experiment.json"
RUN_FILE = "run.json"
METRICS = "metrics.csv"
MASKS = "masks.safetensors"
INITIAL = "initial.safetensors"
FINAL = "final.safetensors"
REWIND = "rewind.safetensors"
COMPLETE = "COMPLETE"
CHECKPOINT = "checkpoint"
TENSORBOARD = "tensorboard"
BATCHED_CHECKPOINTS = "batched_checkpoints"
LOCK = ".lock"
# The files of a run whose SHA-256 digests COMPLETE records (store.result_digests).
RESULT_FILES = (RUN_FILE, METRICS, MASKS, INITIAL, FINAL, REWIND)
# Everything a run directory of ours may hold: `lth train` refuses a directory with anything else.
RUN_ENTRIES = (*RESULT_FILES, COMPLETE, CHECKPOINT, TENSORBOARD, LOCK)


def trial_dir(experiment: str | Path, trial: int) -> Path:
    return Path(experiment) / f"trial_{trial}"


def level_dir(experiment: str | Path, trial: int, level: int) -> Path:
    return trial_dir(experiment, trial) / f"level_{level}"


def run_name(control: str = "main", run_index: int = 0) -> str:
    return "main" if control == "main" else f"{control}_{run_index}"


def run_dir(experiment: str | Path, trial: int, level: int, control: str = "main", run_index: int = 0) -> Path:
    return level_dir(experiment, trial, level) / run_name(control, run_index)


def parse_run_name(name: str) -> tuple[str, int] | None:
    """('main', 0) or (control, r) for a run directory name; None for anything else."""
    if name == "main":
        return "main", 0
    m = re.fullmatch(r"(reinit|reuse_sign|reuse|random)_(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else None


def is_complete(run: str | Path) -> bool:
    return (Path(run) / COMPLETE).is_file()


def temp_name_pattern(names) -> re.Pattern:
    """The temporary names `store.write_bytes_atomic` gives files named `names` while writing
    them: `.<name>.<random>.tmp`."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"\.(?:{alternatives})\.[A-Za-z0-9_]+\.tmp")


def foreign_entries(run: str | Path) -> list[str]:
    """The names in directory `run` that a run of ours does not write (sorted): none for an empty
    directory or one holding a run, or its leftovers (lock, temporary files of atomic writes)."""
    ours = temp_name_pattern((*RESULT_FILES, COMPLETE))
    return sorted(p.name for p in Path(run).iterdir() if p.name not in RUN_ENTRIES and not ours.fullmatch(p.name))


def levels_present(experiment: str | Path, trial: int) -> list[int]:
    found = []
    for p in trial_dir(experiment, trial).glob("level_*"):
        m = re.fullmatch(r"level_(\d+)", p.name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def batched_checkpoint_dir(experiment: str | Path, identity: dict) -> Path:
    """Where `--batched` keeps the checkpoint of one batched computation (several runs at once),
    named by a digest of what it trains (run directories and hyperparameters)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(experiment) / BATCHED_CHECKPOINTS / digest
