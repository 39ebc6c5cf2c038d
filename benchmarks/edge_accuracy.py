"""bench-edge accuracy of the export's three ONNX Runtime models and the eager teacher on the run's test images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmarks.edge_export import ExportInfo
from benchmarks.edge_latency import ort_session
from benchmarks.edge_runtimes import EAGER_KEY
from toolkit.runs import open_run

if TYPE_CHECKING:
    from benchmarks.bench_edge import BenchConfig

ORT_ROLES = ("teacher.fp32", "student.fp32", "student.int8")


def ort_logits(session, images_u8: np.ndarray, batch: int) -> np.ndarray:
    """Logits (N, C) float32 for uint8 (N, 3, H, W) images, scaled to [0, 1] here."""
    name, out = session.get_inputs()[0].name, [session.get_outputs()[0].name]
    chunks = [session.run(out, {name: images_u8[i:i + batch].astype(np.float32) * np.float32(1 / 255)})[0]
              for i in range(0, len(images_u8), batch)]
    return np.concatenate(chunks).astype(np.float32)


def measure_accuracy(cfg: "BenchConfig", export: ExportInfo, teacher) -> tuple[dict, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Accuracy figures, plus logits per model, the uint8 images and labels they were computed on."""
    import torch

    from deploy.export import load_run_data, read_run_config
    from toolkit.evaluate import predict_logits

    data = load_run_data(read_run_config(open_run(cfg.run)), cfg.data_dir)
    test = data.test
    n = len(test) if cfg.test_subset is None else min(cfg.test_subset, len(test))
    images, labels = test.images[:n], test.labels[:n].numpy()
    exact = None if test.exact is None else test.exact[:n].numpy().astype(bool)
    images_np = images.numpy()
    threads = max(cfg.threads)
    logits: dict[str, np.ndarray] = {}
    for role in ORT_ROLES:
        logits[role] = ort_logits(ort_session(str(export.models[role].path), threads, cfg.ort), images_np, cfg.eval_batch)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits[EAGER_KEY] = predict_logits(teacher, images, batch_size=cfg.eval_batch).numpy()
    finally:
        torch.set_num_threads(previous)
    pred = {k: v.argmax(1) for k, v in logits.items()}
    models = {}
    for key, p in pred.items():
        per_class = {c: float((p[labels == i] == i).mean() * 100) if (labels == i).any() else float("nan")
                     for i, c in enumerate(data.classes)}
        entry = {"top1": float((p == labels).mean() * 100), "per_class": per_class}
        if exact is not None:  # the shared copy: bit-exact images vs JPEG-decoded ones
            for name, mask in (("top1_exact_images", exact), ("top1_jpeg_images", ~exact)):
                entry[name] = float((p[mask] == labels[mask]).mean() * 100) if mask.any() else None
        if key in export.models:
            entry["export_top1"] = export.models[key].export_top1
        models[key] = entry

    def agree(a: str, b: str) -> float:
        return float((pred[a] == pred[b]).mean() * 100)

    drop = models["student.fp32"]["top1"] - models["student.int8"]["top1"]
    gate = export.max_int8_drop
    acc = {"n": int(n), "subset": cfg.test_subset is not None, "data": data.description, "source": data.source,
           "n_exact_images": None if exact is None else int(exact.sum()),
           "threads": threads, "models": models,
           "agreement": {"student.int8 vs student.fp32": agree("student.int8", "student.fp32"),
                         "student.int8 vs teacher.fp32": agree("student.int8", "teacher.fp32"),
                         "student.fp32 vs teacher.fp32": agree("student.fp32", "teacher.fp32"),
                         "teacher.fp32 vs teacher.fp32.eager": agree("teacher.fp32", EAGER_KEY)},
           "max_abs_logit_diff": {
               "teacher.fp32 vs teacher.fp32.eager": float(np.abs(logits["teacher.fp32"] - logits[EAGER_KEY]).max()),
               "student.int8 vs student.fp32": float(np.abs(logits["student.int8"] - logits["student.fp32"]).max())},
           "int8": {"drop_points": drop, "max_drop": gate, "within_gate": None if gate is None else bool(drop <= gate)}}
    return acc, logits, images_np, labels
