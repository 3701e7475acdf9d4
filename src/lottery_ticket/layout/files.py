"""The files of a run and of an experiment: every read and write of experiment.json, run.json,
metrics.csv, the networks, COMPLETE (with its result digests) and TensorBoard scalars.

A run's files appear in two steps: `start_run_files` at its start (run.json, masks, initial
weights), `finish_run_files` at its end (metrics, final weights, then COMPLETE last, recording the
SHA-256 of every result file, which `verify_run` checks whenever they are read back). Names come
from `lottery_ticket.layout`; atomic writes from `lottery_ticket.store`.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import torch

import lottery_ticket
from lottery_ticket import layout
from lottery_ticket.callbacks import write_rows
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import INT_MAX, Hparams, diff
from lottery_ticket.layout.metrics import (  # noqa: F401  (re-exported)
    METRIC_COLUMNS,
    metrics_csv,
    read_metrics,
    read_metrics_lines,
)
from lottery_ticket.lock import RunLock
from lottery_ticket.masking import Masks
from lottery_ticket.store import (
    load_tensors,
    read_json,
    save_tensors,
    sha256_file,
    write_json,
    write_text_atomic,
)


@dataclass
class TrainResult:
    initial: dict[str, torch.Tensor]  # state dict before training (masks applied)
    final: dict[str, torch.Tensor]  # state dict after training
    # the state dict later levels reset to: `initial`, or the one at --rewind-iteration (late
    # rewinding; None only if training stopped before reaching it)
    rewind: dict[str, torch.Tensor] | None
    metrics: list[tuple[int, str, float, float]] = field(default_factory=list)
    resumed_from: int = 0  # iteration the run continued from (0 if it started fresh)
    callback_rows: dict[str, list[dict]] = field(default_factory=dict)  # rows of each evaluation callback


def versions() -> dict[str, str]:
    """What ran a run or an experiment (recorded in run.json and experiment.json)."""
    return {
        "lottery_ticket": lottery_ticket.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- experiment.json


def read_experiment(exp_dir: str | Path) -> tuple[Hparams, int]:
    """The hyperparameters and seed in exp_dir/experiment.json, checked; anything else there
    (a hand edit, another program's file) is one error naming the file."""
    path = Path(exp_dir) / layout.EXPERIMENT_FILE
    record = read_json(path)
    try:
        if not isinstance(record, dict) or "hparams" not in record:
            raise LotteryError("it has no hparams")
        seed = record.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT_MAX:
            raise LotteryError(f"seed must be an integer in [0, {INT_MAX}], got {seed!r}")
        return Hparams.from_dict(record["hparams"]), seed
    except LotteryError as e:
        raise LotteryError(f"{path} is not a valid lottery_ticket experiment record ({e}); "
                           "restore it, or use another directory") from None


def check_lottery_record(exp_dir: str | Path) -> None:
    """Refuse a directory that `lth lottery` did not make (no experiment.json of kind "lottery"),
    leniently: the hyperparameters are not parsed (a report reads experiments of older versions)."""
    record_file = Path(exp_dir) / layout.EXPERIMENT_FILE
    if not record_file.is_file():
        raise LotteryError(f"{exp_dir} is not a lottery_ticket experiment (no {layout.EXPERIMENT_FILE}); "
                           "give a directory written by `lth lottery`")
    record = read_json(record_file)
    if not isinstance(record, dict) or record.get("kind") != "lottery" or not isinstance(record.get("hparams"), dict):
        raise LotteryError(f"{record_file} is not a lottery_ticket experiment record")


def is_experiment(exp_dir: str | Path) -> bool:
    return (Path(exp_dir) / layout.EXPERIMENT_FILE).exists()


def write_experiment(exp_dir: str | Path, hp: Hparams, seed: int) -> None:
    write_json(Path(exp_dir) / layout.EXPERIMENT_FILE,
               {"kind": "lottery", "hparams": hp.to_dict(), "seed": seed, "versions": versions()})


# --------------------------------------------------------------------------- run.json, COMPLETE


def write_metrics(out: str | Path, rows: list[tuple[int, str, float, float]]) -> None:
    """A run's metrics.csv, atomically."""
    write_text_atomic(Path(out) / layout.METRICS, metrics_csv(rows))


def run_record(hp: Hparams, run_info: dict) -> dict:
    """The contents of run.json: what a run is (hyperparameters, identity) and what ran it."""
    return {"hparams": hp.to_dict(), "run": run_info, "versions": versions()}


def check_same_run(out: Path, record: dict) -> None:
    """Refuse to touch a run directory that holds a run with other settings."""
    out = Path(out)
    run_file = out / layout.RUN_FILE
    verify_run(out, [layout.RUN_FILE])  # (a complete run's) before trusting what it says
    if not run_file.exists():
        return
    old = read_json(run_file)
    try:
        if not isinstance(old, dict) or not isinstance(old.get("run"), dict):
            raise LotteryError("it has no run identity")
        old_hp = Hparams.from_dict(old.get("hparams"))
    except LotteryError as e:
        raise LotteryError(f"{run_file} is not a valid lottery_ticket run record ({e}); "
                           f"restore it, or delete {out} to train the run again") from None
    # compared as read (older records upgraded to what they ran, see hparams._upgrade)
    if old_hp.to_dict() != record["hparams"] or old["run"] != record["run"]:
        changes = diff(old_hp, Hparams.from_dict(record["hparams"]))
        changes += [f"run.{k}: {old.get('run', {}).get(k)!r} -> {v!r}" for k, v in record["run"].items()
                    if old.get("run", {}).get(k) != v]
        raise LotteryError(
            f"{out} holds a run with different settings ({'; '.join(changes) or 'run identity differs'}); "
            "use another --output-dir or delete it"
        )


def read_run_record(run: str | Path) -> dict:
    """A run's run.json as written (checked against its digest if the run is complete)."""
    verify_run(run, [layout.RUN_FILE])
    return read_json(Path(run) / layout.RUN_FILE)


def result_digests(run: str | Path) -> dict[str, str]:
    """The SHA-256 of each result file the run directory holds (layout.RESULT_FILES), which
    COMPLETE records so that later reads can tell a damaged file from a good one."""
    run = Path(run)
    return {name: sha256_file(run / name) for name in layout.RESULT_FILES if (run / name).is_file()}


def verify_run(run: str | Path, names=None) -> None:
    """Check a complete run's files (`names`, default every one recorded) against the SHA-256
    digests its COMPLETE marker recorded; a missing or damaged file is a LotteryError naming it.

    Runs that are not complete, and runs completed before digests were recorded (a COMPLETE
    without "sha256"), are not checked: they stay readable as they are.
    """
    run = Path(run)
    marker = run / layout.COMPLETE
    if not marker.is_file():
        return
    record = read_json(marker)
    digests = record.get("sha256") if isinstance(record, dict) else None
    if digests is None:
        return
    advice = f"delete {run} and run the `lth` command that wrote it again to retrain it"
    if not isinstance(digests, dict) or not set(digests) <= set(layout.RESULT_FILES):
        raise LotteryError(f"damaged completion record {marker}; {advice}")
    for name in layout.RESULT_FILES if names is None else names:
        if name not in digests:
            continue
        path = run / name
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise LotteryError(f"{path} is missing from a complete run; {advice}") from None
        except OSError as e:
            raise LotteryError(f"cannot read {path}: {e.strerror}") from None
        if actual != digests[name]:
            raise LotteryError(f"{path} is damaged (its SHA-256 differs from the one recorded in {marker} "
                               f"when the run completed); {advice}")


def read_run_tensors(run: str | Path, name: str, verify: bool = True) -> dict[str, torch.Tensor]:
    """One network file of a run (e.g. layout.MASKS), checked against its digest first (unless
    `verify` is False: a run this process has just written)."""
    if verify:
        verify_run(run, [name])
    return load_tensors(Path(run) / name)


def read_network(exp_dir: str | Path, trial: int, level: int, run: str, weights: str) -> tuple[Path, dict, dict]:
    """(run directory, state dict, masks) of one saved network of an experiment: `weights` one of
    layout.NETWORKS ("initial", "rewind", "final") of run `run` (a run name: the ticket or `<control>_<r>`) at
    (trial, level); each file checked against its digest. What is missing is one LotteryError."""
    kind, index = layout.run_kind(run)
    path = layout.run_dir(exp_dir, trial, level, kind, index)
    if not path.is_dir():
        raise LotteryError(f"no run {path} (give --trial, --level and --run of an existing run)")
    name = layout.NETWORKS.get(weights)
    if name is None:
        raise LotteryError(f"--weights must be one of {', '.join(layout.NETWORKS)}, got {weights!r}")
    if not (path / name).is_file():
        why = " (only runs with --rewind-iteration have one)" if weights == "rewind" else ""
        raise LotteryError(f"{path} has no {name}{why}")
    return path, read_run_tensors(path, name), read_run_tensors(path, layout.MASKS)


def load_result(out: str | Path) -> TrainResult:
    """The result of a complete run, read back from its files, each checked against the digest
    COMPLETE recorded (runs completed before digests were recorded are read unchecked)."""
    out = Path(out)
    verify_run(out)
    rewind_file = out / layout.REWIND
    initial = load_tensors(out / layout.INITIAL)
    return TrainResult(
        initial=initial,
        final=load_tensors(out / layout.FINAL),
        rewind=load_tensors(rewind_file) if rewind_file.exists() else initial,
        metrics=read_metrics(out / layout.METRICS),
    )


def start_run_files(out: Path, record: dict, masks: Masks, initial: dict) -> None:
    """The files a run has from its start: settings, masks, initial weights."""
    write_json(out / layout.RUN_FILE, record)
    save_tensors(out / layout.MASKS, masks)
    save_tensors(out / layout.INITIAL, initial)


def save_rewind(out: Path, rewind: dict) -> None:
    """The weights later levels reset to under late rewinding (written when reached)."""
    save_tensors(Path(out) / layout.REWIND, rewind)


def finish_run_files(out: Path, rows: list, final: dict, total: int,
                     callback_rows: dict[str, list[dict]] | None = None) -> None:
    """The files a run gets at its end (metrics, final weights, the evaluation callbacks' files);
    COMPLETE, with the SHA-256 of every result file (checked whenever they are read back, see
    verify_run), is written last, then the checkpoint goes."""
    write_metrics(out, rows)
    if callback_rows:
        write_rows(out, callback_rows)
    save_tensors(out / layout.FINAL, final)
    write_json(out / layout.COMPLETE, {"iterations": total, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "sha256": result_digests(out)})
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(out / layout.CHECKPOINT)


def start_branch_run(out: Path, record: dict, masks: Masks) -> None:
    """A measuring branch's run directory (instability, retraining) at its start: run.json and
    the ticket's masks (so the results table shows its Pm); its own files live beside them."""
    write_json(Path(out) / layout.RUN_FILE, record)
    save_tensors(Path(out) / layout.MASKS, masks)


def finish_branch_run(out: Path, iterations: int) -> None:
    """COMPLETE for a measuring branch's run directory, with the digests of its result files."""
    write_json(Path(out) / layout.COMPLETE, {"iterations": iterations, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "sha256": result_digests(out)})


def write_run(out: str | Path, record: dict, masks: Masks, result: TrainResult, total: int) -> None:
    """All files of a run trained elsewhere (e.g. batched): the same files `train` writes."""
    out = Path(out)
    check_same_run(out, record)
    with RunLock(out):
        if layout.is_complete(out):  # another process finished it meanwhile
            return
        start_run_files(out, record, masks, result.initial)
        if result.rewind is not None and record["hparams"]["training"]["rewind_iteration"] > 0:
            save_rewind(out, result.rewind)
        board = TensorBoard(out, purge_step=None)
        board.log(result.metrics)
        board.close()
        finish_run_files(out, result.metrics, result.final, total, result.callback_rows)


class TensorBoard:
    """Scalars under consistent tags (loss/<split>, accuracy/<split>) in the run's tensorboard/
    folder (`run` None: none); created lazily, resumable."""

    def __init__(self, run: Path | None, purge_step: int | None):
        self.writer = None
        if run is not None:
            from torch.utils.tensorboard import SummaryWriter  # (slow to import; only when writing)

            self.writer = SummaryWriter(str(Path(run) / layout.TENSORBOARD), purge_step=purge_step)

    def log(self, rows) -> None:
        if self.writer is not None:
            for iteration, split, loss, accuracy in rows:
                self.writer.add_scalar(f"loss/{split}", loss, iteration)
                self.writer.add_scalar(f"accuracy/{split}", accuracy, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
