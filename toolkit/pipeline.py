"""``make distill``: data -> teacher (fine-tune / train / load) -> IG maps -> distilled student (-> baseline student).

Each stage is resumable and fingerprinted: a rerun reuses finished stages with the same settings, continues an
interrupted one from its last epoch checkpoint, and refuses a run folder made with other settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from edgecommon.hashing import fingerprint, sha256_file, state_digest, tensor_digest
from edgecommon.machine import cpu_model_and_flags, load_average
from toolkit import ToolkitError, __version__
from toolkit.config import CONFIGURATIONS, RunConfig, canonical_configuration, fingerprint_settings, save_config
from toolkit.data.cifar10 import REPO_ROOT
from toolkit.data.prepare import PreparedData, data_image_size, prepare_data, subset_training  # noqa: F401 - re-exported
from toolkit.device import resolve_precision, select_device
from toolkit.distill.trainer import TrainJob, train_model
from toolkit.distributed import DistInfo, barrier, current, init_distributed
from toolkit.io import atomic_write_json
from toolkit.models.checkpoint import load_weights, read_checkpoint
from toolkit.models.profile import count_params
from toolkit.models.registry import build_model
from toolkit.run_summary import LOSS_NOTE, SMOKE_NOTE, compare_roles, print_table  # noqa: F401 - re-exported
from toolkit.runs import RunFolder, move_aside

CACHED_LOGITS_NOTE = "cached teacher logits of the un-augmented image (an approximation: not the student's actual input)"


def _resolve_path(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def dist_main() -> bool:
    """True on the process that writes shared files (rank 0, or the only process)."""
    return current().is_main


def _split_digest(data: PreparedData) -> dict:
    return {"data": data.data_key, "train": tensor_digest(data.train_index), "val": tensor_digest(data.val_index),
            "test": len(data.test)}


def _device_and_precision(cfg: RunConfig, device: torch.device | None) -> tuple[torch.device, str]:
    device = device or select_device(cfg.device)
    return device, resolve_precision(cfg.precision, device)


def _teacher_source(cfg: RunConfig, model: nn.Module) -> str | None:
    """Load ``teacher.checkpoint`` into ``model`` (``finetune``/``load``); returns the file's short sha256."""
    t = cfg.teacher
    if t.mode == "scratch" or not t.checkpoint:
        return None
    src = _resolve_path(t.checkpoint)
    load_weights(model, t.model, src, reset_head=t.reset_head, trust_pickle=t.trust_pickle)
    return sha256_file(src, length=16)


def prepare_teacher(cfg: RunConfig, run: RunFolder, data: PreparedData, device: torch.device | None = None,
                    progress: bool | None = None) -> nn.Module:
    """The teacher in eval mode: ``load`` as given, ``finetune`` from the checkpoint (or the library's published
    weights with ``teacher.pretrained``), or ``scratch``; saved as ``run/teacher.pt`` (also for ``load``, with its
    measured accuracies, so export and bench read every run the same way) and reused on rerun when its settings
    match."""
    device, precision = _device_and_precision(cfg, device)
    t = cfg.teacher
    torch.manual_seed(cfg.seed)
    model = build_model(t.model, data.num_classes, pretrained=t.pretrained and t.mode != "scratch")
    source_sha = _teacher_source(cfg, model)
    stage_cfg = {"teacher": fingerprint_settings(t.__dict__, "teacher."), "source_sha": source_sha, "split": _split_digest(data), "seed": cfg.seed,
                 "precision": precision, **_augment_key(cfg)}
    if t.mode == "load":
        _save_loaded_teacher(cfg, run, model, data, device, fingerprint(stage_cfg), source_sha)
        return model.eval().to(device)
    torch.manual_seed(cfg.seed)
    if t.mode == "scratch":
        model = build_model(t.model, data.num_classes)
    job = TrainJob(role="teacher", model_name=t.model, model=model, optim=t, train=data.train, val=data.val,
                   test=data.test, out_dir=run.root, fingerprint=fingerprint(stage_cfg), seed=cfg.seed, device=device,
                   precision=precision, channels_last=cfg.channels_last,
                   progress=cfg.progress if progress is None else progress, metrics_path=run.metrics,
                   extra_meta={"source_checkpoint": t.checkpoint, "source_sha256_16": source_sha},
                   augment=augment_spec(cfg), compile=cfg.compile)
    result = train_model(job)
    if not result.get("finished"):
        raise ToolkitError("teacher training stopped early")
    return model.eval()


