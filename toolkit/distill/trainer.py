"""The training loop shared by teacher fine-tuning and student distillation.

In-memory uint8 batches, batched crop/flip (co-applied to IG maps), IG overlay, autocast (bf16 on CPU, AMP on
CUDA), channels_last, a per-step LR schedule, a checkpoint every epoch (atomic), bit-exact resume on CPU, DDP when
launched with torchrun. All randomness comes from generators derived from (seed, epoch), never global state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit import ToolkitError
from toolkit.config import LossConfig, OptimConfig, OverlayConfig
from toolkit.data.augment import random_crop_flip, to_float
from toolkit.data.batches import epoch_generator, index_batches, num_batches
from toolkit.data.cifar10 import ImageSet
from toolkit.device import autocast
from toolkit.distill.distiller import Distiller
from toolkit.distributed import all_reduce_sum, barrier, broadcast_state, current
from toolkit.evaluate import accuracy, predict_logits
from toolkit.io import append_jsonl
from toolkit.models.checkpoint import atomic_torch_save, read_checkpoint, save_checkpoint
from toolkit.models.profile import count_params

STREAM_ORDER, STREAM_AUGMENT = 0, 1


@dataclass
class TrainJob:
    """Everything one training stage needs. ``ig_maps`` and ``teacher_logits`` rows align with ``train`` rows."""

    role: str
    """student, baseline or teacher: names the files ``<role>.ckpt`` / ``<role>.pt`` in ``out_dir``."""
    model_name: str
    model: nn.Module
    optim: OptimConfig
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    out_dir: Path
    fingerprint: str
    seed: int
    device: torch.device
    precision: str = "bf16"
    channels_last: bool = True
    teacher: nn.Module | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    use_kd: bool = False
    use_at: bool = False
    at_layers: tuple[str, ...] = ()
    ig_maps: torch.Tensor | None = None
    overlay: OverlayConfig | None = None
    teacher_logits: torch.Tensor | None = None
    progress: bool = True
    metrics_path: Path | None = None
    extra_meta: dict = field(default_factory=dict)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base LR at ``step`` of ``total``: constant, cosine, or one-cycle (15% warm-up, cosine down)."""
    if schedule == "constant" or total <= 1:
        return 1.0
    progress = min(step / (total - 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    warm = 0.15
    if progress < warm:
        return 0.04 + 0.96 * progress / warm
    return 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm))) * (1 - 1e-4) + 1e-4


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=True)


def _steps_per_epoch(job: TrainJob, world: int) -> int:
    global_batch = job.optim.batch_size * world
    drop_last = len(job.train) > global_batch
    steps = num_batches(len(job.train), global_batch, drop_last)
    return min(steps, job.optim.max_steps) if job.optim.max_steps else steps


def _evaluate(model: nn.Module, images: ImageSet, job: TrainJob, precision: str) -> float:
    logits = predict_logits(model, images.images, device=job.device, precision=precision, channels_last=job.channels_last)
    return accuracy(logits, images.labels)


