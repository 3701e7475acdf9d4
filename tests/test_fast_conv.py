"""Conv nets evaluated on the CPU in channels-last format (fast_conv): the same numbers as the
plain NCHW evaluation to float rounding; training and fully-connected models keep their path.

Why not bitwise: oneDNN's NHWC convolution kernels sum each output's 3x3xC products in another
order than its blocked NCHW kernels (and evaluation uses other chunk sizes, so the float32 sum of
a chunk's losses is split differently); float addition is not associative. The loss tolerance
(1e-5 relative) is ~100 float32 roundings; accuracies are compared exactly.
"""

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


def first_conv_inputs(model):
    """Records the memory format of every input the first convolution sees."""
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    return seen


@pytest.mark.parametrize("name", ["conv2", "resnet18"])
def test_evaluation_matches_the_plain_nchw_evaluation_to_float_rounding(name):
    model = build_model(name, seed=0, input_shape=SHAPE)  # (ResNet: batch norm in eval mode)
    prepare_masks(model, half_masks(model), torch.device("cpu"))  # a pruned network
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


def test_training_steps_stay_nchw():
    """The training step is untouched (bitwise what it was): its batches reach the model as given."""
    model = build_model("conv2", seed=0, input_shape=(3, 8, 8))
    masks = prepare_masks(model, None, torch.device("cpu"))
    step = autograd_step(model, make_optimizer(model, TrainingHparams()), masks)
    seen = first_conv_inputs(model)
    step(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert seen == [False]


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


def trained_looking_batch_norm(model, seed=0):
    """Batch-norm statistics and affine parameters away from their initial 0/1, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.rand(bn.running_mean.shape, generator=g) - 0.5)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g) * 0.4 - 0.2)


@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
def test_batch_norm_folded_for_evaluation_gives_the_plain_numbers_to_float_rounding(name):
    model = build_model(name, seed=0, input_shape=SHAPE)
    prepare_masks(model, half_masks(model), torch.device("cpu"))
    trained_looking_batch_norm(model)
    model.eval()
    folded = fast_conv.folded_batch_norm(model)
    assert folded is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = synthetic_splits(n_train=1, n_val=1, n_test=200, shape=SHAPE, seed=3)
    x, y = data.test_x, data.test_y
    loss, accuracy = loop.evaluate(model, x, y)  # folded, channels-last, 100-row chunks
    with torch.no_grad():  # plain: NCHW, batch norm as its own layer, the whole split as one batch
        logits = model(x.contiguous())
        plain_loss = F.cross_entropy(logits, y).item()
        plain_accuracy = (logits.argmax(1) == y).sum().item() / len(y)
        assert (folded(x) - logits).abs().max() < 1e-4 * logits.abs().max()
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    assert accuracy == plain_accuracy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def test_batch_norm_is_left_alone_where_folding_would_change_what_runs():
    resnet = build_model("resnet18", seed=0, input_shape=SHAPE)
    assert fast_conv.folded_batch_norm(resnet.train()) is resnet  # training mode: batch statistics
    resnet.eval()
    resnet.conv.register_forward_hook(lambda m, i, o: None)
    assert fast_conv.folded_batch_norm(resnet) is resnet  # a hook would not run on the copy
    conv2 = build_model("conv2", seed=0, input_shape=SHAPE).eval()
    assert fast_conv.folded_batch_norm(conv2) is conv2  # nothing to fold