def _save_loaded_teacher(cfg: RunConfig, run: RunFolder, model: nn.Module, data: PreparedData, device: torch.device,
                         stage_fingerprint: str, source_sha: str | None) -> None:
    """``teacher.mode=load``: measure the teacher as given on val and test, once, and keep it as ``run/teacher.pt``."""
    from toolkit.evaluate import evaluate_accuracy
    from toolkit.models.checkpoint import save_checkpoint

    path = run.checkpoint("teacher")
    if path.is_file():
        meta = read_checkpoint(path)["meta"]
        if meta.get("fingerprint") == stage_fingerprint and "result" in meta:
            return
    if not dist_main():
        return
    model.eval().to(device)
    test_acc = evaluate_accuracy(model, data.test.images, data.test.labels, device=device)
    val_acc = evaluate_accuracy(model, data.val.images, data.val.labels, device=device) if len(data.val) else None
    result = {"params": count_params(model), "test_acc": test_acc, "val_acc": val_acc, "epochs": 0, "finished": True}
    save_checkpoint(model, cfg.teacher.model, path, {"fingerprint": stage_fingerprint, "result": result, "mode": "load",
                                                     "source_checkpoint": cfg.teacher.checkpoint,
                                                     "source_sha256_16": source_sha})
    print(f"teacher {cfg.teacher.model} loaded as given from {cfg.teacher.checkpoint}: test {test_acc:.2f}%"
          + (f", val {val_acc:.2f}%" if val_acc is not None else ""))


def _augment_key(cfg: RunConfig) -> dict:
    """Fingerprint part for the augmentation: empty for the 32-px pad-and-crop every earlier run used, so their
    stage fingerprints (and finished checkpoints) stay valid."""
    spec = augment_spec(cfg)
    if (spec.kind, spec.padding, data_image_size(cfg)) == ("padcrop", 4, 32):
        return {}
    return {"augment": {"kind": spec.kind, "padding": spec.padding, "scale_min": spec.scale_min,
                        "image_size": data_image_size(cfg)}}


def augment_spec(cfg: RunConfig):
    """The run's training augmentation (``data.augment``, resolved for its image size)."""
    from toolkit.data.augment import resolve_augment

    d = cfg.data
    return resolve_augment(d.augment, data_image_size(cfg), d.padding, d.rrc_scale_min)


def teacher_result(cfg: RunConfig, run: RunFolder, teacher: nn.Module, data: PreparedData, device: torch.device) -> dict:
    """Name, params and test accuracy of the teacher as used (from teacher.pt meta, or measured for ``load``)."""
    path = run.checkpoint("teacher")
    if path.is_file():
        meta = read_checkpoint(path)["meta"]
        if "result" in meta:
            r = meta["result"]
            return {"name": cfg.teacher.model, "params": r["params"], "test_acc": r["test_acc"], "val_acc": r.get("val_acc"),
                    "checkpoint": path.name, "source": cfg.teacher.checkpoint, "mode": cfg.teacher.mode}
    from toolkit.evaluate import evaluate_accuracy

    acc = evaluate_accuracy(teacher.to(device), data.test.images, data.test.labels, device=device)
    return {"name": cfg.teacher.model, "params": count_params(teacher), "test_acc": acc, "checkpoint": None,
            "source": cfg.teacher.checkpoint, "mode": cfg.teacher.mode}


def prepare_ig_maps(cfg: RunConfig, run: RunFolder, teacher: nn.Module, data: PreparedData,
                    device: torch.device | None = None, progress: bool | None = None, force: bool = False
                    ) -> torch.Tensor | None:
    """IG maps of the teacher for every train row (row i = ``data.train`` row i), from the run's fingerprinted cache.

    None when the configuration uses no overlay, unless ``force`` (studies that share maps across configurations)."""
    if not force and not CONFIGURATIONS[canonical_configuration(cfg.configuration)][1]:
        return None
    from toolkit.attribution.cache import load_or_compute_ig_maps, resolve_ig_steps

    device, precision = _device_and_precision(cfg, device)
    # ig.steps=auto: choose the step count first (or reuse the choice recorded in the cache's meta.json)
    ig_cfg, steps_auto = resolve_ig_steps(run.ig_dir, teacher.to(device), data.train.images, data.train.labels, cfg.ig,
                                          device, precision)
    extra = {}
    if not _ig_cache_complete(run, ig_cfg, len(data.train)):
        # the pass size (ig.rows=auto: the fastest of a few, timed here) and the estimate from the same timings
        from toolkit.attribution.ig import choose_ig_rows

        rows = choose_ig_rows(teacher.to(device), data.train.images, data.train.labels, ig_cfg, device, precision)
        extra["max_rows"] = rows.rows
        if current().is_main:
            if rows.how != "default":
                print(rows.describe(), flush=True)
            _print_ig_estimate(cfg, teacher, data, device, precision, ig_cfg, rows)
    return load_or_compute_ig_maps(run.ig_dir, teacher.to(device), cfg.teacher.model, data.train.images, data.train.labels,
                                   data.train_index, data.data_key, ig_cfg, device, precision,
                                   progress=cfg.progress if progress is None else progress, steps_auto=steps_auto, **extra)


