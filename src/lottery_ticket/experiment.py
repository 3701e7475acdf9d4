"""The lottery ticket experiment loop, with every ingredient injected (as in the original library).

    train -> prune -> reset the remaining weights -> retrain, for `levels` levels.

`make_dataset()` returns the data; `make_model(presets)` returns a fresh network whose tensors are
set to `presets` (a state dict) when given; `train_model(level, dataset, model, masks)` trains
and returns `(reset_weights, final_weights)`, where reset_weights are the weights later levels
rewind to (the initial weights, or the iteration-k weights with late rewinding);
`prune_masks(masks, final_weights)` returns the next level's masks.
"""

from __future__ import annotations

from collections.abc import Callable

from lottery_ticket.masking import Masks, full_masks


def experiment(
    make_dataset: Callable,
    make_model: Callable,
    train_model: Callable,
    prune_masks: Callable,
    levels: int,
    presets: dict | None = None,
) -> Masks:
    """Run levels 0..`levels` and return the last level's masks."""
    dataset = make_dataset()
    model = make_model(presets)
    masks = full_masks(model)
    reset_weights, final_weights = train_model(0, dataset, model, masks)
    for level in range(1, levels + 1):
        masks = prune_masks(masks, final_weights)
        model = make_model(reset_weights)  # the one place weights are reset between levels
        _, final_weights = train_model(level, dataset, model, masks)
    return masks
