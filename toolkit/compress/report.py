"""``compress/report.md``, ``results.json`` and two plots: every candidate's device latency, proxy and final accuracy,
the Pareto frontier, the teacher on the same device, the choice made and how the proxy ranking compared with the
final one."""

from __future__ import annotations

from pathlib import Path

from toolkit.experiments.report import fmt, pyplot, save_figure, table
from toolkit.io import atomic_write_json, atomic_write_text

PLOT_PARETO = "accuracy_vs_latency.png"
PLOT_LATENCY = "latency.png"


def acc(rec: dict | None, key: str = "val_acc") -> float | None:
    return None if not rec else rec.get(key)


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the frontier of (name, latency, accuracy): no other point is as fast and more accurate, or faster and
    as accurate."""
    out = []
    for n, lat, a in points:
        if not any((l2 <= lat and a2 > a) or (l2 < lat and a2 >= a) for n2, l2, a2 in points if n2 != n):
            out.append(n)
    return out


def _plots(results: dict, folder: Path, front: list[str]) -> None:
    plt = pyplot()
    rows, budget = results["rows"], results["budget_ms"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar([r["name"] for r in rows], [r["p50_ms"] for r in rows],
           color=["C2" if r["within_budget"] else "C7" for r in rows])
    t = results.get("teacher_timings") or {}
    for form, style in (("fp32", "--"), ("int8", ":")):
        if form in t:
            ax.axhline(t[form]["p50_ms"], color="C3", ls=style, lw=1,
                       label=f"teacher {form} {t[form]['p50_ms']:.2f} ms")
    if budget <= 3 * max([r["p50_ms"] for r in rows] + [v["p50_ms"] for v in t.values()]):
        ax.axhline(budget, color="k", lw=1.2, label=f"budget {budget:g} ms")
    ax.set_ylabel("p50 latency, ms (batch 1, faster shipped form)")
    ax.set_title("Candidates on " + results["device"]["cpu_model"][:60], fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.legend(fontsize=7)
    save_figure(fig, folder / PLOT_LATENCY)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pts = [(r["p50_ms"], acc(r["proxy"]), r["name"]) for r in rows if acc(r["proxy"]) is not None]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", label="proxy (short training)")
        for x, y, n in pts:
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")
        fr = sorted(p for p in pts if p[2] in front)
        ax.plot([p[0] for p in fr], [p[1] for p in fr], color="C0", lw=1, ls="--", label="Pareto frontier (proxy)")
    fin = [(r["p50_ms"], acc(r["final"]), r["name"]) for r in rows if acc(r["final"]) is not None]
    if fin:
        ax.scatter([p[0] for p in fin], [p[1] for p in fin], color="C1", marker="*", s=120, label="fully distilled")
    if budget <= 3 * max([r["p50_ms"] for r in rows]):  # a far larger budget would squash the points
        ax.axvline(budget, color="k", lw=1.2, label=f"budget {budget:g} ms")
    ax.set_xlabel("p50 latency on the device, ms (batch 1)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Within the budget: accuracy vs latency; winner {results['winner']}", fontsize=9)
    save_figure(fig, folder / PLOT_PARETO)


def write_report(folder: Path, results: dict) -> None:
    rows, budget = results["rows"], results["budget_ms"]
    front = pareto([(r["name"], r["p50_ms"], acc(r["proxy"])) for r in rows if acc(r["proxy"]) is not None])
    results["pareto_frontier"] = front
    _plots(results, folder, front)
    src = results["timing_source"]
    where = ("**the device that wrote the timings file** (`python -m deploy.time_candidates`, file `" + src.get("file", "") + "`)"
             if src["kind"] == "device" else "**this host: no device timings file was given**, so the latencies are "
             "the training machine's, not the board's (see docs/compress.md to time your device)")
    t = results.get("teacher_timings") or {}
    teacher = results["teacher"]
    body = [f"# make compress: {Path(results['run']).name}, budget {budget:g} ms", "",
            f"Latency measured on {where}: {results['device_line']}; batch 1, p50/p90 of "
            f"{(results.get('plan') or {}).get('runs', '-')} timed calls per model in interleaved rounds. The latency "
            "that counts is the faster shipped form (int8 only when at least 1.05x faster than fp32, the export's "
            "rule).", "",
            f"Teacher {teacher['name']} on the same device: fp32 {fmt(t.get('fp32', {}).get('p50_ms'), 3)} ms, "
            f"int8 {fmt(t.get('int8', {}).get('p50_ms'), 3)} ms p50; test accuracy {fmt(teacher.get('test_acc'))}%.",
            "", "## Candidates", ""]
    hdr = ["candidate", "params", "CF", "MFLOPs", "fp32 p50/p90 ms", "int8 p50/p90 ms", "form", "within budget",
           "proxy val %", "final val %", "final test %", "Pareto"]
    trs = []
    for r in rows:
        tm = r["timings"]
        pf = lambda f: f"{tm[f]['p50_ms']:.3f} / {tm[f]['p90_ms']:.3f}" if f in tm else "-"  # noqa: E731
        trs.append([r["name"] + (" **(winner)**" if r["name"] == results["winner"] else ""), f"{r['params']:,}",
                    f"{r['compression_factor']:.2f}x", fmt(r["mflops"], 1), pf("fp32"), pf("int8"), r["form"],
                    "yes" if r["within_budget"] else "no", fmt(acc(r["proxy"])), fmt(acc(r["final"])),
                    fmt(acc(r["final"], "test_acc")), "yes" if r["name"] in front else ""])
    tt = [f"{t[f]['p50_ms']:.3f} / {t[f]['p90_ms']:.3f}" if f in t else "-" for f in ("fp32", "int8")]
    trs.append([f"teacher {teacher['name']} (reference)", f"{teacher['params']:,}", "1.00x", "-", *tt, "-", "-", "-",
                "-", fmt(teacher.get("test_acc")), ""])
    body += [table(hdr, trs), ""]
    ps, fs = results["proxy_settings"], results["final_settings"]
    rho = results.get("rank_correlation")
    body += ["## Choice", "",
             f"Proxy: {ps['epochs']} epoch(s) of {ps['configuration']} on {ps['train_images']:,} training images "
             f"(seeded, the same for every candidate within the budget). Finalists (best proxy validation accuracy): "
             f"{', '.join(results['finalists'])}, each fully distilled with the run's settings ({fs['epochs']} "
             f"epochs on {fs['train_images']:,} images). Winner by final validation accuracy: "
             f"**{results['winner']}**.", "",
             ("Proxy vs final ranking of the finalists: Spearman rank correlation "
              f"{rho:+.2f}." if rho is not None else
              "Rank correlation of proxy and final: not defined (fewer than two finalists, or ties)."), ""]
    ex = results.get("export") or {}
    if ex:
        body += [f"Export of the winner (`{results['winner_dir']}/export/`): ships **{ex.get('ship')}** "
                 f"({ex.get('ship_reason')}).", ""]
        row = next(r for r in rows if r["name"] == results["winner"])
        shipped = (ex.get("ship") or "").rsplit(".", 1)[-1]
        if shipped in row["timings"] and shipped != row["form"]:
            p50 = row["timings"][shipped]["p50_ms"]
            body += [f"Note: the winner was selected at its {row['form']} latency ({row['p50_ms']:.3f} ms), but the "
                     f"export ships {shipped}, which runs at {p50:.3f} ms p50 on the device: "
                     + ("still within the budget." if p50 <= budget else f"**over the {budget:g} ms budget**; "
                        "try `make export` options (--calibration auto, --max-float-nodes, QAT) on the winner run "
                        "folder, or a tighter candidate."), ""]
        models = ex.get("models") or {}
        body += [table(["model", "test top-1 %", "val top-1 %"],
                       [[k, fmt(v.get("test_top1")), fmt(v.get("val_top1"))] for k, v in models.items()]), ""]
        if ex.get("bench"):
            body += [f"Benchmark: `{ex['bench']['report']}`.", ""]
    body += [f"![latency]({PLOT_LATENCY})", "", f"![accuracy vs latency]({PLOT_PARETO})", ""]
    atomic_write_text(folder / "report.md", "\n".join(body))
    atomic_write_json(folder / "results.json", results)
