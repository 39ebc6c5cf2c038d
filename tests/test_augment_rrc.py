"""Random resized crop + flip (batched, co-applied to IG maps) and the augmentation policy (AugmentSpec)."""

from __future__ import annotations

import pytest
import torch

from toolkit import ToolkitError
from toolkit.data.augment import (AugmentSpec, augment_batch, crop_theta, random_crop_flip, random_resized_crop_flip,
                                  resolve_augment, sample_resized_crop)


def smooth_images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(b, 3, 6, 6, generator=g), size=size, mode="bilinear")


@pytest.mark.parametrize("size", [96, 64])
def test_maps_get_the_same_crop_and_flip_as_the_image(size):
    x = smooth_images(16, size)
    g = torch.Generator().manual_seed(1)
    out, (m3, m4) = random_resized_crop_flip(x, g, extra=[x[:, 1].clone(), x[:, :2].clone()])
    assert out.shape == x.shape and m3.shape == (16, size, size) and m4.shape == (16, 2, size, size)
    torch.testing.assert_close(m3, out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(m4, out[:, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(out, x, atol=1e-3)  # something happened


def test_crops_and_flips_differ_per_sample_and_are_seeded():
    x = smooth_images(1, 96).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    out, _ = random_resized_crop_flip(x, torch.Generator().manual_seed(5))
    again, _ = random_resized_crop_flip(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    distinct = {tuple(o.flatten()[::997].tolist()) for o in out}
    assert len(distinct) == 32
    top, left, h, w, flip = sample_resized_crop(256, torch.Generator().manual_seed(5))
    assert 0.2 < flip.float().mean() < 0.8 and len(set(h.tolist())) == 256
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 1 + 1e-12) & (left + w <= 1 + 1e-12)).all())
    area = h * w
    assert bool((area >= 0.25 - 1e-9).all()) and bool((area <= 1 + 1e-9).all())
    ratio = w / h  # square image: box aspect in pixels
    assert bool((((ratio > 3 / 4 - 1e-9) & (ratio < 4 / 3 + 1e-9)) | ((h == 1) & (w == 1))).all())


def test_box_geometry_is_exact():
    """A box of the left half, no flip, on an image whose value is its column index: known bilinear values."""
    size = 48
    x = torch.arange(size, dtype=torch.float32).expand(1, 3, size, size).contiguous()
    one = torch.ones(1, dtype=torch.float64)
    theta = crop_theta(0 * one, 0 * one, one, 0.5 * one, torch.zeros(1, dtype=torch.bool))
    grid = torch.nn.functional.affine_grid(theta.float(), [1, 3, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    expect = (0.5 * torch.arange(size) - 0.25).clamp(min=0)
    torch.testing.assert_close(out[0, 0, 7], expect, atol=1e-4, rtol=0)
    flipped = crop_theta(0 * one, 0 * one, one, 0.5 * one, torch.ones(1, dtype=torch.bool))
    grid = torch.nn.functional.affine_grid(flipped.float(), [1, 3, size, size], align_corners=False)
    out_f = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(out_f, out.flip(-1), atol=1e-4, rtol=0)


def test_whole_image_box_is_identity_or_mirror():
    x = smooth_images(8, 80)
    out, _ = random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for o, xi in zip(out, x):
        assert torch.allclose(o, xi, atol=1e-5) or torch.allclose(o, xi.flip(-1), atol=1e-5)


def test_padcrop_at_32_is_todays_random_crop_flip():
    x = torch.rand(64, 3, 32, 32)
    maps = [torch.rand(64, 32, 32)]
    spec = resolve_augment("auto", 32, None, 0.25)
    assert spec == AugmentSpec("padcrop", 4, 0.25)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, (am,) = augment_batch(x, g1, spec, extra=maps)
    b, (bm,) = random_crop_flip(x, g2, 4, extra=maps)
    assert torch.equal(a, b) and torch.equal(am, bm)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))  # same number of draws


def test_resolve_and_dispatch():
    assert resolve_augment("auto", 64, None, 0.3) == AugmentSpec("padcrop", 8, 0.3)
    assert resolve_augment("auto", 96, None, 0.3) == AugmentSpec("rrc", 12, 0.3)
    assert resolve_augment("padcrop", 224, 0, 0.25).padding == 0
    assert resolve_augment("rrc", 32, None, 1).scale_min == 1.0
    x, m = torch.rand(4, 3, 96, 96), torch.rand(4, 96, 96)
    y, (ym,) = augment_batch(x, torch.Generator().manual_seed(0), resolve_augment("none", 96), extra=[m])
    assert y is x and ym is m
    y, (ym,) = augment_batch(x, torch.Generator().manual_seed(0), resolve_augment("auto", 96), extra=[m])
    z, (zm,) = random_resized_crop_flip(x, torch.Generator().manual_seed(0), (0.25, 1.0), extra=[m])
    assert torch.equal(y, z) and torch.equal(ym, zm)
    for args, match in [(("blur", 96), "data.augment must be"), (("auto", 96, -1), "data.padding"),
                        (("auto", 96, None, 0.0), "rrc_scale_min")]:
        with pytest.raises(ToolkitError, match=match):
            resolve_augment(*args)
    with pytest.raises(ToolkitError, match="float tensors"):
        random_resized_crop_flip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator())
