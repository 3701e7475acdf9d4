"""Model registry and architectures: shapes, weight counts, deterministic Glorot init."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from lottery_ticket.errors import LotteryError
from lottery_ticket.models import build_model, entry_for, registered

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)

# Prunable weights: Conv/Linear weights, biases and batch norm excluded. The paper's Figure 2
# gives 266K, 4.3M, 2.4M, 2.3M, 20.0M and 271K.
PRUNABLE = {
    "lenet_300_100": 266_200,
    "conv2": 4_300_992,
    "conv4": 2_425_024,
    "conv6": 2_261_184,
    "vgg19": 20_024_000,
    "resnet18": 270_896,
}
OUTPUT_LAYER = {
    "lenet_300_100": "output",
    "conv2": "output",
    "conv4": "output",
    "conv6": "output",
    "vgg19": "fc",
    "resnet18": "fc",
}
CONV_MODELS = ("conv2", "conv4", "conv6", "vgg19", "resnet18")


def weighted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prunable_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in weighted(model))


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """One model per name, built once (VGG-19 has 20M weights), in eval mode so that running it
    leaves batch-norm statistics untouched; tests that train deep-copy it first."""
    shape = {"lenet_300_100": MNIST}
    built = {n: build_model(n, seed=0, input_shape=shape.get(n, CIFAR)) for n in PRUNABLE}
    return {n: m.eval() for n, m in built.items()}


def test_registered_names_and_entries():
    names = {n for e in registered() for n in e.examples}
    assert set(PRUNABLE) <= names
    for name in CONV_MODELS:
        entry = entry_for(name)
        assert entry.default_preset == name
        assert entry.dataset == "cifar10"
        assert entry.description
    assert entry_for("conv2") is not entry_for("conv4")


@pytest.mark.parametrize("name", ["conv3", "conv", "vgg16", "resnet20", "CONV2", "conv2 "])
def test_unknown_model_mentions_name(name):
    with pytest.raises(LotteryError, match="unknown model") as info:
        build_model(name, seed=0)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_prunable_weight_counts(models, name):
    assert prunable_count(models[name]) == PRUNABLE[name]


def test_conv6_count_by_hand():
    convs = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9
    fcs = (4 * 4 * 256) * 256 + 256 * 256 + 256 * 10
    assert convs + fcs == PRUNABLE["conv6"] == 2_261_184


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_output_shapes_and_output_layer(models, name):
    model = models[name]
    shape = MNIST if name == "lenet_300_100" else CIFAR
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linear_names[-1] == OUTPUT_LAYER[name]
    assert model.get_submodule(OUTPUT_LAYER[name]).out_features == 10


@pytest.mark.parametrize(
    "name", ["lenet_300_100", "fc_300_100", "conv2", "conv4", "conv6", "resnet18"]
)
def test_mnist_shaped_inputs(name):
    model = build_model(name, seed=0, input_shape=MNIST)
    with torch.no_grad():
        assert model(torch.zeros(2, *MNIST)).shape == (2, 10)


@pytest.mark.parametrize("name", ["conv2", "resnet18", "lenet_300_100"])
def test_num_classes(name):
    model = build_model(name, seed=0, num_classes=100, input_shape=CIFAR)
    with torch.no_grad():
        assert model(torch.zeros(2, *CIFAR)).shape == (2, 100)


def test_first_and_output_layer_names(models):
    first = {name: weighted(m)[0][0] for name, m in models.items()}
    assert first == {
        "lenet_300_100": "hidden.0",
        "conv2": "convs.0",
        "conv4": "convs.0",
        "conv6": "convs.0",
        "vgg19": "layers.0.conv",
        "resnet18": "conv",
    }
    assert models["conv2"].get_submodule("convs.0").weight.shape == (64, 3, 3, 3)
    assert models["vgg19"].get_submodule("layers.0.conv").weight.shape == (64, 3, 3, 3)
    assert models["resnet18"].get_submodule("conv").weight.shape == (16, 3, 3, 3)


def test_conv_layer_shapes():
    model = build_model("conv6", seed=0, input_shape=CIFAR)
    shapes = [tuple(m.weight.shape) for _, m in weighted(model)]
    assert shapes == [
        (64, 3, 3, 3),
        (64, 64, 3, 3),
        (128, 64, 3, 3),
        (128, 128, 3, 3),
        (256, 128, 3, 3),
        (256, 256, 3, 3),
        (256, 4096),
        (256, 256),
        (10, 256),
    ]
    for _, m in weighted(model):
        if isinstance(m, nn.Conv2d):
            assert m.padding == (1, 1) and m.stride == (1, 1)


@pytest.mark.parametrize("name", ["conv2", "resnet18", "lenet_300_100"])
def test_same_seed_same_weights_different_seed_different(name):
    a = build_model(name, seed=7, input_shape=CIFAR).state_dict()
    b = build_model(name, seed=7, input_shape=CIFAR).state_dict()
    c = build_model(name, seed=8, input_shape=CIFAR).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert weights
    for key in weights:
        assert not torch.equal(a[key], c[key]), key


def test_vgg_seed_determinism(models):
    again = build_model("vgg19", seed=0, input_shape=CIFAR)
    first = models["vgg19"].state_dict()
    for key, value in again.state_dict().items():
        assert torch.equal(value, first[key]), key


def test_glorot_normal_statistics():
    model = build_model("conv6", seed=3, input_shape=CIFAR)
    weight = model.get_submodule("convs.5").weight  # 256x256x3x3: 589,824 values
    fan_in = fan_out = 256 * 9
    expected = math.sqrt(2.0 / (fan_in + fan_out))
    assert abs(weight.std().item() - expected) < 0.05 * expected
    assert abs(weight.mean().item()) < 0.05 * expected
    # The big linear layer as well (fan_in 4096, fan_out 256).
    linear = model.get_submodule("hidden.0").weight
    expected = math.sqrt(2.0 / (4096 + 256))
    assert abs(linear.std().item() - expected) < 0.05 * expected


@pytest.mark.parametrize("name", list(PRUNABLE))
def test_biases_zero_and_batch_norm_initialized(models, name):
    model = models[name]
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0, module_name
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1), module_name
            assert torch.count_nonzero(module.bias) == 0, module_name


def test_bias_choices(models):
    assert all(m.bias is not None for _, m in weighted(models["conv6"]))
    assert all(m.bias is not None for _, m in weighted(models["vgg19"]))
    resnet = weighted(models["resnet18"])
    assert all(m.bias is None for _, m in resnet if isinstance(m, nn.Conv2d))
    assert models["resnet18"].fc.bias is not None
    bns = [m for m in models["vgg19"].modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 16


def test_resnet_structure_and_shortcuts(models):
    model = models["resnet18"]
    blocks = list(model.blocks)
    assert len(blocks) == 9
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 1 + 9 * 2 + 2  # BN after every conv, 2 projection shortcuts
    projections = {i for i, b in enumerate(blocks) if not isinstance(b.shortcut, nn.Identity)}
    assert projections == {3, 6}
    for i, (cin, cout) in {3: (16, 32), 6: (32, 64)}.items():
        block = blocks[i]
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert conv.weight.shape == (cout, cin, 1, 1)
        assert conv.stride == (2, 2) and block.conv1.stride == (2, 2)
        assert block.conv2.stride == (1, 1)
    with torch.no_grad():
        x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
        assert blocks[0](x).shape == (2, 16, 32, 32)
        x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
        assert blocks[3].shortcut(x).shape == blocks[3](x).shape == (2, 32, 16, 16)
        x = torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(0))
        assert blocks[6].shortcut(x).shape == blocks[6](x).shape == (2, 64, 8, 8)
    assert model.fc.in_features == 64


@pytest.mark.parametrize("name", CONV_MODELS)
def test_train_and_eval_modes_under_no_grad(models, name):
    model = copy.deepcopy(models[name])  # train mode updates batch-norm statistics
    x = torch.randn(2, *CIFAR, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.eval()
        first = model(x)
        assert first.shape == (2, 10) and torch.isfinite(first).all()
        assert torch.equal(first, model(x))  # eval is deterministic
        model.train()
        out = model(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert all(p.grad is None for p in model.parameters())
    model(x).sum().backward()  # and gradients reach every parameter in train mode
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_option():
    plain = build_model("conv4", seed=0, input_shape=CIFAR)
    dropped = build_model("conv4", seed=0, input_shape=CIFAR, dropout=0.5)
    # dropout adds no parameters and does not change the initialization
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, dropped.state_dict()[key])
    x = torch.randn(2, *CIFAR, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dropped.eval()
        plain.eval()
        assert torch.allclose(dropped(x), plain(x))  # dropout is off in eval mode
        dropped.train()
        torch.manual_seed(0)
        assert not torch.allclose(dropped(x), plain(x))
    assert build_model("conv2", seed=0, input_shape=CIFAR, dropout=0.0).dropout is None


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "0.5", float("nan"), True])
def test_bad_dropout_values(value):
    with pytest.raises(LotteryError, match="dropout"):
        build_model("conv2", seed=0, input_shape=CIFAR, dropout=value)


@pytest.mark.parametrize("name", ["vgg19", "resnet18"])
def test_unsupported_options(name):
    with pytest.raises(LotteryError, match="dropout"):
        build_model(name, seed=0, input_shape=CIFAR, dropout=0.5)
    with pytest.raises(LotteryError, match="width"):
        build_model(name, seed=0, input_shape=CIFAR, width=2)


def test_unsupported_options_conv():
    with pytest.raises(LotteryError, match="batch_norm"):
        build_model("conv2", seed=0, input_shape=CIFAR, batch_norm=True)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("conv2", (3, 32)),
        ("conv2", (784,)),
        ("conv6", (3, 4, 4)),
        ("vgg19", (3, 8, 8)),
        ("resnet18", (0, 32, 32)),
    ],
)
def test_bad_input_shapes(name, shape):
    with pytest.raises(LotteryError, match=name):
        build_model(name, seed=0, input_shape=shape)
