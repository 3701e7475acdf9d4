"""Instability analysis / linear mode connectivity (Frankle, Dziugaite, Roy & Carbin, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020), as the branch `instability`.

For the ticket of a level (level 0: the dense network) and a rewind point k (Section 2,
"Instability analysis", Algorithm 1): take the network W_k at iteration k of the level's training,
train two copies from there to the end (iteration T) with different SGD noise -- here, two data
orders of their own, the same masks -- and evaluate the networks on the straight line between
the two results, (1 - alpha) W_a + alpha W_b, at `--alphas` evenly spaced alphas in [0, 1]
(default 30, as the paper), on the training and the test split. The *error barrier height*
(Section 2, "Linear interpolation" and "Instability"): the supremum over alpha of the
interpolated error minus the mean of the two endpoints' errors (alpha = 0 and 1),
in percentage points of error; the paper calls a network *stable* when it is below 2% (Section 2,
"we consider a network ... stable if ... error barrier height ... < 2%"), the `stable` column.

What k means here: W_k is the ticket's own training replayed to iteration k (`ticket.replay`):
level 0 from its initialization, a level L > 0 from its starting weights (the level-0
initialization masked, or, under late rewinding --rewind-iteration R, the level-0 weights at R,
from which the ticket's training starts at iteration R). k counts iterations of the schedule from
its very start, so under late rewinding k >= R for levels > 0 (k = R: the ticket's starting
weights). The copies continue the schedule from k (learning rate, data positions) with a fresh
optimizer, as this library's late rewinding and open_lth's branches do (the paper's Algorithm 1
copies the weights W_k only).

Masked weights stay 0 along the path: both endpoints share the masks, and each interpolated
network has them applied again (masking.apply_masks). Batch norm: averaging two networks'
running statistics gives statistics of neither, so for a network with batch norm the statistics
of every interpolated network are recomputed on the training split (train-mode forward passes
over all of it, cumulative average, no augmentation) before it is evaluated; the report says so.

On disk, in the branch's run directory (`instability_<r>`): for each k, `k_<k>/replay_<k>/` (the
replay to k, absent for k at the start), and per pair `k_<k>/pair_<p>/` with the two copies `a/`
and `b/` (run directories: final.safetensors, masks.safetensors, metrics.csv, ...),
`instability.json` (alphas, the curve per split, the barriers, the endpoints' files) and
`instability_curve.csv`; the run's `instability.csv` lists every (k, pair, split) barrier.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lottery_ticket import layout, procs
from lottery_ticket.branches import BranchJob, ReportSection, register_branch
from lottery_ticket.branches.ticket import MeasuringBranch, TicketTraining, replay
from lottery_ticket.errors import LotteryError
from lottery_ticket.masking import apply_masks, density
from lottery_ticket.seeds import derive_seed
from lottery_ticket.store import read_json, write_json, write_text_atomic

STABLE_BELOW = 2.0  # percentage points of error: the paper's threshold (Section 2)
SPLITS = ("train", "test")
COPIES = ("a", "b")


def parse_iterations(text: str, flag: str) -> list[int]:
    """`0,500,2000` as a sorted list of distinct non-negative integers."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise LotteryError(f"{flag} must be comma-separated iterations like 0,500; got {text!r}") from None
    if not values or values[0] < 0:
        raise LotteryError(f"{flag} must name iterations >= 0; got {text!r}")
    return values


def alphas(count: int) -> list[float]:
    """`count` evenly spaced interpolation weights from 0 to 1, both included."""
    return [i / (count - 1) for i in range(count)]


