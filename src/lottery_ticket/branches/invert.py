"""Sanity check "score inversion" (Frankle et al., ICLR 2021, Section 5): the ticket's level pruned
again by the experiment's own strategy, keeping the *lowest* scores instead of the highest.

Level k's masks came from the strategy scoring the network of level k-1 (its trained weights and
masks, `strategies.PruningContext`); this re-scores exactly that network with `invert` set and keeps
the same number of weights per the strategy's rule: magnitude strategies prune the largest
magnitudes, score-based ones (snip, grasp, synflow, random) rank by the negated score (never
1/score, which turns zeros into infinities and does not reverse signed scores such as GraSP's).
The run starts from the ticket's starting weights. Level 0 has no pruning to invert: refused.
(Pruning-at-initialization masks are inverted by `lth compare-at-init --checks invert`.)
"""

from __future__ import annotations

from lottery_ticket import layout
from lottery_ticket.branches import register_branch
from lottery_ticket.branches.controls import ControlBranch
from lottery_ticket.errors import LotteryError
from lottery_ticket.layout.files import read_run_tensors
from lottery_ticket.masking import Masks


@register_branch("invert")
class Invert(ControlBranch):
    control = False  # a sanity check run by `lth branch`, not one of `lth reinit --control`
    description = ("sanity check: each level re-pruned by the experiment's strategy keeping the lowest scores "
                   "(Frankle et al. 2021, Section 5), original starting weights")

    batched = False  # (the masks need the level before; one run at a time)

    def check(self, hp, jobs) -> None:
        if any(job.level == 0 for job in jobs):
            raise LotteryError("invert: level 0 is not pruned, there is nothing to invert; use --levels from 1")

    def source_masks(self, exp_dir, trial, level, hp, seed, splits, masks) -> Masks:
        from lottery_ticket.runner import new_model, pruning_seed
        from lottery_ticket.strategies import STRATEGIES, PruningContext

        before = layout.run_dir(exp_dir, trial, level - 1)
        if not layout.is_complete(before):
            raise LotteryError(f"invert needs the finished level before the ticket: {before} is not complete")
        ctx = PruningContext(masks=read_run_tensors(before, layout.MASKS), weights=read_run_tensors(before, layout.FINAL),
                             hp=hp, architecture=new_model(hp, splits, 0), splits=splits, invert=True,
                             seed=pruning_seed(seed, trial))
        inverted = STRATEGIES.get(hp.pruning.strategy)(ctx)
        if sum(int(m.sum()) for m in inverted.values()) != sum(int(m.sum()) for m in masks.values()):
            raise LotteryError(f"invert: the inverted masks of {exp_dir} level {level} keep a different number of "
                               "weights than the ticket (was the experiment pruned by another strategy?)")
        return inverted

    def init(self, original, fresh, masks, seed):
        return dict(original), masks
