"""The training loop shared by teacher fine-tuning and student distillation.

Parts: :mod:`toolkit.distill.batches` makes each epoch's augmented batches; here :func:`train_model` places the
models, resumes from ``<role>.ckpt`` (:func:`load_resume_state`, tensors and plain data only), runs epochs
(:func:`train_epoch`), checkpoints every epoch atomically (:func:`save_resume_state`) and evaluates at the end
(:func:`finish_training`). Autocast (bf16 on CPU, AMP on CUDA), channels_last, a per-step LR schedule, bit-exact resume
on CPU, DDP when launched with torchrun. Randomness comes from generators derived from (seed, epoch, stream).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from toolkit import ToolkitError
from toolkit.config import LossConfig, OptimConfig, OverlayConfig
from toolkit.data.cifar10 import ImageSet
from toolkit.device import autocast
from toolkit.distill.batches import dropout_seed, epoch_batches, steps_per_epoch
from toolkit.distill.compile import CompiledOrEager, check_mode, compile_wanted
from toolkit.distill.distiller import Distiller
from toolkit.distributed import DistInfo, all_reduce_sum, barrier, broadcast_state, current
from toolkit.evaluate import accuracy, predict_logits
from toolkit.io import append_jsonl
from toolkit.models.checkpoint import atomic_torch_save, read_checkpoint, save_checkpoint
from toolkit.models.profile import count_params


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
    augment: Any = 4
    """Crop/flip policy: a ``toolkit.data.augment.AugmentSpec``, or the padding of CIFAR's pad-and-crop."""
    compile: str = "off"
    """``off``/``auto``/``on``: torch.compile of the model called in the training step (``toolkit.distill.compile``;
    eager fallback with one warning line). Not applied with attention transfer or under DDP."""


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


FUSED_SGD_DEVICES = ("cpu", "cuda")
"""Device types where SGD runs its fused kernel: it gives the same weights bit for bit as the per-parameter loop
(tests/test_compile_switch.py) in one pass over all parameters. Adam keeps its loop: fused Adam differs by ~1e-6."""


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    fused = bool(params) and all(p.device.type in FUSED_SGD_DEVICES and p.dtype.is_floating_point for p in params)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=True,
                           **({"fused": True} if fused else {}))


def _evaluate(model: nn.Module, images: ImageSet, job: TrainJob, precision: str) -> float:
    logits = predict_logits(model, images.images, device=job.device, precision=precision, channels_last=job.channels_last)
    return accuracy(logits, images.labels)


