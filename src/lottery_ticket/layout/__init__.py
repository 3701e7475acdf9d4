"""The on-disk layout: `<experiment>/trial_<t>/level_<k>/<run name>/`, its one owner.

The ticket itself is the run `main`; control runs sit beside it as `<control>_<r>`. Every
directory and file name of an experiment, and every parse of one, is here; nothing else in the
package builds or parses a layout name (the files' contents are read and written by
`lottery_ticket.layout.files`). Pure names and directory walks only (the standard library: `lth --help`
imports it), so `store`, `lock` and `checkpoint` can import it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

TICKET = "main"  # the run name (and run kind) of the ticket itself
CONTROLS = ("reinit", "reuse", "reuse_sign", "random")  # the control runs, as named on disk
RUN_KINDS = (TICKET, *CONTROLS)  # known run kinds, in display order (ticket first)

EXPERIMENT_FILE = "experiment.json"
RUN_FILE = "run.json"
METRICS = "metrics.csv"
MASKS = "masks.safetensors"
INITIAL = "initial.safetensors"
FINAL = "final.safetensors"
REWIND = "rewind.safetensors"
COMPLETE = "COMPLETE"
# A run's networks by the name `lth activations --weights` and `lth export --weights` give them.
NETWORKS = {"initial": INITIAL, "rewind": REWIND, "final": FINAL}
CHECKPOINT = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"  # the one file of a checkpoint directory (see `checkpoint`)
TENSORBOARD = "tensorboard"
BATCHED_CHECKPOINTS = "batched_checkpoints"
LOCK = ".lock"
# The files of a run whose SHA-256 digests COMPLETE records (files.result_digests).
RESULT_FILES = (RUN_FILE, METRICS, MASKS, INITIAL, FINAL, REWIND)
# Everything a run directory of ours may hold: `lth train` refuses a directory with anything else.
RUN_ENTRIES = (*RESULT_FILES, COMPLETE, CHECKPOINT, TENSORBOARD, LOCK)

# What `lth report` writes (default: into the experiment directory).
RESULTS_CSV = "results.csv"
AGGREGATE_CSV = "aggregate.csv"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
PLOTS = "plots"
PAIRED_CSV = "paired.csv"  # ticket vs control, paired by trial
LAYERS_CSV = "layers.csv"  # weights remaining per layer
OVERLAP_CSV = "overlap.csv"  # Jaccard overlap of masks
EFFICIENCY_CSV = "efficiency.csv"  # parameters, FLOPs, export size per level

# What `lth activations` writes (default: into <experiment>/activations/).
ACTIVATIONS = "activations"
ACTIVATIONS_CSV = "activations.csv"

# What `lth compare-at-init` writes into its directory: its own lottery experiment (unless
# --imp-experiment names one), the pruning-at-initialization runs, and the comparison.
COMPARE_IMP = "imp"
AT_INIT = "at_init"
COMPARE_CSV = "compare.csv"
COMPARE_MD = "compare.md"
COMPARE_PLOT = "compare.png"

_TRIAL = "trial_"
_LEVEL = "level_"
_TRIAL_RE = re.compile(rf"{_TRIAL}(\d+)")
_LEVEL_RE = re.compile(rf"{_LEVEL}(\d+)")
_CONTROL_RUN_RE = re.compile(rf"({'|'.join(sorted(CONTROLS, key=len, reverse=True))})_(\d+)")
_ANY_RUN_RE = re.compile(r"(?P<control>[A-Za-z][A-Za-z0-9_]*?)_(?P<index>\d+)")


def trial_dir(experiment: str | Path, trial: int) -> Path:
    return Path(experiment) / f"{_TRIAL}{trial}"


def level_dir(experiment: str | Path, trial: int, level: int) -> Path:
    return trial_dir(experiment, trial) / f"{_LEVEL}{level}"


def run_name(control: str = TICKET, run_index: int = 0) -> str:
    return TICKET if control == TICKET else f"{control}_{run_index}"


def run_dir(experiment: str | Path, trial: int, level: int, control: str = TICKET, run_index: int = 0) -> Path:
    return level_dir(experiment, trial, level) / run_name(control, run_index)


def activations_file(out_dir: str | Path, trial: int, level: int, run: str, weights: str, split: str) -> Path:
    """The activations of one network on one split (`lth activations`), in its output directory:
    `trial_<t>_level_<k>_<run>_<weights>_<split>.safetensors`."""
    return Path(out_dir) / f"{_TRIAL}{trial}_{_LEVEL}{level}_{run}_{weights}_{split}.safetensors"


def at_init_run_dir(compare: str | Path, method: str, density: float, trial: int) -> Path:
    """`<compare>/at_init/<method>/density_<d>/trial_<t>/`: one pruning-at-initialization run
    (`method`: a strategy, or `<strategy>_<check>` for a sanity check of its masks)."""
    return Path(compare) / AT_INIT / method / f"density_{density:g}" / f"{_TRIAL}{trial}"


def parse_run_name(name: str) -> tuple[str, int] | None:
    """(TICKET, 0) or (control, r) for a run directory name of ours; None for anything else."""
    if name == TICKET:
        return TICKET, 0
    m = _CONTROL_RUN_RE.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


def run_kind(name: str) -> tuple[str, int]:
    """(kind, index) of any run directory name, known or not: ``"main"`` -> ``("main", 0)``;
    ``"reuse_sign_3"`` -> ``("reuse_sign", 3)``; a name without a numeric suffix is its own kind
    with index 0 (the reports show runs of kinds they do not know, after the known ones)."""
    match = _ANY_RUN_RE.fullmatch(name)
    if match:
        return match.group("control"), int(match.group("index"))
    return name, 0


def kind_sort_key(kind: str) -> tuple[int, str]:
    """Sort key putting the ticket first, then the known controls, then anything else."""
    if kind in RUN_KINDS:
        return RUN_KINDS.index(kind), ""
    return len(RUN_KINDS), kind


def temp_name_pattern(names) -> re.Pattern:
    """The temporary names `store.write_bytes_atomic` gives files named `names` while writing
    them: `.<name>.<random>.tmp`."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"\.(?:{alternatives})\.[A-Za-z0-9_]+\.tmp")