def train_model(job: TrainJob, max_epochs_this_call: int | None = None) -> dict:
    """Train ``job.model`` for ``job.optim.epochs`` epochs, resuming from ``out_dir/<role>.ckpt`` when it matches.

    Returns the result: name, params, train_size, val_acc, test_acc (fp32, last epoch), epochs, seconds, history.
    A finished stage (``<role>.pt`` with the same fingerprint) is not retrained. ``max_epochs_this_call`` stops
    early after that many epochs (time-sliced jobs); call again to continue.
    """
    dist_info = current()
    out_dir = Path(job.out_dir)
    final_path, ckpt_path = out_dir / f"{job.role}.pt", out_dir / f"{job.role}.ckpt"
    if final_path.is_file():
        done = read_checkpoint(final_path)
        if done["meta"].get("fingerprint") == job.fingerprint and "result" in done["meta"]:
            job.model.load_state_dict(done["state_dict"])
            return done["meta"]["result"]
        raise ToolkitError(f"{final_path} was trained with other settings (fingerprint differs); "
                           "rerun with --fresh or choose another run name")

    model = job.model.to(job.device)
    if job.device.type == "cpu" and job.precision == "bf16":
        from toolkit.attribution.ig import use_fp32_strided_depthwise

        use_fp32_strided_depthwise(model)  # bf16 gradients of strided depthwise convs are ~20x slower on CPU
    if job.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if job.teacher is not None:
        job.teacher.to(job.device)
        if job.channels_last:
            job.teacher.to(memory_format=torch.channels_last)
    ddp_model: nn.Module = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[job.device.index] if job.device.type == "cuda" else None)
    distiller = Distiller(ddp_model, job.teacher, job.loss, job.use_kd, job.use_at, job.at_layers)
    optimizer = make_optimizer(model.parameters(), job.optim)
    steps_per_epoch = _steps_per_epoch(job, dist_info.world_size)
    total_steps = steps_per_epoch * job.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(job.optim.schedule, s, total_steps))
    scaler = torch.amp.GradScaler(job.device.type, enabled=job.precision == "fp16")

    start_epoch, history, elapsed = 0, [], 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != job.fingerprint:
            raise ToolkitError(f"{ckpt_path} belongs to a run with other settings (fingerprint differs); "
                               "rerun with --fresh or choose another run name")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state.get("seconds", 0.0)

    use_overlay = job.ig_maps is not None and job.overlay is not None and job.overlay.prob > 0
    epochs_run = 0
    for epoch in range(start_epoch, job.optim.epochs):
        if max_epochs_this_call is not None and epochs_run >= max_epochs_this_call:
            break
        t0 = time.perf_counter()
        distiller.train()
        order_gen = epoch_generator(job.seed, epoch, STREAM_ORDER)
        aug_gen = epoch_generator(job.seed, epoch, STREAM_AUGMENT)
        global_batch = job.optim.batch_size * dist_info.world_size
        batches = index_batches(len(job.train), global_batch, order_gen, drop_last=len(job.train) > global_batch)
        sums = torch.zeros(4, dtype=torch.float64)  # loss, correct, seen, overlaid
        part_sums: dict[str, float] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"{job.role} {epoch + 1}/{job.optim.epochs}", unit="step",
                   disable=not (job.progress and dist_info.is_main), leave=False, dynamic_ncols=True)
        for step, global_idx in enumerate(batches):
            if step >= steps_per_epoch:
                break
            # Draw augmentation for the whole global batch so every rank sees the same draws, then take this rank's share.
            x = to_float(job.train.images[global_idx])
            y = job.train.labels[global_idx]
            maps = [job.ig_maps[global_idx].float()] if use_overlay else []
            x, maps = random_crop_flip(x, aug_gen, 4, extra=maps)
            applied = torch.zeros(len(global_idx), dtype=torch.bool)
            if use_overlay:
                from toolkit.attribution.overlay import apply_ig_overlay

                x, applied = apply_ig_overlay(x, maps[0], job.overlay, aug_gen)
            t_logits = job.teacher_logits[global_idx] if job.teacher_logits is not None else None
            if dist_info.enabled:
                share = slice(dist_info.rank, None, dist_info.world_size)
                x, y, applied = x[share], y[share], applied[share]
                t_logits = t_logits[share] if t_logits is not None else None
            x = x.to(job.device, non_blocking=True)
            if job.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(job.device, non_blocking=True)
            if t_logits is not None:
                t_logits = t_logits.to(job.device)
            with autocast(job.device, job.precision):
                logits, parts = distiller.forward_train(x, y, t_logits)
            loss = sum(parts.values())
            if not torch.isfinite(loss.detach()).item():
                figures = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
                raise ToolkitError(f"non-finite loss in {job.role} at epoch {epoch + 1}, step {step + 1} ({figures}); "
                                   "lower the learning rate or use precision=fp32")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = len(y)
            sums += torch.tensor([float(loss.detach()) * n, float((logits.argmax(1) == y).sum()), n, float(applied.sum())], dtype=torch.float64)
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + float(v.detach()) * n
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}")
        bar.close()
        sums = all_reduce_sum(sums)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        record = {
            "stage": job.role, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / sums[2]), "train_acc": float(100 * sums[1] / sums[2]),
            "overlay_fraction": float(sums[3] / sums[2]),
            "losses": {k: v / float(sums[2]) * dist_info.world_size for k, v in part_sums.items()},
            "seconds": round(seconds, 2), "images_per_s": round(float(sums[2]) / seconds, 1),
        }
        if job.val is not None and len(job.val):
            record["val_acc"] = _evaluate(model, job.val, job, job.precision)
        history.append(record)
        if dist_info.is_main:
            atomic_torch_save({"fingerprint": job.fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "scaler": scaler.state_dict(), "history": history, "seconds": elapsed}, ckpt_path)
            if job.metrics_path is not None:
                append_jsonl(job.metrics_path, record)
            if job.progress:
                val = f", val {record['val_acc']:.2f}%" if "val_acc" in record else ""
                tqdm.write(f"[{job.role}] epoch {epoch + 1}/{job.optim.epochs}: loss {record['train_loss']:.4f}, "
                           f"train {record['train_acc']:.2f}%{val}, {record['images_per_s']:.0f} img/s")
        barrier()
        epochs_run += 1

    broadcast_state(model)  # every rank leaves with rank 0's weights and BatchNorm statistics
    if len(history) < job.optim.epochs:
        return {"name": job.model_name, "finished": False, "epochs": len(history), "history": history}
    result = {
        "name": job.model_name,
        "params": count_params(model),
        "train_size": len(job.train),
        "val_acc": history[-1].get("val_acc") if history else None,
        "test_acc": _evaluate(model, job.test, job, "fp32"),
        "epochs": job.optim.epochs,
        "seconds": round(elapsed, 1),
        "history": history,
        "finished": True,
    }
    if dist_info.is_main:
        save_checkpoint(model, job.model_name, final_path, {"fingerprint": job.fingerprint, "result": result, **job.extra_meta})
        ckpt_path.unlink(missing_ok=True)
    barrier()
    return result
