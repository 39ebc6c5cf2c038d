"""Monte Carlo: N runs per configuration, each on a fresh stratified subset of the train split, tested on the full
test set (paper: 80%, 60 runs, Student / KD / KD+IG / KD+IG+AT).

Run r of every configuration uses the same subset (subset seed r) and the same seed r, so configurations may also be
compared pairwise; the paper's two-sample t-test (equal variances) is reported beside Welch's. Normality of each
configuration's accuracies: Lilliefors (statsmodels) and Shapiro-Wilk (scipy).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from toolkit.experiments import stats
from toolkit.experiments.common import Prepared, record_from_result, run_config
from toolkit.experiments.report import fmt, fmt_p, mean_std, pyplot, save_figure, table
from toolkit.experiments.runner import RunSpec
from toolkit.experiments.scales import StudySettings


def plan(settings: StudySettings) -> list[RunSpec]:
    return [RunSpec(f"{c}-r{r:03d}", {"configuration": c, "run": r, "seed": r, "subset_seed": r,
                                      "fraction": settings.fraction})
            for r in range(settings.runs) for c in settings.configs]


def make_run_fn(prepared: Prepared):
    from toolkit.pipeline import subset_training, train_student

    def run(spec: RunSpec, run_dir: Path) -> dict:
        p = spec.params
        data, maps = subset_training(prepared.data, prepared.maps, p["fraction"], p["subset_seed"])
        cfg = run_config(prepared.cfg, p["configuration"], p["seed"])
        result = train_student(cfg, data, prepared.teacher, maps, out_dir=run_dir, role="student",
                               device=prepared.device, configuration=p["configuration"], seed=p["seed"], progress=False)
        return record_from_result(result, prepared, configuration=p["configuration"], seed=p["seed"],
                                  checkpoint="student.pt")

    return run


def analyze(records: list[dict], settings: StudySettings) -> dict:
    configs = [c for c in settings.configs if any(r["spec"]["configuration"] == c for r in records)]
    values: dict[str, dict[int, float]] = {c: {} for c in configs}
    train_images = sorted({r.get("train_size") for r in records if r.get("train_size")})
    for r in records:
        if r["spec"]["configuration"] in values and r.get("test_acc") is not None:
            values[r["spec"]["configuration"]][r["spec"]["run"]] = float(r["test_acc"])
    summary = {c: {**stats.describe(list(values[c].values())), "normality": stats.normality(list(values[c].values()))}
               for c in configs}
    pairs = []
    for a, b in itertools.combinations(configs, 2):
        row = {"a": a, "b": b, **stats.two_sample_test(list(values[a].values()), list(values[b].values()))}
        common = sorted(set(values[a]) & set(values[b]))
        row["paired_p"] = stats.paired_test([values[a][r] for r in common], [values[b][r] for r in common])["p"]
        pairs.append(row)
    for key in ("welch_p", "student_p"):
        for row, p in zip(pairs, stats.holm([r[key] for r in pairs])):
            row[key + "_holm"] = p
    from toolkit.experiments.ablation import loss_terms

    return {"metric": "test_acc (%)", "configs": configs, "per_run": values, "summary": summary, "pairs": pairs,
            "train_images": train_images, "fraction": settings.fraction, "loss_terms": loss_terms(records, configs)}


def report_body(result: dict, folder: Path) -> str:
    parts = [f"Each run trains on a fresh stratified subset of the train split (fraction/count {result['fraction']}; "
             f"{', '.join(f'{n:,}' for n in result['train_images']) or '-'} images) and is tested on the full test set.",
             "", "## Test accuracy per configuration (last epoch, %) and normality", ""]
    rows = []
    for c, s in result["summary"].items():
        nt = s["normality"]
        rows.append([c, s["n"], mean_std(s), fmt(s["min"]), fmt(s["max"]), fmt(nt["lilliefors_D"], 3),
                     fmt_p(nt["lilliefors_p"]), fmt(nt["shapiro_W"], 3), fmt_p(nt["shapiro_p"])])
    parts.append(table(["configuration", "n", "mean ± std", "min", "max", "Lilliefors D", "Lilliefors p",
                        "Shapiro W", "Shapiro p"], rows))
    parts += ["", "Small p: evidence against normality (Lilliefors p from statsmodels' table, accurate to about 0.001-0.2; "
              "'-' where n < 4 for Lilliefors or n < 3 for Shapiro-Wilk)."]
    if result["pairs"]:
        rows = [[f"{r['a']} − {r['b']}", fmt(r["mean_diff"]), f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]",
                 fmt(r["welch_t"]), fmt_p(r["welch_p"]), fmt_p(r["welch_p_holm"]), fmt(r["student_t"]),
                 fmt_p(r["student_p"]), fmt_p(r["student_p_holm"]), fmt(r["cohen_d"]), fmt_p(r["paired_p"])]
                for r in result["pairs"]]
        parts += ["", "## Two-sample t-tests between configurations", "",
                  table(["difference", "mean diff (pts)", "95% CI (Welch)", "Welch t", "Welch p", "Welch p (Holm)",
                         "equal-var t", "equal-var p", "equal-var p (Holm)", "Cohen's d", "paired p (same subsets)"],
                        rows),
                  "", f"Holm correction over the {len(result['pairs'])} pairs, for each test separately. The paper used "
                  "the equal-variance two-sample test; Welch's does not assume equal variances. Run r of every "
                  "configuration shares subset and seed r, so the paired test is valid too."]
    from toolkit.experiments.ablation import loss_terms_table

    parts += loss_terms_table(result.get("loss_terms") or {})
    parts += ["", "![histograms](montecarlo_histograms.png)"]
    _plots(result, folder)
    return "\n".join(parts) + "\n"


def _plots(result: dict, folder: Path) -> None:
    from scipy import stats as sps

    plt = pyplot()
    configs = result["configs"]
    cols = min(2, len(configs)) or 1
    rows = (len(configs) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False, sharex=True)
    all_v = [v for c in configs for v in result["per_run"][c].values()]
    lo, hi = (min(all_v), max(all_v)) if all_v else (0, 1)
    pad = max(0.5, 0.05 * (hi - lo))
    bins = np.linspace(lo - pad, hi + pad, 16)
    for ax, c in zip(axes.flat, configs):
        v = np.asarray(list(result["per_run"][c].values()))
        ax.hist(v, bins=bins, density=True, color="C0", alpha=0.6, edgecolor="white")
        s = result["summary"][c]
        if s["std"]:
            xs = np.linspace(bins[0], bins[-1], 200)
            ax.plot(xs, sps.norm.pdf(xs, s["mean"], s["std"]), color="C3", lw=1.2, label="normal fit")
        ax.set_title(f"{c} (n={s['n']}, {mean_std(s)})", fontsize=10)
        ax.set_xlabel("test accuracy (%)")
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    fig.suptitle("Monte Carlo: test accuracy over runs on fresh subsets (bars: density; red curve: normal fit)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, folder / "montecarlo_histograms.png")
