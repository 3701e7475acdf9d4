"""`lth compare-at-init`: IMP tickets against pruning at initialization at the same densities.

The comparison of Frankle et al., "Pruning Neural Networks at Initialization: Why Are We Missing
the Mark?" (ICLR 2021, Figures 2-3): for one preset, the magnitude-IMP tickets of a lottery
experiment and one-shot masks at initialization (SNIP, GraSP, SynFlow, random, ...), each trained
with the same hyperparameters from the same initialization of trial t (the lottery's level-0
network of that trial), over `trials` trials.

* IMP: `lth lottery` levels, resumed (finished levels are reused) in `<dir>/imp/` or in an
  existing experiment (`--imp-experiment`). IMP prunes by its per-level rates, so it reaches a
  requested density only approximately: each density is matched by the level whose density is
  nearest on a log scale, and the table gives that level and its actual density.
* At initialization: `strategies.prune_at_init` to exactly each density; a sanity check
  (`--checks`) changes the masks or weights of each: `shuffle` (the `shuffle` branch's layerwise
  shuffle), `reinit` (a fresh initialization, as the `reinit` branch), `invert` (the strategy's
  lowest scores). Run directories: `layout.at_init_run_dir`.

Every run is resumable as any run (`trainer.train`); the table and plot are `analysis/compare.py`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams, diff, never_prune
from lottery_ticket.layout.files import check_same_run, run_record
from lottery_ticket.pruning import LayerCollapse, layer_fractions, prune_count
from lottery_ticket.runner import (
    LotteryJob,
    RunOptions,
    load_splits,
    lottery_trial,
    new_model,
    pruning_seed,
    report_run,
    run_seeds,
    train_options,
    trial_seeds,
)
from lottery_ticket.seeds import derive_seed

CHECKS = ("shuffle", "reinit", "invert")
IMP = "imp"  # the method name of the lottery's tickets in the table


@dataclass(frozen=True)
class AtInitJob:
    """One run: `strategy`'s masks at `density` for trial `trial`, changed by `check` if given."""

    out: str  # the comparison directory
    hp: Hparams
    seed: int
    trial: int
    strategy: str
    density: float
    check: str = ""

    @property
    def method(self) -> str:
        return f"{self.strategy}_{self.check}" if self.check else self.strategy


def imp_densities(hp: Hparams, model, max_levels: int = 200) -> list[float]:
    """The overall density of each level 0, 1, ... of a magnitude lottery (`layerwise` or `global`)
    of `hp` on `model`, from the pruning counts alone (`pruning.prune_count`), until it falls
    below 0.1% or `max_levels`."""
    from lottery_ticket.masking import layer_kinds, prunable_names

    p = hp.pruning
    frozen = set(never_prune(p))
    sizes = {n: v.numel() for n, v in model.named_parameters() if n in set(prunable_names(model))}
    total = sum(sizes.values())
    if p.strategy == "layerwise":
        fractions = layer_fractions(layer_kinds(model), p.fc_fraction, p.conv_fraction, p.output_fraction)
        kept = dict(sizes)
        out = [1.0]
        while len(out) <= max_levels and out[-1] > 1e-3:
            kept = {n: k - (0 if n in frozen else prune_count(fractions[n], k)) for n, k in kept.items()}
            out.append(sum(kept.values()) / total)
        return out
    if p.strategy == "global":
        fixed = sum(size for n, size in sizes.items() if n in frozen)
        free = total - fixed
        out = [1.0]
        while len(out) <= max_levels and out[-1] > 1e-3:
            free -= prune_count(p.global_fraction, free)
            out.append((free + fixed) / total)
        return out
    raise LotteryError(f"compare-at-init: the IMP experiment must prune by magnitude (--strategy layerwise or "
                       f"global), not {p.strategy!r}")


def nearest_level(densities: list[float], target: float) -> int:
    """The level whose density is nearest to `target` on a log scale (ties: the earlier level)."""
    return min(range(len(densities)), key=lambda k: (abs(math.log(densities[k] / target)), k))


def at_init_run(job: AtInitJob, ctx: RunOptions) -> str | None:
    """One pruning-at-initialization run, resumable; nothing is scored again once it is complete.
    A method that collapses a layer at this density is not trained: its message is returned (and
    the comparison lists it), since a collapsed network is itself the result (e.g. inverted SynFlow
    prunes the output layer first)."""
    from lottery_ticket.branches.shuffle import shuffle_layerwise
    from lottery_ticket.strategies import prune_at_init
    from lottery_ticket.trainer import train

    hp, seed, trial = job.hp, job.seed, job.trial
    out = layout.at_init_run_dir(job.out, job.method, job.density, trial)
    seeds = run_seeds(hp, seed, trial, 0, f"at_init:{job.method}:{job.density!r}")
    at_init = {"strategy": job.strategy, "density": job.density, "seed": pruning_seed(seed, trial), "check": job.check}
    check_seed = derive_seed("check", job.check, seed, trial, job.strategy, job.density)
    run_info = {"trial": trial, "level": 0, "control": "at_init", "run_index": 0,
                "seeds": {**seeds, **({"control": check_seed} if job.check else {})}, "prune_at_init": at_init}
    check_same_run(out, run_record(hp, run_info))
    splits = load_splits(hp, ctx, seeds["labels"])
    model = new_model(hp, splits, trial_seeds(seed, trial)["model"])  # trial t's level-0 initialization
    masks = None
    if not layout.is_complete(out):
        try:
            masks = prune_at_init(hp, model, splits, job.strategy, job.density, at_init["seed"],
                                  invert=job.check == "invert")
        except LayerCollapse as e:
            message = f"{job.method} at density {job.density:g}, trial {trial}: {e}"
            if not ctx.quiet:
                print(f"not trained: {message}", file=sys.stderr, flush=True)
            return message
        if job.check == "shuffle":
            masks = shuffle_layerwise(masks, check_seed)
        if job.check == "reinit":
            model = new_model(hp, splits, check_seed)
    started = time.time()
    result = train(model, splits, hp, order_seed=seeds["order"], masks=masks, output_dir=out, run_info=run_info,
                   **train_options(ctx))
    report_run(out, result, started, ctx)
    return None


def compare_job(job, ctx: RunOptions) -> str | None:
    """The job function of `runner.run_jobs`: a lottery trial or a pruning-at-initialization run
    (its layer-collapse message, if any)."""
    if isinstance(job, LotteryJob):
        lottery_trial(job, ctx)
        return None
    return at_init_run(job, ctx)


def check_same_training(imp_hp: Hparams, hp: Hparams) -> None:
    """The IMP experiment must have been trained as the runs compared with it will be."""
    changes = [c for c in diff(imp_hp, hp) if not c.startswith("pruning.")]
    if changes:
        raise LotteryError("--imp-experiment was trained with other hyperparameters than these flags give ("
                           + "; ".join(changes) + "); give the same flags (or none, with the same --preset)")


def parse_densities(text: str) -> list[float]:
    """`0.1,0.05,0.02` as floats in (0, 1], in the order given, without repeats."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LotteryError(f"--densities must be comma-separated numbers such as 0.1,0.05; got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise LotteryError(f"--densities must be numbers in (0, 1]; got {text!r}")
    return list(dict.fromkeys(values))


def parse_names(text: str, known, what: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LotteryError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))
