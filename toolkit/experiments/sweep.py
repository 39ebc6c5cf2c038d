"""Compression sweep: accuracy of a family of students against compression factor (CF) and measured latency,
for Student, KD, IG and KD+IG, all distilled from the same teacher.

CF, parameters and MFLOPs come from ``toolkit.models.profile.profile_model`` (CF = the family teacher's parameters /
the student's). Latency: ``toolkit.experiments.latency`` (ONNX Runtime fp32, batch 1, 1 thread), measured once per
architecture and cached in ``latency.json`` with the hardware it ran on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.experiments import stats
from toolkit.experiments.common import Prepared, record_from_result, run_config
from toolkit.experiments.report import (fmt, hardware, hardware_line, legend_outside, mean_std, pyplot,
                                       readable_log_axis, save_figure, table)
from toolkit.experiments.runner import RunSpec
from toolkit.experiments.scales import StudySettings
from toolkit.io import atomic_write_json

LATENCY_FILE = "latency.json"


def plan(settings: StudySettings) -> list[RunSpec]:
    return [RunSpec(f"{m}-{c}-s{seed}", {"model": m, "configuration": c, "seed": seed})
            for seed in settings.seeds for m in settings.models for c in settings.configs]


def make_run_fn(prepared: Prepared):
    from toolkit.pipeline import train_student

    def run(spec: RunSpec, run_dir: Path) -> dict:
        p = spec.params
        cfg = run_config(prepared.cfg, p["configuration"], p["seed"], model=p["model"])
        result = train_student(cfg, prepared.data, prepared.teacher, prepared.maps, out_dir=run_dir, role="student",
                               device=prepared.device, configuration=p["configuration"], seed=p["seed"], progress=False,
                               model_name=p["model"])
        return record_from_result(result, prepared, configuration=p["configuration"], seed=p["seed"], model=p["model"],
                                  checkpoint="student.pt")

    return run


def latencies(folder: Path, models: list[str], log=print) -> dict[str, dict]:
    """Latency per model from ``latency.json``, measuring (and saving) those missing."""
    from toolkit.experiments.latency import measure_latency

    path = folder / LATENCY_FILE
    cache = json.loads(path.read_text()) if path.is_file() else {}
    missing = [m for m in models if m not in cache]
    for m in missing:
        cache[m] = {**measure_latency(m), "hardware": hardware_line(hardware())}
        log(f"latency {m}: {cache[m]['median_ms']:.3f} ms median ({cache[m]['method']})")
    if missing:
        atomic_write_json(path, cache)
    return cache


def analyze(records: list[dict], settings: StudySettings, folder: Path, log=print) -> dict:
    from toolkit.models.profile import profile_model

    models = [m for m in settings.models if any(r["spec"]["model"] == m for r in records)]
    configs = [c for c in settings.configs if any(r["spec"]["configuration"] == c for r in records)]
    lat = latencies(folder, models, log)
    rows = []
    for m in models:
        prof = profile_model(m).to_dict()
        acc = {}
        for c in configs:
            v = [float(r["test_acc"]) for r in records
                 if r["spec"]["model"] == m and r["spec"]["configuration"] == c and r.get("test_acc") is not None]
            acc[c] = {**stats.describe(v), "values": v}
        rows.append({"model": m, "params": prof["params"], "compression_factor": prof["compression_factor"],
                     "family": prof["family"], "mflops": prof["mflops"], "latency": lat[m],
                     "accuracy": acc})
    return {"metric": "test_acc (%)", "models": models, "configs": configs, "rows": rows}


def report_body(result: dict, folder: Path) -> str:
    from toolkit.experiments.runner import read_study

    configs = result["configs"]
    teacher = (read_study(folder).get("setup") or {}).get("teacher") or {}
    t_params = teacher.get("params")
    methods = sorted({r["latency"]["method"] for r in result["rows"]})
    hosts = sorted({r["latency"].get("hardware", "-") for r in result["rows"]})
    parts = ["## Accuracy (last-epoch test %, mean ± std over seeds) against compression", "",
             table(["student", "params", "CF (family teacher)", f"CF vs this study's teacher ({teacher.get('name', '-')})",
                    "MFLOPs", "latency median (ms)", "latency p90 (ms)"] + configs,
                   [[r["model"], f"{r['params']:,}", f"{r['compression_factor']:.2f}x",
                     f"{t_params / r['params']:.2f}x" if t_params else "-", fmt(r["mflops"]),
                     fmt(r["latency"]["median_ms"], 3), fmt(r["latency"]["p90_ms"], 3)]
                    + [mean_std(r["accuracy"][c]) for c in configs] for r in result["rows"]]),
             "", "CF = parameters of the family's teacher (mobilenetv2_cifar or resnet56) / parameters of the student "
             "(toolkit.models.profile); the plots use it. MFLOPs: one 32x32 forward (multiply-add = 2). "
             f"Latency: {'; '.join(methods)}; one 32x32 image, median of 100 timed runs after 20 warm-up runs, on "
             f"{'; '.join(hosts)}.", ""]
    if "Student" in configs:
        diffs = []
        for r in result["rows"]:
            base = r["accuracy"]["Student"]["mean"]
            diffs.append([r["model"]] + [fmt(r["accuracy"][c]["mean"] - base) if base is not None
                                         and r["accuracy"][c]["mean"] is not None else "-" for c in configs if c != "Student"])
        parts += ["## Difference of mean accuracy to Student (points)", "",
                  table(["student"] + [c for c in configs if c != "Student"], diffs), ""]
    parts += ["![accuracy vs CF](sweep_accuracy_vs_cf.png)", "", "![accuracy vs latency](sweep_accuracy_vs_latency.png)"]
    _plots(result, folder)
    return "\n".join(parts) + "\n"


def _plots(result: dict, folder: Path) -> None:
    plt = pyplot()
    for x_key, label, name in (("compression_factor", "compression factor (teacher params / student params)", "cf"),
                               ("latency", "latency per image, ms (ONNX Runtime fp32, batch 1, 1 thread)", "latency")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        all_x, spread = [], False
        for i, c in enumerate(result["configs"]):
            xs, ys, es = [], [], []
            for r in result["rows"]:
                a = r["accuracy"][c]
                if a["mean"] is None:
                    continue
                xs.append(r["latency"]["median_ms"] if x_key == "latency" else r[x_key])
                ys.append(a["mean"])
                es.append(a["std"] if (a.get("n") or 1) > 1 and a.get("std") else 0.0)
            order = np.argsort(xs)
            all_x += xs
            if any(es):  # error bars only where there are several seeds
                spread = True
                ax.errorbar(np.asarray(xs)[order], np.asarray(ys)[order], yerr=np.asarray(es)[order], marker="o",
                            capsize=3, label=c, color=f"C{i}", alpha=0.85)
            else:
                ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker="o", label=c, color=f"C{i}", alpha=0.85)
        for r in result["rows"]:
            x = r["latency"]["median_ms"] if x_key == "latency" else r[x_key]
            top = max((r["accuracy"][c]["mean"] for c in result["configs"] if r["accuracy"][c]["mean"] is not None),
                      default=None)
            if top is not None:
                ax.annotate(r["model"], (x, top), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set_xscale("log")
        readable_log_axis(ax, all_x, "x")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.margins(y=0.12)
        ax.grid(alpha=0.3, which="major")
        what = "compression factor" if x_key == "compression_factor" else "latency"
        ax.set_title(f"Sweep: accuracy vs {what}" + (" (mean ± std over seeds)" if spread else " (one seed per point)"),
                     fontsize=10)
        legend_outside(ax)
        save_figure(fig, folder / f"sweep_accuracy_vs_{name}.png")