def _ig_cache_complete(run: RunFolder, ig_cfg, n: int) -> bool:
    import math

    chunks = math.ceil(n / max(1, ig_cfg.chunk_size))
    return run.ig_dir.is_dir() and len(list(run.ig_dir.glob("chunk_*.pt"))) >= chunks


def _print_ig_estimate(cfg: RunConfig, teacher: nn.Module, data: PreparedData, device: torch.device,
                       precision: str, ig_cfg, rows) -> None:
    """Before IG maps are computed: their cost (images x steps x teacher MFLOPs x 2: a forward and an input-gradient
    backward, weights frozen) and the time it should take, from the pass-size timings (``rows``, a
    ``toolkit.attribution.ig.RowsChoice``) or, when those were not timed, from a few images at ``rows.rows``."""
    from toolkit.attribution.ig import compute_ig_maps
    from toolkit.models.profile import forward_mflops

    n = len(data.train)
    mflops = forward_mflops(teacher.cpu() if device.type == "cpu" else teacher, data.image_size)
    teacher.to(device)
    total_tflop = n * ig_cfg.steps * mflops * 2 / 1e6
    head = (f"IG maps: {n:,} images x {ig_cfg.steps} steps x {mflops:.1f} teacher MFLOPs (x2: forward + input-gradient "
            f"backward) = {total_tflop:.2f} TFLOP")
    if current().world_size > 1:  # compute_ig_maps is collective under DDP: no single-rank probe
        print(head, flush=True)
        return
    if rows.seconds_per_image:
        per_image, how = rows.seconds_per_image[rows.rows], f"timed at {rows.rows} rows above"
    else:
        probe = min(n, max(2, ig_cfg.batch_size))
        compute_ig_maps(teacher, data.train.images[:1], data.train.labels[:1], ig_cfg, device, precision, progress=False,
                        max_rows=rows.rows)  # warm-up, not timed
        t0 = time.perf_counter()
        compute_ig_maps(teacher, data.train.images[:probe], data.train.labels[:probe], ig_cfg, device, precision,
                        progress=False, max_rows=rows.rows)
        per_image, how = (time.perf_counter() - t0) / probe, f"measured on {probe} images"
    print(f"{head}; expected about {per_image * n / 60:.1f} min on {device} ({1 / per_image:.1f} img/s, {how})",
          flush=True)


def cached_teacher_logits(teacher: nn.Module, data: PreparedData, device: torch.device, precision: str) -> torch.Tensor:
    """Teacher logits of each un-augmented train image, row i = train row i (the approximate ``cached`` mode)."""
    from toolkit.evaluate import predict_logits

    return predict_logits(teacher, data.train.images, device=device, precision=precision)


