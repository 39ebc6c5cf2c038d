"""Quantization-aware distillation: fine-tune a trained student with int8 fake quantization against its teacher.

The path is torchao's PT2E QAT (docs/qat.md says why): ``torch.export`` the student (train mode), annotate it with
:func:`toolkit.distill.qat_quantizer.make_quantizer` (uint8 per-tensor activations, int8 per-channel symmetric
weights, conv+BN folded the QAT way by ``prepare_qat_pt2e``), then train the prepared graph with the ordinary trainer
(:func:`toolkit.distill.trainer.train_model`): same batches, augmentation, KD with the teacher online and the IG
overlay of the run's configuration, an epoch checkpoint ``<role>.ckpt`` that resumes, ``<role>.pt`` written
atomically at the end. Attention transfer is left out (the exported graph has no module paths to tap). QAT runs in
fp32 (no autocast) without channels_last. :func:`convert_qat_model` turns the result into the Q/DQ graph that
``deploy.qat`` exports to ONNX.
"""

from __future__ import annotations

import copy
import types
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from edgecommon.hashing import fingerprint, sha256_file, state_digest, tensor_digest
from toolkit import ToolkitError
from toolkit.config import CONFIGURATIONS, OptimConfig, RunConfig, canonical_configuration
from toolkit.distill.qat_quantizer import RECIPE, make_quantizer, require_torchao
from toolkit.distill.trainer import TrainJob, train_model
from toolkit.models.checkpoint import load_model, read_checkpoint

QAT_ROLE = "qat_student"
DEFAULT_EPOCHS = 3
LR_DIVISOR = 50
"""Default QAT learning rate: the student's base LR / 50 (cosine to zero over the QAT epochs)."""


