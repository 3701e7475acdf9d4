"""A finished ticket's training, read back and replayed: where the measuring branches start.

The instability branch (`instability.py`) needs the ticket's weights at an iteration k of its
training; weight rewinding (`retraining.py`) needs its weights *and optimizer state* at iteration
T - t. Neither is on disk: a lottery saves the starting, final (and late-rewinding) weights only.
Training is bitwise deterministic (seeded data order, same step code), so we replay: the ticket's
run -- its hyperparameters, starting weights, masks, data-order seed and starting iteration -- is
trained again in a directory of its own and stopped at the iteration asked (`trainer.train`'s
`stop_after`), which leaves the loop's own checkpoint there: the weights and optimizer state at
that iteration, in the checkpoint format, resumable after a kill like any run. Replaying to T
gives the ticket's final.safetensors bitwise (tests/test_stability.py), provided the replay runs
as the lottery ran (same --device, same --no-fast choice).

We chose replay over saving states during the lottery because the iterations wanted (every k of a
sweep, every T - t) are chosen after the lottery ran, and a state per iteration would be far larger
than the lottery itself.

`MeasuringBranch` is what both branches share: their run directory (run.json, the ticket's masks,
a results table merged across invocations, COMPLETE) around the measurements a subclass makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lottery_ticket import layout, procs
from lottery_ticket.branches import Branch, BranchJob
from lottery_ticket.checkpoint import has_checkpoint, load_checkpoint
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams
from lottery_ticket.layout.files import read_experiment, read_run_record, read_run_tensors
from lottery_ticket.lock import RunLock
from lottery_ticket.masking import Masks


@dataclass
class TicketTraining:
    """The ticket of (trial, level): how its training ran, and its files."""

    exp_dir: Path
    trial: int
    level: int
    hp: Hparams
    seed: int  # the experiment's seed
    splits: object
    masks: Masks
    initial: dict[str, torch.Tensor]  # the weights its training starts from (initial.safetensors)
    final: dict[str, torch.Tensor]
    seeds: dict  # run.json's seeds (model, order, labels)
    start: int  # the iteration its training starts at: 0, or --rewind-iteration for levels > 0
    total: int  # T, its last iteration

    @property
    def run(self) -> Path:
        return layout.run_dir(self.exp_dir, self.trial, self.level)

    def model(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A network of the experiment's architecture holding `weights`."""
        from lottery_ticket.runner import new_model

        return new_model(self.hp, self.splits, self.seeds["model"], presets=weights)


def ticket_training(exp_dir: str | Path, trial: int, level: int, ctx) -> TicketTraining:
    """The finished ticket of (trial, level) of a lottery experiment; LotteryError if unfinished."""
    from lottery_ticket.runner import load_splits
    from lottery_ticket.trainer import total_iterations

    hp, seed = read_experiment(exp_dir)
    run = layout.run_dir(exp_dir, trial, level)
    if not layout.is_complete(run):
        raise LotteryError(f"the ticket run {run} is not complete; finish `lth lottery` first")
    seeds = read_run_record(run)["run"]["seeds"]
    splits = load_splits(hp, ctx, seeds["labels"])
    total = total_iterations(hp.training, len(splits.train_y), hp.dataset.batch_size)
    return TicketTraining(
        exp_dir=Path(exp_dir), trial=trial, level=level, hp=hp, seed=seed, splits=splits,
        masks=read_run_tensors(run, layout.MASKS), initial=read_run_tensors(run, layout.INITIAL),
        final=read_run_tensors(run, layout.FINAL), seeds=seeds,
        start=hp.training.rewind_iteration if level > 0 else 0, total=total,
    )


def replay(ticket: TicketTraining, iteration: int, out: Path, ctx) -> tuple[dict, dict | None]:
    """(weights, optimizer state dict) of the ticket's training at `iteration` (start <= iteration
    < T). At its start: its starting weights and None (a fresh optimizer, as the ticket had).
    Else the ticket's run replayed into `out` and stopped at `iteration` (resumed if interrupted;
    read back from its checkpoint if already there)."""
    from lottery_ticket.runner import train_options
    from lottery_ticket.trainer import make_optimizer, train

    if not ticket.start <= iteration < ticket.total:
        raise LotteryError(f"iteration {iteration} is outside the ticket's training "
                           f"[{ticket.start}, {ticket.total}) of {ticket.run}")
    if iteration == ticket.start:
        return dict(ticket.initial), None
    options = {**train_options(ctx), "callbacks": {}, "quiet": True}
    train(ticket.model(ticket.initial), ticket.splits, ticket.hp, order_seed=ticket.seeds["order"],
          masks=ticket.masks, output_dir=out, start_iteration=ticket.start, stop_after=iteration,
          run_info={"trial": ticket.trial, "level": ticket.level, "replay_of": layout.TICKET,
                    "stop_after": iteration, "seeds": ticket.seeds}, **options)
    checkpoint_dir = out / layout.CHECKPOINT
    if not has_checkpoint(checkpoint_dir):
        raise LotteryError(f"the replay in {out} has no checkpoint; delete {out} to replay again")
    model = ticket.model(ticket.initial)
    optimizer = make_optimizer(model, ticket.hp.training)
    with torch.random.fork_rng(devices=[]):  # (loading a checkpoint sets the RNG state: keep ours)
        stopped, _, _ = load_checkpoint(checkpoint_dir, model, optimizer)
    if stopped != iteration:
        raise LotteryError(f"the replay in {out} stopped at {stopped}, not {iteration}; delete it to replay again")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, optimizer.state_dict()


def merge_table(path: Path, rows: list[dict], keys: list[str]) -> None:
    """Write `rows` to the CSV table `path`, keeping the rows of earlier invocations whose `keys`
    differ (a later sweep adds to a branch run; the same point measured again replaces its row)."""
    import pandas as pd

    from lottery_ticket.store import write_text_atomic

    new = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_csv(path)
        keep = ~old.set_index(keys).index.isin(new.set_index(keys).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    write_text_atomic(path, new.sort_values(keys, kind="stable").to_csv(index=False))


class MeasuringBranch(Branch):
    """A branch measuring a finished ticket. Its run directory holds run.json (the run's identity
    only: each nested run records what it ran, so a later invocation with other settings adds to
    the run), the ticket's masks (the results table's Pm), the table `table` (rows merged by
    `table_keys` across invocations) and COMPLETE. Subclasses implement `measure`."""

    table: str = ""
    table_keys: list[str] = []
    one_run_per_job = False

    def measure(self, ticket: TicketTraining, out: Path, job: BranchJob, ctx) -> list[dict]:
        """Make (or read back) this invocation's measurements in `out`; their table rows."""
        raise NotImplementedError

    def run(self, job: BranchJob, ctx) -> None:
        from lottery_ticket.layout.files import (
            check_same_run,
            finish_branch_run,
            run_record,
            start_branch_run,
        )

        out = layout.run_dir(job.experiment, job.trial, job.level, self.kind, job.run_index)
        ticket = ticket_training(job.experiment, job.trial, job.level, ctx)
        record = run_record(ticket.hp, {"trial": job.trial, "level": job.level, "control": self.kind,
                                        "run_index": job.run_index})
        check_same_run(out, record)
        procs.check_stop()
        with RunLock(out):
            if not (out / layout.RUN_FILE).is_file():
                start_branch_run(out, record, ticket.masks)
            merge_table(out / self.table, self.measure(ticket, out, job, ctx), self.table_keys)
            finish_branch_run(out, ticket.total)
