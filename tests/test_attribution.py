"""IG maps against captum, the sample-index-keyed cache (alignment, refusal, resume) and precision effects."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
from captum.attr import IntegratedGradients

import toolkit.attribution.cache as cache_mod
from toolkit import ToolkitError
from toolkit.attribution import (apply_ig_overlay, choose_ig_rows, compute_ig_maps, ig_fingerprint, load_or_compute_ig_maps,
                                 read_ig_cache)
from toolkit.attribution.ig import CPU_ROWS_CANDIDATES, DEFAULT_MAX_ROWS, MIN_BATCHES_TO_TIME
from toolkit.config import IGConfig, OverlayConfig
from toolkit.data import make_synthetic
from builders import bn_perturbed_model

from conftest import RESNET_CHECKPOINTS, requires_shared_checkpoints, requires_shared_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train_per_class=4, n_test_per_class=1, seed=3)


def _captum_maps(model, images_uint8, targets, baseline="mean", steps=50, method="gausslegendre"):
    x = images_uint8.float() / 255.0
    base = model.normalize.mean.expand_as(x) if baseline == "mean" else torch.zeros_like(x)
    ig = IntegratedGradients(model.eval())
    attr = ig.attribute(x, baselines=base, target=targets, n_steps=steps, method=method, internal_batch_size=64)
    return attr.abs().sum(1)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.slow
def test_maps_match_captum_fp32(data):
    model = bn_perturbed_model()
    images, labels = data.train.images[:5], data.train.labels[:5]
    ref = _captum_maps(model, images, labels)
    cfg = IGConfig(batch_size=4)
    plain = compute_ig_maps(model, images, labels, cfg, CPU, "fp32", progress=False, fuse_bn=False, channels_last=False)
    fast = compute_ig_maps(model, images, labels, cfg, CPU, "fp32", progress=False, max_rows=120)  # steps split in passes
    assert plain.shape == (5, 32, 32) and plain.dtype == torch.float32
    assert _rel(plain, ref) < 1e-5
    assert _rel(fast, ref) < 2e-3  # BatchNorm folded into the convs: same function, other rounding
    assert all(_rel(fast[i], ref[i]) < 5e-3 for i in range(5))


def test_pred_target_black_baseline_and_riemann_match_captum(data):
    model = bn_perturbed_model(1)
    images = data.train.images[10:14]
    labels = torch.zeros(4, dtype=torch.long)  # ignored by target="pred"
    preds = model(images.float() / 255.0).argmax(1)
    ref = _captum_maps(model, images, preds, baseline="black", steps=8, method="riemann_trapezoid")
    cfg = IGConfig(steps=8, method="riemann_trapezoid", baseline="black", target="pred", batch_size=3)
    ours = compute_ig_maps(model, images, labels, cfg, CPU, "fp32", progress=False, fuse_bn=False)
    assert _rel(ours, ref) < 1e-5


def test_bad_inputs_are_refused(data):
    model = bn_perturbed_model()
    images, labels = data.train.images[:2], data.train.labels[:2]
    with pytest.raises(ToolkitError, match="uint8"):
        compute_ig_maps(model, images.float(), labels, IGConfig(), CPU, "fp32", progress=False)
    with pytest.raises(ToolkitError, match="fp16"):
        compute_ig_maps(model, images, labels, IGConfig(), CPU, "fp16", progress=False)
    with pytest.raises(ToolkitError, match="ig.method"):
        compute_ig_maps(model, images, labels, IGConfig(method="simpson"), CPU, "fp32", progress=False)
    with pytest.raises(ToolkitError, match="normalize"):
        compute_ig_maps(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)), images, labels, IGConfig(),
                        CPU, "fp32", progress=False)


@pytest.mark.parametrize("name", ["resnet8", pytest.param("mobilenetv2_cifar_L13", marks=pytest.mark.slow)])
def test_bf16_maps_close_to_fp32_and_overlay_barely_moves(data, name):
    model = bn_perturbed_model(name=name)
    images, labels = data.train.images[:8], data.train.labels[:8]
    cfg = IGConfig(batch_size=8)
    fp32 = compute_ig_maps(model, images, labels, cfg, CPU, "fp32", progress=False)
    for cast in (True, False):
        bf16 = compute_ig_maps(model, images, labels, cfg, CPU, "bf16", progress=False, cast=cast)
        corr = torch.corrcoef(torch.stack([bf16.flatten(), fp32.flatten()]))[0, 1]
        assert float(corr) > 0.99 and _rel(bf16, fp32) < 0.1
        x = images.float() / 255.0
        ocfg = OverlayConfig(prob=1.0)
        a, _ = apply_ig_overlay(x, fp32, ocfg, torch.Generator().manual_seed(0))
        b, _ = apply_ig_overlay(x, bf16, ocfg, torch.Generator().manual_seed(0))
        assert float((a - b).abs().mean()) < 0.01


def test_private_teacher_copy_folds_bn_and_keeps_strided_depthwise_fp32():
    from toolkit.attribution.ig import Float32Conv2d, prepare_teacher

    teacher = bn_perturbed_model(name="mobilenetv2_cifar_L13")  # holds one stride-2 depthwise conv
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    copy = prepare_teacher(teacher, CPU, cast_dtype=torch.bfloat16, fp32_strided_depthwise=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    wrapped = [m for m in copy.modules() if isinstance(m, Float32Conv2d)]
    assert len(wrapped) == 1 and wrapped[0].stride == (2, 2) and wrapped[0].weight.dtype == torch.float32
    assert all(not p.requires_grad for p in copy.parameters())
    assert not any(getattr(m, "inplace", False) for m in copy.modules())
    # the caller's teacher is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert any(getattr(m, "inplace", False) for m in teacher.modules())
    x = torch.rand(4, 3, 32, 32)
    fp32_copy = prepare_teacher(teacher, CPU)
    with torch.no_grad():
        assert torch.allclose(fp32_copy(x.contiguous(memory_format=torch.channels_last)), teacher(x), rtol=1e-4, atol=1e-5)


def test_cache_rows_are_aligned_with_sample_index(tmp_path, data):
    """Rows follow sample_index (here a shuffled subset), each equal to captum on that very dataset image."""
    model = bn_perturbed_model()
    sample_index = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:10]
    images, labels = data.train.images[sample_index], data.train.labels[sample_index]
    cfg = IGConfig(chunk_size=4, batch_size=3, steps=16)
    maps = load_or_compute_ig_maps(tmp_path / "ig", model, "resnet8", images, labels, sample_index, "synthetic", cfg, CPU,
                                   "fp32", progress=False)
    assert maps.shape == (10, 32, 32) and maps.dtype == torch.float16
    for row in (0, 5, 9):
        i = int(sample_index[row])
        direct = _captum_maps(model, data.train.images[i : i + 1], data.train.labels[i : i + 1], steps=16)[0]
        assert _rel(maps[row], direct) < 3e-3, row
        other = int(sample_index[(row + 1) % 10])
        wrong = _captum_maps(model, data.train.images[other : other + 1], data.train.labels[other : other + 1], steps=16)[0]
        assert _rel(maps[row], wrong) > 0.1
    index, stored = read_ig_cache(tmp_path / "ig")
    assert torch.equal(index, sample_index) and torch.equal(stored, maps)
    assert sorted(p.name for p in (tmp_path / "ig").iterdir()) == ["chunk_00000.pt", "chunk_00001.pt", "chunk_00002.pt",
                                                                    "index.pt", "meta.json"]
    chunk = torch.load(tmp_path / "ig" / "chunk_00001.pt", weights_only=True)
    assert torch.equal(chunk["index"], sample_index[4:8])


def _counting(monkeypatch, fail_on_call: int | None = None) -> list[int]:
    """Count calls of the real compute_ig_maps from the cache; optionally raise on one call (an interruption)."""
    calls: list[int] = []
    real = cache_mod.compute_ig_maps

    def wrapped(*args, **kwargs):
        calls.append(args[1].shape[0])
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "compute_ig_maps", wrapped)
    return calls


def test_cache_resumes_after_interruption_and_matches_uninterrupted(tmp_path, data, monkeypatch):
    model = bn_perturbed_model()
    sample_index = torch.arange(14)
    images, labels = data.train.images[:14], data.train.labels[:14]
    cfg = IGConfig(chunk_size=4, batch_size=4, steps=16)
    args = (model, "resnet8", images, labels, sample_index, "synthetic", cfg, CPU, "fp32")
    full = load_or_compute_ig_maps(tmp_path / "full", *args, progress=False)

    calls = _counting(monkeypatch, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        load_or_compute_ig_maps(tmp_path / "run", *args, progress=False)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["chunk_00000.pt", "chunk_00001.pt", "index.pt", "meta.json"]  # no partial file left

    calls = _counting(monkeypatch)
    resumed = load_or_compute_ig_maps(tmp_path / "run", *args, progress=False)
    assert calls == [4, 2]  # only chunks 2 and 3 were computed
    assert torch.equal(resumed, full)

    (tmp_path / "run" / "chunk_00003.pt").unlink()
    calls = _counting(monkeypatch)
    assert torch.equal(load_or_compute_ig_maps(tmp_path / "run", *args, progress=False), full)
    assert calls == [2]
    calls = _counting(monkeypatch)
    assert torch.equal(load_or_compute_ig_maps(tmp_path / "run", *args, progress=False), full)
    assert calls == []  # a complete cache is read, not recomputed


def test_stale_or_foreign_cache_is_refused(tmp_path, data):
    model = bn_perturbed_model()
    sample_index = torch.arange(6)
    images, labels = data.train.images[:6], data.train.labels[:6]
    cfg = IGConfig(chunk_size=4, steps=4)
    folder = tmp_path / "ig"
    load_or_compute_ig_maps(folder, model, "resnet8", images, labels, sample_index, "synthetic", cfg, CPU, "fp32", progress=False)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    changed = bn_perturbed_model()
    with torch.no_grad():
        list(changed.parameters())[-2].view(-1)[0] += 1e-3  # one weight of the classifier
    cases = [
        (dict(teacher=changed), "teacher weights"),
        (dict(cfg=dataclasses.replace(cfg, steps=5)), r"IG settings \(steps: 4 -> 5\)"),
        (dict(sample_index=torch.tensor([0, 1, 2, 3, 4, 7])), "sample index"),
        (dict(data_description="cifar10 JPEG copy"), "data"),
        (dict(precision="bf16"), "precision"),
    ]
    for change, message in cases:
        kwargs = dict(teacher=model, teacher_name="resnet8", images=images, labels=labels, sample_index=sample_index,
                      data_description="synthetic", cfg=cfg, device=CPU, precision="fp32", progress=False)
        kwargs.update(change)
        with pytest.raises(ToolkitError, match=message) as err:
            load_or_compute_ig_maps(folder, **kwargs)
        assert "--fresh" in str(err.value) and str(folder) in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing overwritten

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ToolkitError, match="not an IG cache"):
        load_or_compute_ig_maps(foreign, model, "resnet8", images, labels, sample_index, "synthetic", cfg, CPU, "fp32", progress=False)
    (foreign / "meta.json").write_text(json.dumps({"fingerprint": "x"}))
    with pytest.raises(ToolkitError, match="not an IG cache"):
        load_or_compute_ig_maps(foreign, model, "resnet8", images, labels, sample_index, "synthetic", cfg, CPU, "fp32", progress=False)


def test_fingerprint_depends_on_what_changes_the_maps(data):
    model = bn_perturbed_model()
    idx = torch.arange(5)
    base = ig_fingerprint(model, "resnet8", idx, "synthetic", IGConfig(), "bf16")
    assert base == ig_fingerprint(bn_perturbed_model(), "resnet8", idx, "synthetic", IGConfig(batch_size=99), "bf16")
    assert base == ig_fingerprint(model, "resnet8", idx, "synthetic", IGConfig(rows=128), "bf16")  # speed only
    assert base != ig_fingerprint(model, "resnet8", idx, "synthetic", IGConfig(baseline="black"), "bf16")
    assert base != ig_fingerprint(model, "resnet8", idx.flip(0), "synthetic", IGConfig(), "bf16")
    assert base != ig_fingerprint(bn_perturbed_model(seed=5), "resnet8", idx, "synthetic", IGConfig(), "bf16")
    assert len(base) == 64


@pytest.mark.slow
def test_float16_storage_leaves_overlay_unchanged(tmp_path, data):
    """Tolerance: overlays from float16- and float32-stored maps differ by < 1e-3 (a quarter of a uint8 level)."""
    model = bn_perturbed_model()
    n = 12
    images, labels, idx = data.train.images[:n], data.train.labels[:n], torch.arange(n)
    maps32 = load_or_compute_ig_maps(tmp_path / "f32", model, "resnet8", images, labels, idx, "synthetic",
                                     IGConfig(store_dtype="float32"), CPU, "fp32", progress=False)
    maps16 = load_or_compute_ig_maps(tmp_path / "f16", model, "resnet8", images, labels, idx, "synthetic",
                                     IGConfig(store_dtype="float16"), CPU, "fp32", progress=False)
    assert maps32.dtype == torch.float32 and maps16.dtype == torch.float16
    x = images.float() / 255.0
    for s in (1.0, 2.0):
        cfg = OverlayConfig(prob=1.0, exponent_min=s, exponent_max=s)
        a, _ = apply_ig_overlay(x, maps32, cfg, torch.Generator().manual_seed(0))
        b, _ = apply_ig_overlay(x, maps16, cfg, torch.Generator().manual_seed(0))
        assert float((a - b).abs().max()) < 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, images, labels, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        maps = compute_ig_maps(bn_perturbed_model(), images, labels, IGConfig(steps=8, batch_size=2), CPU, "fp32", progress=False)
        torch.save(maps, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_shares_are_gathered_in_order(tmp_path, data):
    import torch.multiprocessing as mp

    images, labels = data.train.images[:5], data.train.labels[:5]  # 5 rows over 2 ranks: shares 3 and 2
    mp.spawn(_distributed_worker, args=(2, _free_port(), images, labels, str(tmp_path)), nprocs=2, join=True)
    single = compute_ig_maps(bn_perturbed_model(), images, labels, IGConfig(steps=8, batch_size=2), CPU, "fp32", progress=False)
    for rank in range(2):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert gathered.shape == (5, 32, 32)
        assert torch.allclose(gathered, single, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
def test_pretrained_teacher_real_images_bf16_vs_captum_fp32(cifar10):
    """On a real teacher and real (JPEG-copy) images, our bf16 maps agree with captum's fp32 maps."""
    from toolkit.models import load_model

    model = load_model("resnet20", RESNET_CHECKPOINTS["resnet20"]).eval()
    images, labels = cifar10.train.images[:8], cifar10.train.labels[:8]
    ref = _captum_maps(model, images, labels)
    ours = compute_ig_maps(model, images, labels, IGConfig(batch_size=8), CPU, "bf16", progress=False)
    corr = torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1]
    assert float(corr) > 0.99 and _rel(ours, ref) < 0.1