def is_complete(run: str | Path) -> bool:
    return (Path(run) / COMPLETE).is_file()


def foreign_entries(run: str | Path) -> list[str]:
    """The names in directory `run` that a run of ours does not write (sorted): none for an empty
    directory or one holding a run, or its leftovers (lock, temporary files of atomic writes)."""
    ours = temp_name_pattern((*RESULT_FILES, COMPLETE))
    return sorted(p.name for p in Path(run).iterdir() if p.name not in RUN_ENTRIES and not ours.fullmatch(p.name))


def _numbers(directory: Path, pattern: re.Pattern, dirs_only: bool) -> list[tuple[int, Path]]:
    """(number, path) of the entries of `directory` named by `pattern`, sorted by number."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and (not dirs_only or entry.is_dir()):
            found.append((int(m.group(1)), entry))
    return sorted(found, key=lambda item: item[0])


def trials_present(experiment: str | Path) -> list[int]:
    """The trial numbers with a `trial_<t>` entry in `experiment`, sorted."""
    return [n for n, _ in _numbers(Path(experiment), _TRIAL_RE, dirs_only=False)]


def levels_present(experiment: str | Path, trial: int) -> list[int]:
    """The level numbers with a `level_<k>` entry in the trial's directory, sorted."""
    return [n for n, _ in _numbers(trial_dir(experiment, trial), _LEVEL_RE, dirs_only=False)]


@dataclass(frozen=True)
class RunDir:
    """One run directory found in an experiment, with what its path says about it."""

    path: Path
    trial: int
    level: int
    run: str
    control: str
    run_index: int


def find_runs(experiment: str | Path) -> list[RunDir]:
    """All run directories under ``trial_<t>/level_<k>/``, sorted by (trial, level, kind, index).

    Anything that does not follow the layout (other files, stray folders such as a report's
    ``plots/``, hidden entries) is ignored; works on a running experiment.
    """
    runs = []
    for trial, trial_path in _numbers(Path(experiment), _TRIAL_RE, dirs_only=True):
        for level, level_path in _numbers(trial_path, _LEVEL_RE, dirs_only=True):
            try:
                entries = sorted(level_path.iterdir())
            except OSError:
                continue
            for run in entries:
                if not run.is_dir() or run.name.startswith("."):
                    continue
                control, index = run_kind(run.name)
                runs.append(RunDir(run, trial, level, run.name, control, index))
    runs.sort(key=lambda r: (r.trial, r.level, kind_sort_key(r.control), r.run_index, r.run))
    return runs


# --------------------------------------------------------------------------- branches' own files
# Inside a branch's run directory (`run_dir(exp, t, k, <branch kind>, r)`) the instability and
# retraining branches keep nested training runs (each a run directory of the usual layout) and
# their results files.

INSTABILITY_TABLE = "instability.csv"  # one row per (rewind point, pair, split): the barriers
INSTABILITY_RESULT = "instability.json"  # one pair's barrier and whole interpolation curve
INSTABILITY_CURVE = "instability_curve.csv"  # the same curve as a table: alpha, split, loss, error
RETRAINING_TABLE = "retraining.csv"  # one row per (method, t, cycle): sparsity and accuracy


def rewind_point_dir(run: str | Path, k: int) -> Path:
    """Everything of one rewind point k of an instability run."""
    return Path(run) / f"k_{k}"


def replay_dir(parent: str | Path, iteration: int) -> Path:
    """The ticket's training replayed to `iteration` (its checkpoint holds weights and optimizer
    state there): under an instability rewind point or a retraining run."""
    return Path(parent) / f"replay_{iteration}"


def pair_dir(run: str | Path, k: int, pair: int) -> Path:
    """One pair of copies trained from rewind point k; holds INSTABILITY_RESULT and the copies."""
    return rewind_point_dir(run, k) / f"pair_{pair}"


def copy_dir(pair: str | Path, copy: str) -> Path:
    """One copy (`a` or `b`) of a pair: a run directory (final.safetensors, masks.safetensors)."""
    return Path(pair) / copy


def retrain_dir(run: str | Path, method: str, iterations: int, cycle: int, one_shot_steps: int | None = None) -> Path:
    """One retraining cycle (a run directory) of `method` with t = `iterations`: iterative pruning
    (cycle c after c pruning steps), or one-shot pruning of `one_shot_steps` steps at once."""
    schedule = "iterative" if one_shot_steps is None else f"one_shot_{one_shot_steps}"
    return Path(run) / schedule / f"{method}_t{iterations}" / f"cycle_{cycle}"


def batched_checkpoint_dir(experiment: str | Path, identity: dict) -> Path:
    """Where `--batched` keeps the checkpoint of one batched computation (several runs at once),
    named by a digest of what it trains (run directories and hyperparameters)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(experiment) / BATCHED_CHECKPOINTS / digest
