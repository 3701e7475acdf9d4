"""augment_batch: random crop with zero padding and random horizontal flip."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from lottery_ticket.data import augment_batch


def candidates(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every output augment_batch may produce for one [C, H, W] image, by brute force."""
    _, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    results = []
    for dy, dx, flip in itertools.product(range(2 * padding + 1), range(2 * padding + 1), (0, 1)):
        crop = padded[:, dy : dy + h, dx : dx + w]
        results.append(crop.flip(-1) if flip else crop)
    return results


def batch(n=16, c=3, h=8, w=8, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_determinism():
    x = batch()
    a, b = augment_batch(x, seed=5), augment_batch(x, seed=5)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, seed=6))
    assert torch.equal(x, batch())  # the input is not modified


def test_every_output_is_a_padded_crop_possibly_flipped():
    x = batch(n=32, h=6, w=5)
    out = augment_batch(x, seed=1, padding=2)
    for image, result in zip(x, out, strict=True):
        assert any(torch.equal(result, c) for c in candidates(image, 2))


def test_hand_made_flip_and_crop():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # no padding: only the identity or the mirror image
    outputs = {tuple(augment_batch(x, seed=s, padding=0).flatten().tolist()) for s in range(40)}
    assert outputs == {(1.0, 2.0, 3.0, 4.0), (2.0, 1.0, 4.0, 3.0)}
    # padding 1 on a 2x2 image: all 9 windows x 2 flips are reachable, zeros come from padding
    outputs = {tuple(augment_batch(x, seed=s, padding=1).flatten().tolist()) for s in range(400)}
    expected = {tuple(c.flatten().tolist()) for c in candidates(x[0], 1)}
    assert outputs == expected
    assert (0.0, 0.0, 0.0, 1.0) in outputs  # shifted down-right: the image's corner pixel
    assert (0.0, 0.0, 1.0, 0.0) in outputs  # the same window, mirrored


def test_images_in_a_batch_get_independent_draws():
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = augment_batch(x, seed=0)
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) > 20
    flipped = sum(
        any(torch.equal(o, c) for c in candidates(x[0], 4)[1::2]) for o in out
    )  # odd candidates are the flipped ones
    assert 10 < flipped < 54


def test_channels_share_the_same_crop():
    x = batch(n=8, c=1).repeat(1, 3, 1, 1)
    out = augment_batch(x, seed=2)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_empty_batch_and_bad_input():
    assert augment_batch(torch.zeros(0, 3, 4, 4), seed=0).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        augment_batch(torch.zeros(3, 4, 4), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = batch(n=64)
    on_gpu = augment_batch(x.cuda(), seed=9)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), augment_batch(x, seed=9))
