"""Retraining after pruning (Renda, Frankle & Carbin, "Comparing Rewinding and Fine-tuning in Neural
Network Pruning", ICLR 2020), as the branch `retraining`.

Start: the ticket of a level, trained to completion (T iterations; level 0: the dense network).
Prune its final weights with the experiment's strategy (one step = one lottery level's fractions),
then retrain t iterations by one of (Renda et al. Section 2, "Retraining techniques"):

* `finetune` -- fine-tuning: the final weights, training continued at the final learning rate
  (the schedule's rate at iteration T - 1, constant) for t iterations, a fresh optimizer;
* `weight_rewinding` -- the surviving weights, the optimizer state and the schedule position
  (learning rate, data position) of iteration T - t of the ticket's training, retrained for the
  last t iterations of the schedule. The state at T - t is the ticket's training replayed there
  (`ticket.replay`), its optimizer state masked like the weights (masking.mask_optimizer_state);
  with t = T (T - t = the ticket's start) this is the lottery procedure itself;
* `lr_rewinding` -- learning-rate rewinding: the final weights, a fresh optimizer, the last t
  iterations of the schedule replayed (iterations T - t .. T - 1 of the learning-rate schedule).

With a constant learning rate (e.g. the LeNet `paper` preset: Adam 1.2e-3) learning-rate
rewinding *is* fine-tuning: both train the final weights t iterations at the same rate with a
fresh optimizer; only which minibatches they draw differs. The two differ under a decaying
schedule (SGD with --lr-milestones), where Renda et al. find LR rewinding better.

Names: Renda et al.'s code (built on open_lth) calls weight rewinding `lottery` and learning-rate
rewinding `lr_finetune`; here they are `weight_rewinding` and `lr_rewinding`.

Iterative (default) vs one-shot (`--one-shot`, Section 3): with `--pruning-steps N`, iterative
pruning repeats prune-then-retrain N times (cycle c prunes cycle c - 1's retrained weights; weight
rewinding rewinds each cycle to the same state at T - t, as IMP with rewinding does); one-shot
prunes N steps' worth at once (the strategy applied N times to the same final weights, which for
magnitude pruning is one pruning to the N-step sparsity) and retrains once. `--retrain-iterations`
sweeps t.

On disk, in the branch's run directory (`retraining_<r>`): `replay_<T-t>/` (weight rewinding's
replay), `iterative/<method>_t<t>/cycle_<c>/` or `one_shot_<N>/<method>_t<t>/cycle_1/` (each a run
directory), and `retraining.csv`, one row per (schedule, method, t, cycle): Pm and the final
training and test accuracy. Later invocations with other methods or t add their rows.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from lottery_ticket import layout
from lottery_ticket.branches import BranchJob, ReportSection, register_branch
from lottery_ticket.branches.instability import parse_iterations
from lottery_ticket.branches.ticket import MeasuringBranch, TicketTraining, replay
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams
from lottery_ticket.loop import lr_schedule
from lottery_ticket.masking import density
from lottery_ticket.seeds import derive_seed

METHODS = ("finetune", "weight_rewinding", "lr_rewinding")
TABLE_KEYS = ["schedule", "method", "t", "cycle"]


def retraining_schedule(method: str, hp: Hparams, total: int, t: int, per_epoch: int) -> tuple[Hparams, int]:
    """(hyperparameters, start iteration) of one retraining run of `method` for t iterations after
    a training of `total` iterations; the run trains from the start iteration to the hyperparameters'
    `iterations`. `per_epoch`: iterations per epoch (for milestones given in epochs)."""
    training = hp.training
    if method == "finetune":  # the final learning rate, constant, for t more iterations
        final = lr_schedule(training, per_epoch)(total - 1)
        training = replace(training, lr=final, warmup_iterations=0, lr_milestones="", iterations=total + t,
                           epochs=0, rewind_iteration=0)
        return replace(hp, training=training), total
    if method in ("weight_rewinding", "lr_rewinding"):  # the schedule's last t iterations
        return replace(hp, training=replace(training, iterations=total, epochs=0, rewind_iteration=0)), total - t
    raise LotteryError(f"unknown retraining method {method!r}; choose from {', '.join(METHODS)}")


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise LotteryError(f"--methods must name some of {', '.join(METHODS)}; got {text!r}")
    return list(dict.fromkeys(methods))


@register_branch("retraining")
class Retraining(MeasuringBranch):
    table = layout.RETRAINING_TABLE
    table_keys = TABLE_KEYS
    description = ("prune the ticket's final weights and retrain t iterations: fine-tuning, weight rewinding "
                   "or learning-rate rewinding (Renda et al., ICLR 2020)")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--methods", default=",".join(METHODS),
                            help="comma-separated retraining methods: finetune (final weights, final learning "
                                 "rate), weight_rewinding (weights, optimizer state and schedule of iteration "
                                 "T-t; Renda et al.'s `lottery`), lr_rewinding (final weights, the schedule's "
                                 f"last t iterations; their `lr_finetune`) (default: {','.join(METHODS)})")
        parser.add_argument("--retrain-iterations", default=None, metavar="T,...",
                            help="the retraining lengths t to sweep, e.g. 500,1500,3000 (default: the "
                                 "ticket's whole training T)")
        parser.add_argument("--pruning-steps", type=int, default=1,
                            help="pruning steps, each one lottery level's fractions (default: 1)")
        parser.add_argument("--one-shot", action="store_true",
                            help="prune all --pruning-steps at once and retrain once (default: iteratively, "
                                 "retraining after every step)")

    def check(self, hp, jobs: list[BranchJob]) -> None:
        if not jobs:
            return
        job = jobs[0]
        parse_methods(job.option("methods"))
        if any(j.run_index > 0 for j in jobs):
            raise LotteryError("retraining is replicated by the lottery's trials: --runs must be 1")
        if not 1 <= job.option("pruning_steps") <= 100:
            raise LotteryError(f"--pruning-steps must be in [1, 100], got {job.option('pruning_steps')}")
        text = job.option("retrain_iterations")
        if text is not None:
            ts = parse_iterations(text, "--retrain-iterations")
            if ts[0] < 1:
                raise LotteryError(f"--retrain-iterations must be >= 1; got {text!r}")
            if hp.training.epochs == 0 and ts[-1] > hp.training.iterations:
                raise LotteryError(f"--retrain-iterations must be at most the {hp.training.iterations} "
                                   f"training iterations; got {ts[-1]}")

    def measure(self, ticket: TicketTraining, out, job: BranchJob, ctx) -> list[dict]:
        methods = parse_methods(job.option("methods"))
        text = job.option("retrain_iterations")
        ts = parse_iterations(text, "--retrain-iterations") if text is not None else [ticket.total]
        rows = []
        for method in methods:
            for t in ts:
                rows += self.sweep_point(ticket, out, method, t, job.option("pruning_steps"), job.option("one_shot"), ctx)
        return rows

    def sweep_point(self, ticket: TicketTraining, out, method: str, t: int, steps: int, one_shot: bool,
                    ctx) -> list[dict]:
        """The cycles of one (method, t): prune, retrain, repeat; one table row per cycle."""
        from lottery_ticket.runner import pruner, train_options
        from lottery_ticket.trainer import train

        if method == "weight_rewinding" and not ticket.start <= ticket.total - t:
            raise LotteryError(f"weight rewinding to iteration {ticket.total - t} is before the ticket's training "
                               f"starts ({ticket.start}); use t <= {ticket.total - ticket.start}")
        if t > ticket.total:
            raise LotteryError(f"t={t} is longer than the ticket's training ({ticket.total} iterations)")
        per_epoch = len(ticket.splits.train_y) // ticket.hp.dataset.batch_size
        hp, start = retraining_schedule(method, ticket.hp, ticket.total, t, per_epoch)
        prune = pruner(ticket.hp, ticket.model(ticket.final), ticket.splits)
        schedule = f"one_shot_{steps}" if one_shot else "iterative"
        masks, weights = ticket.masks, ticket.final
        rows = []
        for cycle in range(1, 2 if one_shot else steps + 1):
            for _ in range(steps if one_shot else 1):
                masks = prune(masks, weights)
            optimizer_state = None
            begin = weights
            if method == "weight_rewinding":
                begin, optimizer_state = replay(ticket, ticket.total - t, layout.replay_dir(out, ticket.total - t), ctx)
            order = derive_seed("retraining", ticket.seed, ticket.trial, ticket.level, schedule, method, t, cycle)
            run = layout.retrain_dir(out, method, t, cycle, steps if one_shot else None)
            result = train(ticket.model(begin), ticket.splits, hp, order_seed=order, masks=masks, output_dir=run,
                           start_iteration=start, optimizer_state=optimizer_state,
                           run_info={"trial": ticket.trial, "level": ticket.level, "control": self.kind,
                                     "method": method, "retrain_iterations": t, "schedule": schedule,
                                     "cycle": cycle, "seeds": {**ticket.seeds, "order": order}},
                           **{**train_options(ctx), "callbacks": {}})
            weights = result.final
            last = {split: (loss, accuracy) for _, split, loss, accuracy in result.metrics}
            rows.append({"trial": ticket.trial, "level": ticket.level, "schedule": schedule, "method": method,
                         "t": t, "cycle": cycle, "start_iteration": start, "pm": 100 * density(masks),
                         "final_test_loss": last["test"][0], "final_test_accuracy": last["test"][1],
                         "final_train_accuracy": last["train"][1]})
            if not ctx.quiet:
                print(f"{run}: Pm {rows[-1]['pm']:.1f}%  final test accuracy {last['test'][1]:.4f}",
                      file=sys.stderr, flush=True)
        return rows

    def report(self, experiment, plots_dir) -> ReportSection | None:
        from lottery_ticket.branches.figures import retraining_section

        return retraining_section(experiment, plots_dir, self.kind)