def test_ig_rows_auto_times_the_pass_sizes_on_a_large_job_only(tmp_path, data, capsys):
    model = bn_perturbed_model()
    cfg = IGConfig(steps=32, batch_size=2)  # 2 images x 32 steps: 32, 64 and 128 rows give 16, 32 and 32 steps a pass
    n = MIN_BATCHES_TO_TIME * cfg.batch_size
    images = data.train.images[:8].repeat(n // 8 + 1, 1, 1, 1)[:n]
    labels = data.train.labels[:8].repeat(n // 8 + 1)[:n]
    timed = choose_ig_rows(model, images, labels, cfg, CPU, "fp32")
    assert timed.how == "timed" and timed.rows in CPU_ROWS_CANDIDATES
    assert sorted(timed.seconds_per_image) == [32, 64]  # 128 rows make the same passes as 64: timed once
    assert all(t > 0 for t in timed.seconds_per_image.values())
    assert timed.seconds_per_image[timed.rows] == min(timed.seconds_per_image.values())
    assert "fastest on this machine" in timed.describe()
    small = choose_ig_rows(model, images[:n - 1], labels[:n - 1], cfg, CPU, "fp32")
    assert (small.rows, small.how, small.seconds_per_image) == (DEFAULT_MAX_ROWS["cpu"], "default", {})
    assert choose_ig_rows(model, images, labels, dataclasses.replace(cfg, rows=48), CPU, "fp32").rows == 48
    with pytest.raises(ToolkitError, match="ig.rows must be a whole number"):
        choose_ig_rows(model, images, labels, dataclasses.replace(cfg, rows=0), CPU, "fp32")
    with pytest.raises(ToolkitError, match="ig.rows must be a whole number"):
        compute_ig_maps(model, images[:2], labels[:2], dataclasses.replace(cfg, rows="fast"), CPU, "fp32", progress=False)

    # the cache times the sizes before a large computation, says which it took, and the maps match a set size's
    maps = load_or_compute_ig_maps(tmp_path / "auto", model, "resnet8", images, labels, torch.arange(n), "synthetic", cfg,
                                   CPU, "fp32", progress=False)
    assert "IG pass size:" in capsys.readouterr().out
    fixed = compute_ig_maps(model, images, labels, dataclasses.replace(cfg, rows=32), CPU, "fp32", progress=False)
    assert torch.allclose(maps.float(), fixed.to(maps.dtype).float(), rtol=1e-2, atol=1e-5)