def train_student(cfg: RunConfig, data: PreparedData, teacher: nn.Module | None, ig_maps: torch.Tensor | None,
                  out_dir: Path, role: str = "student", device: torch.device | None = None,
                  configuration: str | None = None, seed: int | None = None, progress: bool | None = None,
                  model_name: str | None = None, max_epochs_this_call: int | None = None) -> dict:
    """Train ``cfg.student.model`` (or ``model_name``) with ``configuration`` into ``out_dir/<role>.pt``; resumable.

    The same seed gives the same initial weights, batch order and crops for every configuration (paired runs).
    Returns name, params, test_acc, val_acc, epochs, seconds, history (and train_size, finished).
    """
    device, precision = _device_and_precision(cfg, device)
    configuration = canonical_configuration(configuration or cfg.configuration)
    seed = cfg.seed if seed is None else seed
    name = model_name or cfg.student.model
    use_kd, use_ig, use_at = CONFIGURATIONS[configuration]
    if use_ig and ig_maps is None:
        raise ToolkitError(f"configuration {configuration} needs IG maps")
    if use_ig and len(ig_maps) != len(data.train):
        raise ToolkitError(f"IG maps have {len(ig_maps)} rows for {len(data.train)} training images")
    if use_at and cfg.teacher_outputs == "cached":
        raise ToolkitError("attention transfer needs the teacher's features online: use teacher_outputs=online")
    torch.manual_seed(seed)
    student = build_model(name, data.num_classes, pretrained=cfg.student.pretrained)
    teacher_logits = None
    if use_kd and cfg.teacher_outputs == "cached":
        teacher_logits = cached_teacher_logits(teacher, data, device, precision)
    at_layers: tuple = ()
    if use_at:
        from toolkit.distill.taps import resolve_at_pairs

        at_layers = resolve_at_pairs(teacher, student, cfg.loss.at_layers, cfg.teacher.model, name)
    stage_cfg = {"model": name, "optim": fingerprint_settings(cfg.student.__dict__, "student."), "configuration": configuration, "seed": seed,
                 "loss": cfg.loss.__dict__ if (use_kd or use_at) else None, "overlay": cfg.overlay.__dict__ if use_ig else None,
                 "ig": fingerprint_settings(cfg.ig.__dict__, "ig.") if use_ig else None, "teacher": state_digest(teacher) if (use_kd or use_at) else None,
                 "teacher_outputs": cfg.teacher_outputs if use_kd else None, "split": _split_digest(data),
                 "train_rows": tensor_digest(data.train_index), "maps": tensor_digest(ig_maps) if use_ig else None,
                 "precision": precision, **_augment_key(cfg)}
    job = TrainJob(role=role, model_name=name, model=student, optim=cfg.student, train=data.train, val=data.val,
                   test=data.test, out_dir=Path(out_dir), fingerprint=fingerprint(stage_cfg), seed=seed, device=device,
                   precision=precision, channels_last=cfg.channels_last, teacher=teacher if (use_kd or use_at) else None,
                   loss=cfg.loss, use_kd=use_kd, use_at=use_at, at_layers=at_layers,
                   ig_maps=ig_maps if use_ig else None, overlay=cfg.overlay if use_ig else None,
                   teacher_logits=teacher_logits, progress=cfg.progress if progress is None else progress,
                   metrics_path=Path(out_dir) / "metrics.jsonl", extra_meta={"configuration": configuration, "seed": seed},
                   augment=augment_spec(cfg), compile=cfg.compile)
    result = train_model(job, max_epochs_this_call)
    result["configuration"] = configuration
    result["seed"] = seed
    return result


STAGES = ("teacher", "ig", "student", "baseline")


