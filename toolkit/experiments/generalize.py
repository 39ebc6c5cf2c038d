"""Zero-shot generalisation: CIFAR-10 models evaluated on the ImageNet-aligned set (8 CIFAR-10 classes present).

Sources: run folders (``runs/<name>``: summary.json, teacher.pt, student.pt, baseline.pt) and study folders
(``runs/studies/<study>-<scale>`` or a ``--out`` folder: results.jsonl, shared/teacher.pt, runs/<key>/student.pt). Every model predicts over all
10 CIFAR-10 classes. Scores: accuracy, balanced accuracy (mean recall over the 8 classes present) and Cohen's kappa
(10x10 table; a prediction of airplane or horse counts as disagreement), on all images and on the subset its own
teacher classifies correctly (as the paper filtered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecommon.hashing import sha256_file
from toolkit import ToolkitError
from toolkit.experiments import stats
from toolkit.experiments.report import fmt, fmt_p, legend_outside, mean_std, pyplot, save_figure, table
from toolkit.experiments.runner import RESULTS_FILE, RUNS_DIR, load_results, read_study

NUM_CLASSES = 10


@dataclass
class ModelEntry:
    source: str
    """Run or study folder."""
    label: str
    """e.g. ``KD_IG-s3`` or ``student``."""
    role: str
    """teacher, student or baseline."""
    configuration: str
    seed: int | None
    checkpoint: Path
    teacher_checkpoint: Path


def _model_name(path: Path, fallback: str | None) -> str:
    from toolkit.models.checkpoint import read_checkpoint

    name = read_checkpoint(path)["model"] or fallback
    if not name:
        raise ToolkitError(f"{path} does not name its model and no summary says which it is")
    return name


def entries_from_run(folder: Path) -> list[ModelEntry]:
    """Teacher-relative entries for student.pt and baseline.pt of a run folder (toolkit.runs contract)."""
    from toolkit.runs import open_run

    run = open_run(folder)
    summary = run.read_summary()
    teacher = run.checkpoint("teacher")
    if not teacher.is_file():
        raise ToolkitError(f"{folder}: teacher.pt missing")
    out = []
    configuration = summary.get("configuration") or summary.get("config") or "student"
    for role, conf in (("student", configuration), ("baseline", "Student")):
        path = run.checkpoint(role)
        if path.is_file():
            out.append(ModelEntry(str(folder), role, role, conf, summary.get("seed"), path, teacher))
    if not out:
        raise ToolkitError(f"{folder}: neither student.pt nor baseline.pt present")
    return out


def entries_from_study(folder: Path) -> list[ModelEntry]:
    """One entry per recorded run of a study folder whose student.pt is present."""
    study = read_study(folder)
    teacher = folder / "shared" / "teacher.pt"
    if not teacher.is_file():
        raise ToolkitError(f"{folder}: shared/teacher.pt missing")
    records = load_results(folder)
    if not records:
        raise ToolkitError(f"{folder}: no finished runs in {RESULTS_FILE}")
    out = []
    for key, rec in records.items():
        path = folder / RUNS_DIR / key / rec.get("checkpoint", "student.pt")
        if path.is_file():
            out.append(ModelEntry(str(folder), key, "student", rec["spec"]["configuration"],
                                  rec["spec"].get("seed"), path, teacher))
    if not out:
        raise ToolkitError(f"{folder}: no student checkpoints found under {RUNS_DIR}/")
    return out


def load_aligned(split: str, strict: bool):
    from toolkit.data import load_imagenet_aligned
    from toolkit.data.cifar10 import ImageSet

    if split == "all":
        a, b = load_imagenet_aligned("train", strict), load_imagenet_aligned("val", strict)
        return ImageSet(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]))
    if split not in ("train", "val"):
        raise ToolkitError(f"--split must be val, train or all, got '{split}'")
    return load_imagenet_aligned(split, strict)


def scores(labels: np.ndarray, pred: np.ndarray, classes: list[int]) -> dict:
    if len(labels) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "kappa": None}
    return {"n": int(len(labels)), "accuracy": float((labels == pred).mean() * 100),
            "balanced_accuracy": stats.balanced_accuracy(labels, pred, classes),
            "kappa": stats.cohens_kappa(labels, pred, NUM_CLASSES)}


def evaluate(entries: list[ModelEntry], split: str, strict: bool, log=print) -> dict:
    from toolkit.evaluate import predict_logits
    from toolkit.models.checkpoint import load_model

    data = load_aligned(split, strict)
    labels = data.labels.numpy()
    classes = sorted(int(c) for c in np.unique(labels))
    teachers: dict[str, dict] = {}
    rows = []
    for e in entries:
        sha = sha256_file(e.teacher_checkpoint)
        if sha not in teachers:
            name = _model_name(e.teacher_checkpoint, None)
            pred = predict_logits(load_model(name, e.teacher_checkpoint), data.images).argmax(1).numpy()
            teachers[sha] = {"name": name, "checkpoint": str(e.teacher_checkpoint), "pred": pred,
                             "all": scores(labels, pred, classes)}
            log(f"teacher {name} ({e.teacher_checkpoint}): {teachers[sha]['all']['accuracy']:.2f}% on {len(labels)} images")
        t = teachers[sha]
        correct = t["pred"] == labels
        name = _model_name(e.checkpoint, None)
        pred = predict_logits(load_model(name, e.checkpoint), data.images).argmax(1).numpy()
        rows.append({"source": e.source, "label": e.label, "role": e.role, "configuration": e.configuration,
                     "seed": e.seed, "model": name, "checkpoint": str(e.checkpoint), "teacher_sha256": sha,
                     "all": scores(labels, pred, classes),
                     "teacher_correct": scores(labels[correct], pred[correct], classes)})
    return {"split": split, "strict": strict, "images": int(len(labels)), "classes_present": classes,
            "teachers": [{k: v for k, v in t.items() if k != "pred"} | {"sha256": s} for s, t in teachers.items()],
            "models": rows, "groups": _groups(rows)}


def _groups(rows: list[dict]) -> list[dict]:
    """Mean ± std per (source, configuration) over seeds, and paired t-tests against Student on shared seeds."""
    groups = []
    keys = list(dict.fromkeys((r["source"], r["configuration"], r["model"]) for r in rows))
    for source, conf, model in keys:
        members = [r for r in rows if (r["source"], r["configuration"], r["model"]) == (source, conf, model)]
        g = {"source": source, "configuration": conf, "model": model, "n": len(members)}
        for subset in ("all", "teacher_correct"):
            for metric in ("accuracy", "balanced_accuracy", "kappa"):
                g[f"{subset}.{metric}"] = stats.describe([m[subset][metric] for m in members
                                                          if m[subset][metric] is not None])
        base = [r for r in rows if (r["source"], r["configuration"], r["model"]) == (source, "Student", model)]
        if conf != "Student" and base:
            seeds = sorted({m["seed"] for m in members} & {b["seed"] for b in base} - {None})
            if len(seeds) >= 2:
                pick = lambda rs, s: next(r for r in rs if r["seed"] == s)  # noqa: E731
                g["vs_student_balanced_teacher_correct"] = stats.paired_test(
                    [pick(members, s)["teacher_correct"]["balanced_accuracy"] for s in seeds],
                    [pick(base, s)["teacher_correct"]["balanced_accuracy"] for s in seeds])
        groups.append(g)
    return groups


def report_body(result: dict, folder: Path) -> str:
    parts = [f"ImageNet-aligned set: split `{result['split']}`{' (strict synsets only)' if result['strict'] else ''}, "
             f"{result['images']:,} images, CIFAR-10 classes present {result['classes_present']} "
             "(no airplane, no horse). Models predict over all 10 classes.", "", "## Teachers", ""]
    parts.append(table(["teacher", "checkpoint", "accuracy", "balanced acc", "kappa"],
                       [[t["name"], f"`{t['checkpoint']}`", fmt(t["all"]["accuracy"]), fmt(t["all"]["balanced_accuracy"]),
                         fmt(t["all"]["kappa"], 3)] for t in result["teachers"]]))
    parts += ["", "## Per model", "", "Teacher-correct: the images the model's own teacher classifies correctly.", ""]
    rows = []
    for r in result["models"]:
        a, tc = r["all"], r["teacher_correct"]
        rows.append([f"`{r['source']}`", r["label"], r["configuration"], r["model"], fmt(a["accuracy"]),
                     fmt(a["balanced_accuracy"]), fmt(a["kappa"], 3), tc["n"], fmt(tc["accuracy"]),
                     fmt(tc["balanced_accuracy"]), fmt(tc["kappa"], 3)])
    parts.append(table(["source", "run", "configuration", "model", "acc (all)", "bal. acc (all)", "kappa (all)",
                        "n teacher-correct", "acc (t-c)", "bal. acc (t-c)", "kappa (t-c)"], rows))
    multi = [g for g in result["groups"] if g["n"] > 1]
    if multi:
        parts += ["", "## Per configuration (mean ± std over seeds/runs)", ""]
        rows = []
        for g in multi:
            test = g.get("vs_student_balanced_teacher_correct")
            rows.append([f"`{g['source']}`", g["configuration"], g["model"], g["n"], mean_std(g["all.accuracy"]),
                         mean_std(g["all.balanced_accuracy"]), mean_std(g["teacher_correct.accuracy"]),
                         mean_std(g["teacher_correct.balanced_accuracy"]), mean_std(g["teacher_correct.kappa"], 3),
                         "-" if not test else f"{fmt(test['mean_diff'])} (p {fmt_p(test['p'])}, d_z {fmt(test['dz'])})"])
        parts.append(table(["source", "configuration", "model", "n", "acc (all)", "bal. acc (all)", "acc (t-c)",
                            "bal. acc (t-c)", "kappa (t-c)", "bal. acc (t-c) − Student, paired"], rows))
        parts += ["", "Paired t-test (scipy ttest_rel) over the seeds both configurations share; no multiple-comparison "
                  "correction here."]
    models = list(dict.fromkeys(g["model"] for g in result["groups"]))
    if len(models) > 1:
        parts += ["", f"**Different architectures side by side** ({', '.join(models)}, separated by dashed lines in the "
                  "plot): compare configurations within one architecture; across architectures the gap mixes model "
                  "capacity with the method."]
    parts += ["", "![generalisation](generalize.png)"]
    _plot(result, folder)
    return "\n".join(parts) + "\n"


def _plot(result: dict, folder: Path) -> None:
    plt = pyplot()
    groups = result["groups"]
    models = list(dict.fromkeys(g["model"] for g in groups))
    mixed = len(models) > 1
    labels = [f"{Path(g['source']).name}\n{g['configuration']}" + (f"\n{g['model']}" if mixed else "")
              + (f" (n={g['n']})" if g["n"] > 1 else "") for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 4.4))
    x = np.arange(len(groups))
    spread = any(g["n"] > 1 for g in groups)
    for i, (key, name) in enumerate((("all.accuracy", "accuracy, all"), ("all.balanced_accuracy", "balanced acc, all"),
                                     ("teacher_correct.accuracy", "accuracy, teacher-correct"),
                                     ("teacher_correct.balanced_accuracy", "balanced acc, teacher-correct"))):
        means = [g[key]["mean"] if g[key]["mean"] is not None else np.nan for g in groups]
        errs = [(g[key]["std"] or 0) if g["n"] > 1 else 0 for g in groups]  # no error bar for a single seed
        ax.bar(x + (i - 1.5) * 0.2, means, 0.2, yerr=errs if any(errs) else None, capsize=2, label=name)
        if mixed:  # separate architectures visibly: a thin line where the model changes
            for j in range(1, len(groups)):
                if groups[j]["model"] != groups[j - 1]["model"]:
                    ax.axvline(j - 0.5, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("%")
    title = f"Zero-shot on the ImageNet-aligned set ({result['split']})"
    if spread:
        title += "; bars: mean, whiskers: ± std over seeds"
    if mixed:
        title += (f"\nDIFFERENT architectures side by side ({', '.join(models)}): "
                  "compare configurations within one architecture, not across")
    ax.set_title(title, fontsize=9)
    legend_outside(ax, fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, folder / "generalize.png")


def default_sources(scale: str) -> list[Path]:
    from toolkit.experiments.common import STUDIES_DIR

    return [p for p in (STUDIES_DIR / f"{s}-{scale}" for s in ("ablation", "montecarlo", "sweep"))
            if (p / RESULTS_FILE).is_file()]
