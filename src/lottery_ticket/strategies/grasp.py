"""GraSP: gradient signal preservation (Wang et al., ICLR 2020).

Each weight's score is S(-w) = -w * (H g) (Section 4, Eq. 8), with g the gradient of the loss
and H its Hessian with respect to the prunable weights; the weights with the *highest* scores are
removed (Algorithm 1: "remove the top-k"), so this strategy keeps the lowest S, i.e. the highest
w * (H g). Following the reference code (Alecwangcq/GraSP, `pruner/GraSP.py`):

* the examples are --score-per-class examples of each class (`GraSP_fetch_data`, 10 per class;
  --score-data batch takes --score-batch examples instead), from the training split only, drawn
  from the run's seed, and split into two halves as the code does;
* the logits are divided by the temperature T (--grasp-temperature, 200 in the code) in every
  loss;
* g is the sum of the two halves' gradients (no graph); H g is the gradient of
  z = sum over the halves of <g, dL_half/dw> (computed with a graph: double backpropagation);
* scores are global across all prunable tensors (biases and batch norm are never scored).

The code's normalization by |sum of scores| does not change the ranking and is left out. The
network is scored in train mode, as the code does, with torch's random state seeded from the
run's seed (deterministic dropout, restored afterwards); batch-norm statistics change only in a copy.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lottery_ticket.masking import Masks, apply_masks
from lottery_ticket.seeds import derive_seed
from lottery_ticket.strategies import PruningContext, register_strategy


def grasp_scores(model: torch.nn.Module, masks: Masks, x: torch.Tensor, y: torch.Tensor, temperature: float,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """GraSP's S(-w) = -w * (H g) of every masked tensor (Eq. 8); the network is not changed."""
    model = copy.deepcopy(model).train()
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    names = sorted(masks)
    weights = [params[n] for n in names]
    half = len(y) // 2
    halves = [(x[:half], y[:half]), (x[half:], y[half:])]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("grasp", seed))

        def loss(part):
            return F.cross_entropy(model(part[0]) / temperature, part[1])

        gradient = [torch.zeros_like(w) for w in weights]
        for part in halves:
            for total, g in zip(gradient, torch.autograd.grad(loss(part), weights), strict=True):
                total += g
        z = 0.0
        for part in halves:
            with_graph = torch.autograd.grad(loss(part), weights, create_graph=True)
            z = z + sum((g * d).sum() for g, d in zip(gradient, with_graph, strict=True))
        hessian_gradient = torch.autograd.grad(z, weights)
    return {n: (-w * hg).detach() for n, w, hg in zip(names, weights, hessian_gradient, strict=True)}


@register_strategy("grasp")
def grasp(ctx: PruningContext) -> Masks:
    """Remove the highest GraSP scores -w * (H g), globally (keep the highest w * (H g))."""
    x, y = ctx.score_examples()
    scores = grasp_scores(ctx.model, ctx.masks, x, y, ctx.hp.pruning.grasp_temperature, ctx.seed)
    return ctx.keep_highest({name: -score for name, score in scores.items()})