def prepare_qat_model(model: nn.Module, image_size: int, example_batch: int = 4) -> torch.fx.GraphModule:
    """``model`` (float, RGB [0, 1] in) exported with a dynamic batch and prepared for QAT; ``.train()``/``.eval()``
    switch its BatchNorm, dropout and observers (:func:`_train`)."""
    require_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    model = model.float().cpu().train()
    example = (torch.rand(example_batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
            prepared = prepare_qat_pt2e(graph, make_quantizer())
    except Exception as exc:  # noqa: BLE001 - torch.export and the quantizer raise many exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ToolkitError(f"cannot prepare {type(model).__name__} for QAT (torch.export + prepare_qat_pt2e): "
                           f"{type(exc).__name__}: {first}") from None
    prepared.train = types.MethodType(_train, prepared)
    prepared.eval = types.MethodType(lambda self: self.train(False), prepared)
    return prepared


def _train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
    """``train``/``eval`` of a prepared graph: switch BatchNorm and dropout (torchao's move_exported_model_to_*) and
    the observers, so evaluation never moves the quantization ranges (val and test images stay out of them)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

    (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
    self.apply(enable_observer if mode else disable_observer)
    for module in self.modules():
        module.training = mode
    return self


def convert_qat_model(qat_model: nn.Module) -> torch.fx.GraphModule:
    """A copy of the fake-quantized model converted to quantize/dequantize ops (int8 weights folded), eval mode, CPU."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = copy.deepcopy(qat_model).cpu()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(model, fold_quantize=True)


def qat_optim(cfg: RunConfig, epochs: int, lr: float | None) -> OptimConfig:
    """The student's optimizer settings for ``epochs`` QAT epochs at ``lr`` (default: student LR / 50), cosine."""
    if epochs < 1:
        raise ToolkitError(f"QAT epochs must be >= 1, got {epochs}")
    lr = cfg.student.lr / LR_DIVISOR if lr is None else float(lr)
    if not lr > 0:
        raise ToolkitError(f"QAT learning rate must be > 0, got {lr}")
    return replace(cfg.student, epochs=int(epochs), lr=lr, schedule="cosine", pretrained=False)


def load_student(cfg: RunConfig, data, student_checkpoint: Path) -> tuple[str, nn.Module]:
    """(model name, the trained float student) from a toolkit checkpoint (``<role>.pt``)."""
    path = Path(student_checkpoint)
    name = read_checkpoint(path).get("model") or cfg.student.model
    return name, load_model(name, path, num_classes=data.num_classes)


def train_qat_student(cfg: RunConfig, data, teacher: nn.Module | None, ig_maps: torch.Tensor | None, out_dir: Path,
                      student_checkpoint: Path, epochs: int = DEFAULT_EPOCHS, lr: float | None = None,
                      device: torch.device | None = None, progress: bool | None = None, role: str = QAT_ROLE,
                      max_epochs_this_call: int | None = None) -> tuple[nn.Module, dict]:
    """Fine-tune the student of ``student_checkpoint`` with fake quantization for ``epochs`` at ``lr``, with the
    run's KD (+ IG overlay) losses; resumable into ``out_dir/<role>.pt`` (``data``: a ``PreparedData``).

    Returns (the fake-quantized model in eval mode, the trainer's result: val_acc, test_acc, history, ... and
    ``finished``; False when ``max_epochs_this_call`` stopped it early).
    """
    from toolkit.pipeline import _augment_key, _split_digest, augment_spec, cached_teacher_logits
    from toolkit.device import select_device

    require_torchao()
    configuration = canonical_configuration(cfg.configuration)
    use_kd, use_ig, _ = CONFIGURATIONS[configuration]
    if use_kd and teacher is None:
        raise ToolkitError(f"configuration {configuration} needs the teacher for QAT distillation")
    if use_ig and (ig_maps is None or len(ig_maps) != len(data.train)):
        raise ToolkitError(f"configuration {configuration} needs IG maps with one row per training image for QAT")
    device = device or select_device(cfg.device)
    student_checkpoint = Path(student_checkpoint)
    name, student = load_student(cfg, data, student_checkpoint)
    torch.manual_seed(cfg.seed)
    model = prepare_qat_model(student, data.image_size)
    optim = qat_optim(cfg, epochs, lr)
    teacher_logits = None
    if use_kd and cfg.teacher_outputs == "cached":
        teacher_logits = cached_teacher_logits(teacher, data, device, "fp32")
    stage_cfg = {"stage": "qat", "recipe": RECIPE, "model": name, "student_sha256": sha256_file(student_checkpoint),
                 "optim": optim.__dict__, "configuration": configuration, "seed": cfg.seed,
                 "loss": cfg.loss.__dict__ if use_kd else None, "overlay": cfg.overlay.__dict__ if use_ig else None,
                 "teacher": state_digest(teacher) if use_kd else None, "maps": tensor_digest(ig_maps) if use_ig else None,
                 "teacher_outputs": cfg.teacher_outputs if use_kd else None, "split": _split_digest(data),
                 "train_rows": tensor_digest(data.train_index), **_augment_key(cfg)}
    meta = {"configuration": configuration, "seed": cfg.seed, "qat": {"recipe": RECIPE, "base_model": name,
            "source_checkpoint": str(student_checkpoint), "epochs": optim.epochs, "lr": optim.lr,
            "losses": "KD + IG overlay" if use_kd and use_ig else ("KD" if use_kd else ("IG overlay" if use_ig else "CE")),
            "note": "state dict of the torchao PT2E prepared graph: rebuild with prepare_qat_model"}}
    job = TrainJob(role=role, model_name=f"qat:{name}", model=model, optim=optim, train=data.train, val=data.val,
                   test=data.test, out_dir=Path(out_dir), fingerprint=fingerprint(stage_cfg), seed=cfg.seed,
                   device=device, precision="fp32", channels_last=False, teacher=teacher if use_kd else None,
                   loss=cfg.loss, use_kd=use_kd, ig_maps=ig_maps if use_ig else None,
                   overlay=cfg.overlay if use_ig else None, teacher_logits=teacher_logits,
                   progress=cfg.progress if progress is None else progress, metrics_path=Path(out_dir) / "metrics.jsonl",
                   extra_meta=meta, augment=augment_spec(cfg))
    result = train_model(job, max_epochs_this_call)
    result.update(configuration=configuration, seed=cfg.seed, base_model=name, recipe=RECIPE, lr=optim.lr)
    model.eval()
    return model, result