def error_barrier(errors: list[float]) -> float:
    """The error barrier height of a curve of errors at evenly spaced alphas from 0 to 1 (first and
    last: the endpoints): max over alpha of the error minus the mean of the endpoints' errors
    (Frankle et al. 2020, Section 2). At least half the endpoints' difference, never negative."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for floating-point tensors; integer ones (batch norm's counter) from a."""
    return {name: torch.lerp(a[name], b[name], alpha) if a[name].is_floating_point() else a[name].clone()
            for name in a}


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, train_x: torch.Tensor, batch: int = 1000) -> None:
    """Reset every batch norm's running statistics and recompute them as the cumulative average
    over the whole training split (train-mode batch norm, everything else in eval mode)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts alike
        m.train()
    for start in range(0, len(train_x), batch):
        model(train_x[start : start + batch])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def curve(ticket: TicketTraining, a: dict, b: dict, masks: dict, count: int, device: str) -> dict:
    """The interpolation curve between `a` and `b`: per split, loss and error (percent) at each alpha."""
    from lottery_ticket.loop import evaluate_splits, evaluation_threads

    splits = ticket.splits
    data = {"train": (splits.train_x.to(device), splits.train_y.to(device)),
            "test": (splits.test_x.to(device), splits.test_y.to(device))}
    model = ticket.model(a).to(device)
    norm = has_batch_norm(model)
    masks = {k: v.to(device) for k, v in masks.items()}
    result = {split: {"loss": [], "error": []} for split in SPLITS}
    with evaluation_threads(device):  # (batch-norm statistics too: the same values on any worker count)
        for alpha in alphas(count):
            procs.check_stop()  # (SIGINT/SIGTERM: nothing of this pair is written; it is redone)
            model.load_state_dict(interpolate(a, b, alpha))
            apply_masks(model, masks)  # (0 in both endpoints already: kept 0 along the path)
            if norm:
                recompute_batch_norm(model, data["train"][0])
            for split, (loss, accuracy) in zip(SPLITS, evaluate_splits(model, [data[s] for s in SPLITS]), strict=True):
                result[split]["loss"].append(loss)
                result[split]["error"].append(100.0 * (1.0 - accuracy))
    return result


@register_branch("instability")
class Instability(MeasuringBranch):
    table = layout.INSTABILITY_TABLE
    table_keys = ["k", "pair", "split"]
    description = ("linear mode connectivity: train two copies from iteration k, the error barrier on the "
                   "path between them (Frankle et al., ICML 2020)")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--rewind-iterations", default="0", metavar="K,...",
                            help="the iterations k to start the two copies from, e.g. 0,100,500,2000: the "
                                 "ticket's training replayed to k (default: 0)")
        parser.add_argument("--pairs", type=int, default=1,
                            help="pairs of copies per k, each with data orders of its own; the table and "
                                 "figures show the min/max over pairs (default: 1)")
        parser.add_argument("--alphas", type=int, default=30,
                            help="evenly spaced interpolation points from 0 to 1, endpoints included "
                                 "(default: 30, as the paper)")

    def check(self, hp, jobs: list[BranchJob]) -> None:
        if not jobs:
            return
        job = jobs[0]
        ks = parse_iterations(job.option("rewind_iterations"), "--rewind-iterations")
        if not 1 <= job.option("pairs") <= 1000:
            raise LotteryError(f"--pairs must be in [1, 1000], got {job.option('pairs')}")
        if not 3 <= job.option("alphas") <= 1000:
            raise LotteryError(f"--alphas must be in [3, 1000], got {job.option('alphas')}")
        if any(j.run_index > 0 for j in jobs):
            raise LotteryError("instability runs all pairs in one run: use --pairs N, not --runs")
        if hp.training.epochs == 0:
            total = hp.training.iterations
            if ks[-1] >= total:
                raise LotteryError(f"--rewind-iterations must be below the {total} training iterations; got {ks[-1]}")
        start = hp.training.rewind_iteration
        if start > 0 and any(j.level > 0 for j in jobs) and ks[0] < start:
            raise LotteryError(f"levels > 0 start training at --rewind-iteration {start}; "
                               f"--rewind-iterations must be >= {start} for them, got {ks[0]}")

    def measure(self, ticket: TicketTraining, out: Path, job: BranchJob, ctx) -> list[dict]:
        ks = parse_iterations(job.option("rewind_iterations"), "--rewind-iterations")
        rows = []
        for k in ks:
            for pair in range(job.option("pairs")):
                result = self.pair(ticket, k, pair, out, job.option("alphas"), ctx)
                rows += table_rows(ticket, result)
                if not ctx.quiet:
                    print(f"{out}: k={k} pair {pair}: test barrier {result['barrier']:.2f} "
                          f"(train {result['train_barrier']:.2f})", file=sys.stderr, flush=True)
        return rows

    def pair(self, ticket: TicketTraining, k: int, pair: int, out: Path, count: int, ctx) -> dict:
        """One pair of copies from W_k, trained (or resumed) and interpolated; the result record."""
        from lottery_ticket.runner import train_options
        from lottery_ticket.trainer import train

        if not ticket.start <= k < ticket.total:
            raise LotteryError(f"k={k} is outside the ticket's training [{ticket.start}, {ticket.total}) "
                               f"of {ticket.run}")
        where = layout.pair_dir(out, k, pair)
        result_file = where / layout.INSTABILITY_RESULT
        if result_file.is_file():
            record = read_json(result_file)
            if len(record["alphas"]) != count:
                raise LotteryError(f"{result_file} has {len(record['alphas'])} alphas, not --alphas {count}; "
                                   f"give --alphas {len(record['alphas'])}, or delete {where} to redo it")
            return record
        weights, _ = replay(ticket, k, layout.replay_dir(layout.rewind_point_dir(out, k), k), ctx)
        finals = {}
        for copy in COPIES:
            order = derive_seed("instability", ticket.seed, ticket.trial, ticket.level, k, pair, copy)
            result = train(ticket.model(weights), ticket.splits, ticket.hp, order_seed=order, masks=ticket.masks,
                           output_dir=layout.copy_dir(where, copy), start_iteration=k,
                           run_info={"trial": ticket.trial, "level": ticket.level, "control": self.kind,
                                     "rewind_iteration": k, "pair": pair, "copy": copy,
                                     "seeds": {**ticket.seeds, "order": order}},
                           **{**train_options(ctx), "callbacks": {}})
            finals[copy] = result.final
        values = curve(ticket, finals["a"], finals["b"], ticket.masks, count, ctx.device)
        barriers = {split: error_barrier(values[split]["error"]) for split in SPLITS}
        record = {
            "trial": ticket.trial, "level": ticket.level, "pm": 100 * density(ticket.masks), "k": k, "pair": pair,
            "barrier": barriers["test"], "train_barrier": barriers["train"],
            "stable": barriers["test"] < STABLE_BELOW, "stable_below": STABLE_BELOW,
            "definition": "max over alpha of error(alpha) minus the mean of error(0) and error(1), percentage "
                          "points (Frankle et al. 2020, Section 2); alpha 0 = copy a, 1 = copy b",
            "batch_norm_recomputed": has_batch_norm(ticket.model(finals["a"])),
            "alphas": alphas(count), "curve": values,
            "endpoints": {copy: str(Path(copy) / layout.FINAL) for copy in COPIES},
            "masks": str(Path(COPIES[0]) / layout.MASKS),
        }
        write_text_atomic(where / layout.INSTABILITY_CURVE, curve_csv(record))
        write_json(result_file, record)
        return record

    def report(self, experiment: Path, plots_dir: Path) -> ReportSection | None:
        from lottery_ticket.branches.figures import instability_section

        return instability_section(experiment, plots_dir, self.kind)


def curve_csv(record: dict) -> str:
    lines = ["alpha,split,loss,error"]
    for split in SPLITS:
        for alpha, loss, error in zip(record["alphas"], record["curve"][split]["loss"],
                                      record["curve"][split]["error"], strict=True):
            lines.append(f"{alpha!r},{split},{loss!r},{error!r}")
    return "\n".join(lines) + "\n"


def table_rows(ticket: TicketTraining, record: dict) -> list[dict]:
    """The rows of instability.csv for one pair: one per split."""
    rows = []
    for split in SPLITS:
        errors = record["curve"][split]["error"]
        barrier = error_barrier(errors)
        peak = max(range(len(errors)), key=errors.__getitem__)
        rows.append({"trial": ticket.trial, "level": ticket.level, "pm": record["pm"], "k": record["k"],
                     "pair": record["pair"], "split": split, "barrier": barrier,
                     "stable": barrier < STABLE_BELOW, "error_a": errors[0], "error_b": errors[-1],
                     "max_error": errors[peak], "max_alpha": record["alphas"][peak]})
    return rows
