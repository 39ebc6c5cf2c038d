"""IG overlay augmentation (METHOD.md section 4) and map/image co-augmentation (section 7, defect 2)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from toolkit import ToolkitError
from toolkit.attribution import apply_ig_overlay, save_overlay_examples
from toolkit.config import OverlayConfig
from toolkit.data.augment import random_crop_flip


def _batch(b: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 32, 32, generator=g), torch.rand(b, 32, 32, generator=g) * 0.05


def _reference_overlay(x, maps, cfg, seed):
    """Per-sample transcription of METHOD.md section 4, with the same random draws as the batched version."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape[0], generator=g)
    flags = torch.rand(x.shape[0], generator=g)
    out = x.clone()
    for i in range(x.shape[0]):
        s = math.exp(math.log(cfg.exponent_min) + float(u[i]) * (math.log(cfg.exponent_max) - math.log(cfg.exponent_min)))
        m = maps[i].double() ** s
        m = (m - m.min()) / (m.max() - m.min())
        m = m.float().unsqueeze(0).repeat(3, 1, 1)
        if flags[i] < cfg.prob:
            out[i] = (1 - cfg.weight) * x[i] + cfg.weight * m
    return out, flags < cfg.prob


def test_overlay_matches_per_sample_formula():
    x, maps = _batch(32)
    cfg = OverlayConfig(prob=0.5, weight=0.5, exponent_min=1.0, exponent_max=2.0)
    out, applied = apply_ig_overlay(x, maps, cfg, torch.Generator().manual_seed(7))
    ref, ref_applied = _reference_overlay(x, maps, cfg, 7)
    assert torch.equal(applied, ref_applied)
    assert 0 < int(applied.sum()) < 32
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out[~applied], x[~applied])
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("weight,lo,hi", [(0.3, 0.5, 3.0), (1.0, 2.0, 2.0)])
def test_overlay_other_settings_match_formula(weight, lo, hi):
    x, maps = _batch(8)
    cfg = OverlayConfig(prob=1.0, weight=weight, exponent_min=lo, exponent_max=hi)
    out, applied = apply_ig_overlay(x, maps, cfg, torch.Generator().manual_seed(3))
    ref, _ = _reference_overlay(x, maps, cfg, 3)
    assert bool(applied.all())
    assert torch.allclose(out, ref, atol=1e-5)


def test_prob_edges_and_seed_reproducibility():
    x, maps = _batch(64)
    out0, applied0 = apply_ig_overlay(x, maps, OverlayConfig(prob=0.0), torch.Generator().manual_seed(0))
    assert not bool(applied0.any()) and torch.equal(out0, x)
    out1, applied1 = apply_ig_overlay(x, maps, OverlayConfig(prob=1.0), torch.Generator().manual_seed(0))
    assert bool(applied1.all()) and not torch.equal(out1, x)
    # blended images stay in [0, 1]; each map's maximum pixel gets (1 - w) * x + w, its minimum (1 - w) * x
    assert float(out1.min()) >= 0.0 and float(out1.max()) <= 1.0
    w = OverlayConfig().weight
    rows = torch.arange(64)
    hi, lo = maps.flatten(1).argmax(1), maps.flatten(1).argmin(1)
    flat_x, flat_out = x.flatten(2), out1.flatten(2)  # (B, 3, H*W)
    assert torch.allclose(flat_out[rows, :, hi], (1 - w) * flat_x[rows, :, hi] + w, atol=1e-6)
    assert torch.allclose(flat_out[rows, :, lo], (1 - w) * flat_x[rows, :, lo], atol=1e-6)
    a, fa = apply_ig_overlay(x, maps, OverlayConfig(prob=0.3), torch.Generator().manual_seed(5))
    b, fb = apply_ig_overlay(x, maps, OverlayConfig(prob=0.3), torch.Generator().manual_seed(5))
    _, fc = apply_ig_overlay(x, maps, OverlayConfig(prob=0.3), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert not torch.equal(fa, fc)


def test_constant_map_and_low_precision_inputs():
    x, maps = _batch(4)
    maps[0] = 0.25  # max == min: overlay adds nothing but (1 - w) * x, no NaN
    maps[1] = 0.0
    out, _ = apply_ig_overlay(x, maps.half(), OverlayConfig(prob=1.0, weight=0.5), torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], 0.5 * x[0]) and torch.allclose(out[1], 0.5 * x[1])
    xb = x.to(torch.bfloat16)
    outb, _ = apply_ig_overlay(xb, maps.bfloat16(), OverlayConfig(prob=1.0), torch.Generator().manual_seed(0))
    assert outb.dtype == torch.bfloat16 and outb.shape == xb.shape
    # the same blend as in float32 on the same (bf16-rounded) inputs, to bf16 precision
    ref, _ = apply_ig_overlay(xb.float(), maps.bfloat16().float(), OverlayConfig(prob=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(outb.float(), ref, atol=1e-2)


def test_bad_shapes_are_refused():
    x, maps = _batch(4)
    with pytest.raises(ToolkitError, match="same B"):
        apply_ig_overlay(x, maps[:3], OverlayConfig(), torch.Generator())


def test_map_is_cropped_and_flipped_with_its_image():
    """A marker pixel at the same place in image and map ends at the same place after the shared crop/flip."""
    b = 256
    g = torch.Generator().manual_seed(11)
    rows = torch.randint(0, 32, (b,), generator=g)
    cols = torch.randint(0, 32, (b,), generator=g)
    x = torch.zeros(b, 3, 32, 32)
    maps = torch.zeros(b, 32, 32, dtype=torch.float16)
    idx = torch.arange(b)
    x[idx, :, rows, cols] = 1.0
    maps[idx, rows, cols] = 1.0
    x_aug, (m_aug,) = random_crop_flip(x, torch.Generator().manual_seed(0), 4, extra=[maps])
    assert m_aug.shape == maps.shape and m_aug.dtype == maps.dtype
    assert torch.equal(x_aug[:, 0] > 0, m_aug > 0)
    assert torch.equal(x_aug[:, 0], x_aug[:, 2])
    kept = (m_aug > 0).flatten(1).any(1)
    moved = ~(m_aug.float() == maps.float()).flatten(1).all(1)
    assert int(kept.sum()) > b // 2 and bool(moved[kept].any())  # most markers survive the crop, and some moved
    # the overlay then adds the map where the image's marker is
    out, _ = apply_ig_overlay(x_aug, m_aug, OverlayConfig(prob=1.0, weight=0.5), torch.Generator().manual_seed(0))
    hit = (out[:, 0] == 1.0)
    assert torch.equal(hit[kept], (x_aug[:, 0] > 0)[kept])


def test_save_overlay_examples_writes_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(5, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    maps = torch.rand(5, 32, 32, generator=g).half()
    path = tmp_path / "figs" / "overlay_examples.png"
    save_overlay_examples(images, maps, OverlayConfig(prob=0.1), path, seed=1)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert not list(path.parent.glob(".*tmp"))
    with pytest.raises(ToolkitError):
        save_overlay_examples(images.float(), maps, OverlayConfig(), path)