def check_stage_plan(cfg: RunConfig, root: Path, stages: list[str] | None, resume: bool = True) -> list[str]:
    """The stages to run, checked before any work: each stage's input must be made by an earlier stage of this call
    or already be in the run folder; otherwise one ToolkitError line names the stages to add."""
    stages = [s.strip() for s in stages if s.strip()] if stages else list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ToolkitError(f"unknown stage(s) {unknown or stages}; choose from {','.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # run order, whatever the order given
    have = (lambda name: False) if not resume else (lambda name: (root / name).exists())
    add: list[str] = []
    why: list[str] = []
    teacher_needed = any(s in stages for s in ("ig", "student", "baseline"))
    if (teacher_needed and "teacher" not in stages and cfg.teacher.mode != "load"
            and not have("teacher.pt")):
        add.append("teacher")  # the pipeline would otherwise train it here, unasked
        why.append(f"no finished teacher.pt in {root}" + ("" if resume else " (--fresh starts it empty)"))
    uses_ig = CONFIGURATIONS[canonical_configuration(cfg.configuration)][1]
    if "student" in stages and uses_ig and "ig" not in stages:
        add.append("ig")  # the ig stage reuses a finished IG cache (run/ig/), so adding it costs nothing then
        why.append(f"{canonical_configuration(cfg.configuration)} trains on IG maps (the ig stage reuses finished ones)")
    if add:
        wanted = [s for s in STAGES if s in stages or s in add]
        raise ToolkitError(f"--stages {','.join(stages)} also needs stage {' and '.join(add)} ({'; '.join(why)}): "
                           f"use --stages {','.join(wanted)}, or leave --stages out")
    return stages


def run_distill(cfg: RunConfig, run_name: str | None = None, runs_dir: str | Path = "runs", resume: bool = True,
                stages: list[str] | None = None, save_examples: bool = False) -> dict:
    """The whole chain into ``runs_dir/run_name``; returns the summary (also written to summary.json)."""
    device, precision = _device_and_precision(cfg, None)
    dist_info: DistInfo = init_distributed(device)
    configuration = canonical_configuration(cfg.configuration)
    cfg.configuration = configuration
    run_name = run_name or f"{cfg.preset}-{configuration}"
    root = Path(runs_dir) / run_name
    stages = check_stage_plan(cfg, root, stages, resume)
    if not resume and root.exists() and dist_info.is_main:
        old = move_aside(root)
        print(f"--fresh (make RESUME=0): moved the old run folder {root} aside to {old} (nothing deleted; remove it "
              "yourself when done with it)")
    barrier()
    root.mkdir(parents=True, exist_ok=True)
    run = RunFolder(root)
    if dist_info.is_main:
        save_config(cfg, run.config)
    t0 = time.perf_counter()
    load_start = load_average()
    stage_seconds: dict[str, float] = {}
    clock = [t0]

    def lap(stage: str) -> None:  # wall seconds since the previous lap, under the stage's name
        now = time.perf_counter()
        stage_seconds[stage] = round(now - clock[0], 1)
        clock[0] = now

    data = prepare_data(cfg)
    lap("data")
    print(f"data: {data.description}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test "
          f"at {data.image_size} px; device {device}, precision {precision}, world size {dist_info.world_size}")
    if data.skipped:
        print(f"data: {len(data.skipped)} unreadable image(s) skipped (data.skip_bad), listed in {root / 'splits.json'}")
    if data.files is not None and dist_info.is_main:
        atomic_write_json(root / "splits.json", {"classes": list(data.classes), "image_size": data.image_size,
                                                 "files": data.files, "skipped": [list(x) for x in data.skipped or []]})
    teacher = prepare_teacher(cfg, run, data, device)
    summary = {"run": run_name, "run_dir": str(root), "preset": cfg.preset, "configuration": configuration,
               "config": configuration, "data": data.description, "seed": cfg.seed, "device": str(device),
               "precision": precision, "toolkit_version": __version__,
               "image_size": data.image_size, "classes": list(data.classes),
               "split": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                         "split_seed": cfg.data.split_seed, "train_subset": cfg.data.train_subset,
                         "skipped_images": len(data.skipped or [])},
               "teacher_outputs": cfg.teacher_outputs if cfg.teacher_outputs == "online" else CACHED_LOGITS_NOTE}
    summary["teacher"] = teacher_result(cfg, run, teacher, data, device)
    lap("teacher")
    if stages == ["teacher"]:
        return summary
    maps = prepare_ig_maps(cfg, run, teacher, data, device) if "ig" in stages else None
    lap("ig")
    if save_examples and maps is not None and dist_info.is_main:
        from toolkit.attribution.examples import save_overlay_examples

        save_overlay_examples(data.train.images[:8], maps[:8], cfg.overlay, root / "overlay_examples.png", seed=cfg.seed,
                              labels=[data.classes[int(i)] for i in data.train.labels[:8]])
        print(f"--save-examples: wrote the picture of originals, IG maps and overlays to {root / 'overlay_examples.png'}")
    elif save_examples and dist_info.is_main:
        print(f"--save-examples: no picture written: no IG maps in this run (configuration {configuration})")
    if "student" in stages:
        summary["student"] = _public(train_student(cfg, data, teacher, maps, root, "student", device), "student")
        lap("student")
    if "baseline" in stages and cfg.baseline and configuration != "Student":
        summary["baseline"] = _public(train_student(cfg, data, None, None, root, "baseline", device, configuration="Student"),
                                      "baseline")
        lap("baseline")
    if "student" in summary:
        summary["compression_factor"] = round(summary["teacher"]["params"] / summary["student"]["params"], 2)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    model, flags = cpu_model_and_flags()
    summary["timing"] = {
        "stage_seconds": stage_seconds,
        "note": "wall seconds of this call per stage (a stage reused from an earlier call counts only its check); "
                "teacher includes its test evaluation, student and baseline their per-epoch validation and final test",
        "cpu": model, "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
        "torch_threads": torch.get_num_threads(), "world_size": dist_info.world_size, "torch": torch.__version__,
        "load_average_start": load_start, "load_average_end": load_average()}
    summary["comparison"] = compare_roles(summary)
    if CONFIGURATIONS[configuration][0]:
        summary["loss_note"] = LOSS_NOTE.format(T=cfg.loss.temperature, T2=cfg.loss.temperature ** 2)
    if dist_info.is_main and "student" in summary:
        atomic_write_json(run.summary, summary)
        print_table(summary)
    return summary


def _public(result: dict, role: str) -> dict:
    out = {k: v for k, v in result.items() if k != "history"}
    out["checkpoint"] = f"{role}.pt"
    return out