@dataclass
class TrainState:
    """What an epoch checkpoint holds besides the weights: optimizer, schedule, scaler, progress."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0
    history: list = field(default_factory=list)
    seconds: float = 0.0


def place_models(job: TrainJob, dist_info: DistInfo) -> tuple[nn.Module, nn.Module]:
    """Move student (and teacher) to the device and memory format; returns (model, the model to call: DDP-wrapped
    under torchrun)."""
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
    if dist_info.enabled:
        ids = [job.device.index] if job.device.type == "cuda" else None
        if compile_wanted(job.compile, job.device) and dist_info.is_main:
            print(f"note: compile={job.compile} is not applied under DDP; training {job.role} eager", flush=True)
        return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_wanted(job.compile, job.device):
        if job.use_at:
            print(f"note: compile={job.compile} is not applied with attention transfer (feature hooks); training "
                  f"{job.role} eager", flush=True)
        else:
            return model, CompiledOrEager(model, job.role, dynamic=False)
    return model, model


def load_resume_state(ckpt_path: Path, job: TrainJob, model: nn.Module, state: TrainState) -> None:
    """Restore ``model`` and ``state`` from an epoch checkpoint of this job (same fingerprint).

    Loaded with ``weights_only=True``: a checkpoint holding anything but tensors and plain data (a pickled object from
    a run folder copied from elsewhere) is refused, not executed."""
    try:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: refuse, never fall back to full unpickling
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"{ckpt_path} is not a plain-data training checkpoint (refused: {first[:160]}); "
                           "move it aside to restart this stage") from None
    if not isinstance(saved, dict) or saved.get("fingerprint") != job.fingerprint:
        raise ToolkitError(f"{ckpt_path} belongs to a run with other settings (fingerprint differs); "
                           "rerun with --fresh (make: RESUME=0) or choose another run name")
    model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.epoch, state.history, state.seconds = saved["epoch"], saved["history"], saved.get("seconds", 0.0)


def save_resume_state(ckpt_path: Path, job: TrainJob, model: nn.Module, state: TrainState) -> None:
    atomic_torch_save({"fingerprint": job.fingerprint, "epoch": state.epoch, "model": model.state_dict(),
                       "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                       "scaler": state.scaler.state_dict(), "history": state.history, "seconds": state.seconds},
                      ckpt_path)


def train_epoch(job: TrainJob, epoch: int, distiller: Distiller, state: TrainState, dist_info: DistInfo,
                steps: int) -> dict:
    """One epoch of optimizer steps; returns its metrics record (loss terms are epoch means over images: ``losses``
    weighted as summed into the total, ``losses_unweighted`` divided by each term's weight)."""
    t0 = time.perf_counter()
    distiller.train()
    global_batch = job.optim.batch_size * dist_info.world_size
    sums = torch.zeros(4, dtype=torch.float64)  # loss * n, correct, seen, overlaid
    names = list(distiller.weights)
    part_sums = torch.zeros(len(names), dtype=torch.float64)
    bar = tqdm(total=steps, desc=f"{job.role} {epoch + 1}/{job.optim.epochs}", unit="step",
               disable=not (job.progress and dist_info.is_main), leave=False, dynamic_ncols=True)
    postfix_every = max(1, min(10, (steps or 0) // 20))  # ~20 updates on short epochs, every 10 steps on long ones
    batches = epoch_batches(job.train, global_batch, job.seed, epoch, job.augment, job.ig_maps, job.overlay, job.teacher_logits,
                            job.optim.max_steps)
    for step, batch in enumerate(batches):
        batch = batch.share(dist_info.rank, dist_info.world_size)
        x = batch.x.to(job.device, non_blocking=True)
        if job.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.y.to(job.device, non_blocking=True)
        t_logits = batch.teacher_logits.to(job.device) if batch.teacher_logits is not None else None
        with autocast(job.device, job.precision):
            logits, parts = distiller.forward_train(x, y, t_logits)
        loss = sum(parts.values())
        if not torch.isfinite(loss.detach()).item():
            figures = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
            raise ToolkitError(f"non-finite loss in {job.role} at epoch {epoch + 1}, step {step + 1} ({figures}); "
                               "lower the learning rate or use precision=fp32")
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        n = len(y)
        sums += torch.tensor([float(loss.detach()) * n, float((logits.argmax(1) == y).sum()), n,
                              float(batch.overlaid.sum())], dtype=torch.float64)
        part_sums += torch.tensor([float(parts[k].detach()) * n for k in names], dtype=torch.float64)
        bar.update(1)
        if step % postfix_every == 0 or step + 1 == steps:
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}")
    bar.close()
    totals = all_reduce_sum(torch.cat([sums, part_sums]))
    sums, part_sums = totals[:4], totals[4:]
    seconds = time.perf_counter() - t0
    seen = float(sums[2])
    weighted = {k: float(part_sums[i]) / seen for i, k in enumerate(names)}
    weights = distiller.weights
    return {
        "stage": job.role, "epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": float(sums[0]) / seen, "train_acc": float(100 * sums[1]) / seen,
        "overlay_fraction": float(sums[3]) / seen,
        "losses": weighted,
        "losses_unweighted": {k: (v / weights[k] if weights[k] else None) for k, v in weighted.items()},
        "loss_weights": weights,
        "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1),
    }


def finish_training(job: TrainJob, model: nn.Module, state: TrainState, final_path: Path, ckpt_path: Path,
                    dist_info: DistInfo) -> dict:
    """Evaluate the last epoch on the test set (fp32), write ``<role>.pt`` and drop the epoch checkpoint."""
    history = state.history
    last = history[-1] if history else {}
    result = {
        "name": job.model_name,
        "params": count_params(model),
        "train_size": len(job.train),
        "val_acc": last.get("val_acc"),
        "test_acc": _evaluate(model, job.test, job, "fp32"),
        "epochs": job.optim.epochs,
        "seconds": round(state.seconds, 1),
        "loss_terms": {"weighted": last.get("losses"), "unweighted": last.get("losses_unweighted"),
                       "weights": last.get("loss_weights"), "epoch": last.get("epoch")},
        "history": history,
        "finished": True,
    }
    if dist_info.is_main:
        save_checkpoint(model, job.model_name, final_path, {"fingerprint": job.fingerprint, "result": result, **job.extra_meta})
        ckpt_path.unlink(missing_ok=True)
    barrier()
    return result


def train_model(job: TrainJob, max_epochs_this_call: int | None = None) -> dict:
    """Train ``job.model`` for ``job.optim.epochs`` epochs, resuming from ``out_dir/<role>.ckpt`` when it matches.

    Returns the result: name, params, train_size, val_acc, test_acc (fp32, last epoch), epochs, seconds,
    loss_terms (last epoch's mean of each loss term), history. A finished stage (``<role>.pt`` with the same
    fingerprint) is not retrained. ``max_epochs_this_call`` stops early after that many epochs (time-sliced jobs);
    call again to continue.
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
                           "rerun with --fresh (make: RESUME=0) or choose another run name")

    check_mode(job.compile)
    model, call_model = place_models(job, dist_info)
    optimizer = make_optimizer(model.parameters(), job.optim)
    steps = steps_per_epoch(len(job.train), job.optim.batch_size * dist_info.world_size, job.optim.max_steps)
    total_steps = steps * job.optim.epochs
    state = TrainState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(job.optim.schedule, s, total_steps)),
                       torch.amp.GradScaler(job.device.type, enabled=job.precision == "fp16"))
    if ckpt_path.is_file():
        load_resume_state(ckpt_path, job, model, state)

    rng_devices = [job.device.index or 0] if job.device.type == "cuda" else []
    epochs_run = 0
    with Distiller(call_model, job.teacher, job.loss, job.use_kd, job.use_at, job.at_layers) as distiller:
        for epoch in range(state.epoch, job.optim.epochs):
            if max_epochs_this_call is not None and epochs_run >= max_epochs_this_call:
                break
            with torch.random.fork_rng(devices=rng_devices):  # dropout: its own stream, global state restored after
                torch.manual_seed(dropout_seed(job.seed, epoch))
                record = train_epoch(job, epoch, distiller, state, dist_info, steps)
            state.seconds += record["seconds"]
            if job.val is not None and len(job.val):
                record["val_acc"] = _evaluate(model, job.val, job, job.precision)
            state.history.append(record)
            state.epoch = epoch + 1
            if dist_info.is_main:
                save_resume_state(ckpt_path, job, model, state)
                if job.metrics_path is not None:
                    append_jsonl(job.metrics_path, record)
                if job.progress:
                    val = f", val {record['val_acc']:.2f}%" if "val_acc" in record else ""
                    terms = ", ".join(f"{k} {v:.4g}" for k, v in record["losses"].items())
                    tqdm.write(f"[{job.role}] epoch {epoch + 1}/{job.optim.epochs}: loss {record['train_loss']:.4f} "
                               f"({terms}), train {record['train_acc']:.2f}%{val}, {record['images_per_s']:.0f} img/s")
            barrier()
            epochs_run += 1

    broadcast_state(model)  # every rank leaves with rank 0's weights and BatchNorm statistics
    if len(state.history) < job.optim.epochs:
        return {"name": job.model_name, "finished": False, "epochs": len(state.history), "history": state.history}
    return finish_training(job, model, state, final_path, ckpt_path, dist_info)
