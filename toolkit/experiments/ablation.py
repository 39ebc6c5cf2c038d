"""Ablation: the eight configurations over N seeds, paired by seed (same split, same student initialisation).

Analysis: mean ± std per configuration; paired t-tests (scipy.stats.ttest_rel) of every configuration against
Student and between every pair, with Cohen's d_z, the 95% t interval of the mean paired difference, and Holm-adjusted
p values (statsmodels) within each family of tests (vs Student; all pairs).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from toolkit.experiments import stats
from toolkit.experiments.common import Prepared, record_from_result, run_config
from toolkit.experiments.report import fmt, fmt_p, mean_std, pyplot, save_figure, table
from toolkit.experiments.runner import RunSpec
from toolkit.experiments.scales import StudySettings


def plan(settings: StudySettings) -> list[RunSpec]:
    """Seed-major order, so a partial study already holds complete pairs."""
    return [RunSpec(f"{c}-s{seed}", {"configuration": c, "seed": seed}) for seed in settings.seeds for c in settings.configs]


def make_run_fn(prepared: Prepared):
    from toolkit.pipeline import train_student

    def run(spec: RunSpec, run_dir: Path) -> dict:
        c, seed = spec.params["configuration"], spec.params["seed"]
        cfg = run_config(prepared.cfg, c, seed)
        result = train_student(cfg, prepared.data, prepared.teacher, prepared.maps, out_dir=run_dir, role="student",
                               device=prepared.device, configuration=c, seed=seed, progress=False)
        return record_from_result(result, prepared, configuration=c, seed=seed, checkpoint="student.pt")

    return run


def by_config(records: list[dict], configs: list[str], metric: str = "test_acc") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {c: {} for c in configs}
    for r in records:
        c = r["spec"]["configuration"]
        if c in out and r.get(metric) is not None:
            out[c][r["spec"]["seed"]] = float(r[metric])
    return out


def paired(values: dict[str, dict[int, float]], a: str, b: str) -> dict:
    seeds = sorted(set(values[a]) & set(values[b]))
    res = stats.paired_test([values[a][s] for s in seeds], [values[b][s] for s in seeds])
    return {"a": a, "b": b, "seeds": seeds, **res}


def analyze(records: list[dict], settings: StudySettings) -> dict:
    configs = [c for c in settings.configs if any(r["spec"]["configuration"] == c for r in records)]
    values = by_config(records, configs)
    val_values = by_config(records, configs, "val_acc")
    summary = {c: {**stats.describe(list(values[c].values())), "val": stats.describe(list(val_values[c].values()))}
               for c in configs}
    vs_student = [paired(values, c, "Student") for c in configs if c != "Student"] if "Student" in configs else []
    for row, p in zip(vs_student, stats.holm([r["p"] for r in vs_student])):
        row["p_holm"] = p
    pairs = [paired(values, a, b) for a, b in itertools.combinations(configs, 2)]
    for row, p in zip(pairs, stats.holm([r["p"] for r in pairs])):
        row["p_holm"] = p
    return {"metric": "test_acc (%)", "configs": configs, "per_seed": values, "summary": summary,
            "vs_student": vs_student, "pairs": pairs, "loss_terms": loss_terms(records, configs)}


def loss_terms(records: list[dict], configs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per configuration, each loss term's last-epoch mean over the runs (weighted as summed into the total, and
    unweighted), so a reader sees whether a term can matter: {config: {term: {"weighted", "unweighted"}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for c in configs:
        lasts = [r["history"][-1] for r in records if r["spec"]["configuration"] == c and r.get("history")]
        terms: dict[str, dict[str, float]] = {}
        for key in dict.fromkeys(k for h in lasts for k in h.get("losses", {})):
            w = [h["losses"][key] for h in lasts if key in h.get("losses", {})]
            u = [h.get("losses_unweighted", {}).get(key) for h in lasts]
            u = [v for v in u if v is not None]
            terms[key] = {"weighted": sum(w) / len(w), "unweighted": sum(u) / len(u) if u else None}
        out[c] = terms
    return out


def loss_terms_table(terms: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown lines: last-epoch mean of each loss term per configuration, and its share of the total."""
    names = list(dict.fromkeys(k for t in terms.values() for k in t))
    if not names:
        return []
    rows = []
    for c, t in terms.items():
        total = sum(v["weighted"] for v in t.values()) or float("nan")
        rows.append([c] + [f"{t[k]['weighted']:.4g} ({100 * t[k]['weighted'] / total:.1f}%)" if k in t else "-"
                           for k in names])
    return ["", "## Loss terms (last-epoch mean over runs; weighted as summed into the total, share of the total)", "",
            table(["configuration"] + names, rows),
            "", "A term with a share near 0% cannot change the result whatever its sign: check this before reading "
            "an ablation row as 'the term does nothing'."]


