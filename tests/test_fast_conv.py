"""Conv nets on the CPU in channels-last format (fast_conv): the same results as the plain NCHW
computation to float rounding, and nothing else changes (parameters, gradients, optimizer state
and saved files keep the ordinary layout; fully-connected models keep their exact path).

Why not bitwise: oneDNN's NHWC convolution kernels sum each output's 3x3xC products in another
order than its blocked NCHW kernels (and evaluation uses other chunk sizes, so the float32 sum of
a chunk's losses is split differently); float addition is not associative. The tolerances below
are a few hundred float32 roundings, far below any difference a change of method would make.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_splits

from lottery_ticket import fast_conv, loop
from lottery_ticket.hparams import TrainingHparams
from lottery_ticket.masking import full_masks, prepare_masks
from lottery_ticket.models import build_model
from lottery_ticket.trainer import autograd_step, make_optimizer

SHAPE = (3, 32, 32)


def half_masks(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) < 0.5).float() for k, v in full_masks(model).items()}


def plain_step(model, optimizer, masks, x, y):
    """The plain NCHW step: autograd, masks multiplied into the gradients, optimizer.step()."""
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].grad.mul_(mask)
    optimizer.step()
    return loss.detach()


def first_conv_inputs(model):
    """Records the memory format of every input the first convolution sees."""
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    return seen


def largest(tensors):
    return max(t.abs().max().item() for t in tensors)


# (model, input shape, steps): small inputs and few steps keep the test fast; VGG-19 needs 32x32.
CASES = [("conv2", SHAPE, 3), ("resnet18", (3, 16, 16), 3), ("vgg19", SHAPE, 1)]


@pytest.mark.parametrize("name,shape,steps", CASES)
def test_training_steps_match_the_plain_nchw_steps_to_float_rounding(name, shape, steps):
    ours = build_model(name, seed=0, input_shape=shape)
    plain = copy.deepcopy(ours)
    masks = prepare_masks(ours, half_masks(ours), torch.device("cpu"))
    prepare_masks(plain, masks, torch.device("cpu"))
    t = TrainingHparams(optimizer="sgd", lr=0.05, momentum=0.9)
    opt_ours, opt_plain = make_optimizer(ours, t), make_optimizer(plain, t)
    step = autograd_step(ours, opt_ours, masks)
    seen = first_conv_inputs(ours)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, *shape, generator=g), torch.randint(0, 10, (4,), generator=g)
        loss, _ = step(x, y)
        reference = plain_step(plain, opt_plain, masks, x, y)
        assert torch.allclose(loss, reference, rtol=1e-5, atol=0)
        # Within 1e-5 of the network's largest gradient (some gradients are rounding noise around 0:
        # VGG's conv biases, followed by batch norm) and 1e-6 of its largest weight.
        grad_scale, weight_scale = largest(p.grad for p in plain.parameters()), largest(plain.parameters())
        for (n, p), q in zip(ours.named_parameters(), plain.parameters(), strict=True):
            assert (p.grad - q.grad).abs().max() <= 1e-5 * grad_scale, n
            assert (p - q).abs().max() <= 1e-6 * weight_scale, n
            assert p.is_contiguous() and p.grad.is_contiguous()  # state dicts and checkpoints unchanged
    assert seen and all(seen)  # the channels-last path was taken
    for state in opt_ours.state.values():
        assert all(v.is_contiguous() for v in state.values() if isinstance(v, torch.Tensor))
    params = dict(ours.named_parameters())
    assert all(bool((params[k][m == 0] == 0).all()) for k, m in masks.items())  # pruned weights stay 0


@pytest.mark.parametrize("name", ["conv2", "resnet18"])
def test_evaluation_matches_the_plain_nchw_evaluation_to_float_rounding(name):
    model = build_model(name, seed=0, input_shape=SHAPE)  # (ResNet: batch norm in eval mode)
    data = synthetic_splits(n_train=1, n_val=1, n_test=250, shape=SHAPE, seed=2)
    x, y = data.test_x, data.test_y
    seen = first_conv_inputs(model)
    loss, accuracy = loop.evaluate(model, x, y)
    with torch.no_grad():  # plain: NCHW, the whole split as one batch
        model.eval()
        logits = model(x.contiguous())
        plain_loss = F.cross_entropy(logits, y).item()
        plain_accuracy = (logits.argmax(1) == y).sum().item() / len(y)
    assert seen[0] and len(seen) == -(-len(y) // fast_conv.EVAL_ROWS) + 1  # channels-last chunks (+ the plain call)
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    assert accuracy == plain_accuracy


def test_only_conv_nets_on_the_cpu_take_the_channels_last_path():
    lenet = build_model("lenet_300_100", seed=0)
    assert fast_conv.input_format(lenet, "cpu") == torch.contiguous_format
    assert fast_conv.eval_rows(torch.contiguous_format, loop.EVAL_BATCH) == loop.EVAL_BATCH
    conv2 = build_model("conv2", seed=0, input_shape=SHAPE)
    assert fast_conv.input_format(conv2, "cpu") == torch.channels_last
    assert fast_conv.input_format(conv2, "meta") == torch.contiguous_format
    x = torch.randn(2, 1, 28, 28)
    assert fast_conv.as_input(x, torch.contiguous_format) is x
    flat = torch.randn(2, 784)
    assert fast_conv.as_input(flat, torch.channels_last) is flat
