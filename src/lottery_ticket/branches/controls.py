"""Control experiments: is it the mask alone, or the mask together with the original initialization?

Given a ticket's masks and the weights its retraining starts from (the level-0 initial weights, or
with late rewinding the level-0 weights at the rewind iteration):

* `reinit`: a fresh random initialization (the model's initializer with a new seed), Frankle &
  Carbin (ICLR 2019) Section 2 ("randomly reinitialized");
* `reuse`: each prunable tensor's values sampled (with replacement) from that tensor's *surviving*
  starting values -- the ticket's unmasked original weights, not the pruned ones -- so the
  ticket's own weight distribution per layer with the arrangement destroyed. This follows Frankle
  & Carbin's appendix experiments (ICLR 2019, arXiv v5, LeNet appendix) that reinitialize a
  winning ticket by sampling from the winning ticket's own initial weights of each layer;
* `reuse_sign`: as `reuse`, but each weight keeps the sign of its original value (the same
  appendix's sign-preserving variant: the magnitudes are resampled, the signs kept);
* `random_pruning`: the starting weights with random masks keeping the same number of weights per
  tensor (random pruning, Frankle & Carbin Section 2 / Figure 4). Its runs keep the run kind `random` on
  disk (its name before it was renamed), so experiments made before stay
  readable and resumable, and its seeds -- derived from the run kind -- are unchanged.

Non-prunable tensors (biases, batch norm) keep their original starting values, except in
`reinit`, where everything is fresh.

Each control is a branch (`lottery_ticket.branches`) run by `lth branch NAME` or, as before, by
`lth reinit --control NAME`; `runner.prepare_control` builds a control run (data, seeds, starting
iteration) and calls the branch's `init` for its starting weights and masks.
"""

from __future__ import annotations

import torch

from lottery_ticket.branches import Branch, BranchJob, branch_for_kind, register_branch
from lottery_ticket.masking import Masks
from lottery_ticket.pruning import random_masks_like
from lottery_ticket.runner import ControlJob, control_run, control_runs_batched


class ControlBranch(Branch):
    """A control: the ticket's retraining (same hyperparameters, same starting iteration, a data
    order of its own) from starting weights and masks that `init` changes one way. Subclasses
    implement `init`; training, seeds, resuming and `--batched` come from `runner`."""

    batched = True
    control = True

    def init(self, original: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], masks: Masks,
             seed: int) -> tuple[dict[str, torch.Tensor], Masks]:
        """(initial state dict, masks) of one control run. `original`: the state dict the ticket's
        retraining starts from; `fresh`: a newly initialized one (same architecture, this run's
        seed); `masks`: the ticket's masks at this level; `seed`: this run's seed."""
        raise NotImplementedError

    def source_masks(self, exp_dir, trial: int, level: int, hp, seed: int, splits, masks: Masks) -> Masks:
        """The masks `init` gets: the ticket's `masks` of (trial, level) unless a control derives
        its own from the experiment (`invert` re-scores the level before). `seed`: the experiment's."""
        return masks

    def run(self, job: BranchJob, ctx) -> None:
        control_run(ControlJob(job.experiment, self.kind, job.trial, job.level, job.run_index), ctx)

    def run_batched(self, jobs: list[BranchJob], ctx) -> None:
        control_runs_batched([ControlJob(j.experiment, self.kind, j.trial, j.level, j.run_index) for j in jobs], ctx)


@register_branch("reinit")
class Reinit(ControlBranch):
    description = "the ticket's masks on a fresh random initialization (Frankle & Carbin 2019, Section 2)"

    def init(self, original, fresh, masks, seed):
        return dict(fresh), masks


def _sample_survivors(original: dict[str, torch.Tensor], masks: Masks, seed: int, keep_sign: bool) -> dict:
    generator = torch.Generator().manual_seed(seed)
    weights = dict(original)
    for name in sorted(masks):
        start = original[name]
        survivors = start[masks[name].to(torch.bool)]
        if survivors.numel() == 0:  # a fully pruned tensor: nothing to sample, all masked anyway
            weights[name] = torch.zeros_like(start)
            continue
        picks = torch.randint(0, survivors.numel(), (start.numel(),), generator=generator)
        sampled = survivors[picks].view_as(start)
        if keep_sign:
            sign = torch.where(start < 0, -1.0, 1.0).to(sampled.dtype)
            sampled = sampled.abs() * sign
        weights[name] = sampled
    return weights


@register_branch("reuse")
class Reuse(ControlBranch):
    description = ("the ticket's masks; each layer's weights sampled from its surviving starting weights "
                   "(Frankle & Carbin 2019, appendix)")

    def init(self, original, fresh, masks, seed):
        return _sample_survivors(original, masks, seed, keep_sign=False), masks


@register_branch("reuse_sign")
class ReuseSign(ControlBranch):
    description = "as reuse, each weight keeping its original sign (Frankle & Carbin 2019, appendix)"

    def init(self, original, fresh, masks, seed):
        return _sample_survivors(original, masks, seed, keep_sign=True), masks


@register_branch("random_pruning")
class RandomPruning(ControlBranch):
    kind = "random"  # its runs on disk keep the kind `random` (the control's name before the rename)
    description = ("random masks of the ticket's per-layer sizes on the original starting weights "
                   "(Frankle & Carbin 2019, Section 2; was --control random)")

    def init(self, original, fresh, masks, seed):
        return dict(original), random_masks_like(masks, seed)


def control_init(
    control: str,
    original: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    masks: Masks,
    seed: int,
) -> tuple[dict[str, torch.Tensor], Masks]:
    """(initial state dict, masks) for one run of the control whose run kind is `control`."""
    return branch_for_kind(control).init(original, fresh, masks, seed)