def _diff_row(r: dict) -> list[str]:
    ci = r["ci"]
    return [f"{r['a']} − {r['b']}", len(r["seeds"]), fmt(r["mean_diff"]), f"[{fmt(ci[0])}, {fmt(ci[1])}]", fmt(r["t"]),
            fmt_p(r["p"]), fmt_p(r.get("p_holm")), fmt(r["dz"])]


def report_body(result: dict, folder: Path) -> str:
    configs, summary = result["configs"], result["summary"]
    parts = ["## Test accuracy per configuration (last epoch, %)", ""]
    rows = [[c, s["n"], mean_std(s), fmt(s["min"]), fmt(s["max"]), f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]",
             mean_std(s["val"])] for c, s in summary.items()]
    parts.append(table(["configuration", "n", "mean ± std", "min", "max", "95% CI of mean", "val acc mean ± std"], rows))
    heads = ["difference", "n pairs", "mean diff (pts)", "95% CI", "t", "p", "p (Holm)", "d_z"]
    if result["vs_student"]:
        parts += ["", "## Paired t-tests against Student (same seed = same split and initialisation)", "",
                  table(heads, [_diff_row(r) for r in result["vs_student"]]),
                  "", f"Holm correction over the {len(result['vs_student'])} comparisons against Student."]
    if result["pairs"]:
        parts += ["", "## Paired t-tests between every pair of configurations", "",
                  table(heads, [_diff_row(r) for r in result["pairs"]]),
                  "", f"Holm correction over all {len(result['pairs'])} pairs (a separate family from the tests "
                  "against Student). d_z = mean of the paired differences / their standard deviation."]
    parts += loss_terms_table(result.get("loss_terms") or {})
    seeds = sorted({s for c in configs for s in result["per_seed"][c]})
    parts += ["", "## Per-seed test accuracy (%)", "",
              table(["seed"] + configs, [[s] + [fmt(result["per_seed"][c].get(s)) for c in configs] for s in seeds])]
    parts += ["", "![accuracy per configuration](ablation_accuracy.png)"]
    if result["vs_student"]:
        parts += ["", "![paired differences against Student](ablation_vs_student.png)"]
    _plots(result, folder)
    return "\n".join(parts) + "\n"


def _plots(result: dict, folder: Path) -> None:
    plt = pyplot()
    configs = result["configs"]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(configs)), 4))
    for i, c in enumerate(configs):
        v = list(result["per_seed"][c].values())
        ax.scatter([i] * len(v), v, color="0.6", s=14, zorder=2)
        s = result["summary"][c]
        if s.get("std") and len(v) > 1:  # no error bar for a single seed
            ax.errorbar([i], [s["mean"]], yerr=[[s["std"]]], fmt="o", color="C0", capsize=5, zorder=3)
        elif s.get("mean") is not None:
            ax.plot([i], [s["mean"]], "o", color="C0", zorder=3)
    single = all(len(result["per_seed"][c]) <= 1 for c in configs)
    ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Ablation: one seed per configuration (no spread to show)" if single
                 else "Ablation: mean ± std over seeds (blue), individual seeds (grey)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, folder / "ablation_accuracy.png")
    rows = result["vs_student"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.5))
        for i, r in enumerate(rows):
            if r["mean_diff"] is None:
                continue
            lo, hi = r["ci"]
            if lo is not None:
                ax.plot([lo, hi], [i, i], color="C0")
            ax.plot([r["mean_diff"]], [i], "o", color="C0")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), [r["a"] for r in rows])
        ax.set_xlabel("paired difference to Student (accuracy points), 95% CI")
        ax.set_title("Each configuration minus Student, paired by seed", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        save_figure(fig, folder / "ablation_vs_student.png")
