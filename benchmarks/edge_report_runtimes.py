"""report.md sections of bench-edge across runtimes (artifacts, skips, memory, Pareto, speed-ups per runtime) and the
Pareto plot (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path


def _f(v, digits: int = 2, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _p50(report: dict, key: str, batch: int = 1) -> float | None:
    rows = [r for r in report["latency"] if r["model"] == key and r["batch"] == batch]
    return min(rows, key=lambda r: r["threads"])["p50_ms"] if rows else None


def runtime_sections(report: dict) -> list[str]:
    """Markdown lines; empty for a version-1 report without the runtime keys."""
    if "artifacts" not in report:
        return []
    m, acc = report["machine"], (report.get("accuracy") or {}).get("models", {})
    mem = (report.get("memory") or {}).get("models", {})
    versions = ", ".join(f"{k} {m.get(k)}" for k in ("openvino", "executorch") if m.get(k)) or "none besides ONNX Runtime"
    lines = ["", "## Artifacts by runtime", "",
             f"Other runtimes installed: {versions}. Each row is one (model, precision, runtime, format); `<key>@<runtime>` "
             "is the export's ONNX file read by that runtime. Latency: p50 ms at batch 1, fewest threads (fixed-batch "
             "artifacts at their batch). Top-1 on the test images (`n`; fixed-batch artifacts on the first "
             f"{(report.get('accuracy') or {}).get('fixed_batch_images', '-')} in a loop at their batch); agreement: "
             "same top-1 as the fp32 ONNX twin on the same images. Memory: see below.", "",
             "| row | runtime | format | precision | fixed batch | file size | p50 ms (b1) | top-1 % | n | agreement w/ twin % "
             "| session MiB | peak RSS MiB |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = ["teacher.fp32.eager"] + [a["key"] for a in report["artifacts"]]
    info = {a["key"]: a for a in report["artifacts"]}
    for key in keys:
        a = info.get(key, {"runtime": "pytorch", "format": "eager", "precision": "fp32", "fixed_batch": None,
                           "size_bytes": None})
        c, mm = acc.get(key, {}), mem.get(key, {})
        batch = a.get("fixed_batch") or 1
        size = "-" if a.get("size_bytes") is None else f"{a['size_bytes'] / 1024:,.0f} KiB"
        agree = "(twin)" if key in ("teacher.fp32", "student.fp32") else _f(c.get("agreement_with_twin"))
        lines.append(f"| `{key}` | {a['runtime']} | {a['format']} | {a['precision']} | {a.get('fixed_batch') or '-'} | "
                     f"{size} | "
                     f"{_f(_p50(report, key, batch), 3)} | {_f(c.get('top1'))} | {c.get('n', '-')} | {agree} | "
                     f"{_f(mm.get('session_mib'), 1)} | {_f(mm.get('peak_rss_mib'), 1)} |")
    if report.get("skipped"):
        lines += ["", "Skipped:", ""] + [f"- `{s['key']}`: skipped: {s['reason']}" for s in report["skipped"]]
    if report.get("memory"):
        errors = {k: v["error"] for k, v in mem.items() if "error" in v}
        lines += ["", f"Memory: {report['memory']['method']}. `session MiB` is what loading and running the model "
                  "added to the process; `peak RSS` is the whole process (interpreter and runtime libraries included)."]
        lines += [f"- `{k}`: memory not measured: {e}" for k, e in errors.items()]
    lines += pareto_section(report) + speedup_section(report)
    return lines


def pareto_section(report: dict) -> list[str]:
    p = report.get("pareto") or {}
    if not p.get("points"):
        return []
    lines = ["", f"## Accuracy-latency Pareto frontier ({p['basis']})", "",
             "| row | runtime | precision | p50 ms | top-1 % | n | on frontier |", "|---|---|---|---:|---:|---:|---|"]
    for q in p["points"]:
        lines.append(f"| `{q['key']}` | {q['runtime']} | {q['precision']} | {q['latency_ms']:.3f} | {q['top1']:.2f} | "
                     f"{q.get('n', '-')} | {'**yes**' if q['on_frontier'] else ''} |")
    lines += ["", "What to ship for a batch-1 latency budget (the most accurate artifact within it; measured on this CPU):", ""]
    lines += [f"- {ln['text']}" for ln in p["ship_for_budget"]]
    if report.get("preset") == "smoke":
        lines += ["", "_Smoke preset: random-ish weights, the choice is not meaningful._"]
    return lines


def speedup_section(report: dict) -> list[str]:
    rows = report.get("runtime_speedups") or []
    if not rows:
        return []
    lines = ["", f"## Speed-ups of the shipped student (`{report.get('ship')}`) on each runtime (ratio of p50 latency)", "",
             "| row | runtime | batch | threads | vs teacher ORT fp32 | vs teacher PyTorch eager | vs teacher int8 same runtime |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        t8 = r.get("teacher_int8_same_runtime")
        lines.append(f"| `{r['model']}` | {r['runtime']} | {r['batch']} | {r['threads']} | "
                     f"{_f(r['vs_teacher_ort_fp32'], 2, 'x')} | {_f(r['vs_teacher_eager'], 2, 'x')} | "
                     + (f"{_f(r['vs_teacher_int8_same_runtime'], 2, 'x')} (`{t8}`)" if t8 else "- (no teacher int8 there)")
                     + " |")
    return lines


def plot_pareto(report: dict, path: Path, save) -> None:
    """Top-1 against batch-1 p50 latency, one point per row, the frontier joined and labelled."""
    from toolkit.experiments.report import pyplot, readable_log_axis

    plt = pyplot()
    p = report["pareto"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    runtimes = sorted({q["runtime"] for q in p["points"]})
    for i, rt in enumerate(runtimes):
        for precision, marker in (("fp32", "o"), ("int8", "s")):
            pts = [q for q in p["points"] if q["runtime"] == rt and q["precision"] == precision]
            if pts:
                ax.scatter([q["latency_ms"] for q in pts], [q["top1"] for q in pts], s=40, color=f"C{i}",
                           label=f"{rt} {precision}", marker=marker, alpha=0.8)
    front = [next(q for q in p["points"] if q["key"] == k) for k in p["frontier"]]
    ax.scatter([q["latency_ms"] for q in front], [q["top1"] for q in front], s=130, facecolors="none",
               edgecolors="black", linewidths=1.2)
    ax.step([q["latency_ms"] for q in front], [q["top1"] for q in front], where="post", color="black", lw=1,
            label="Pareto frontier")
    for q in front:
        ax.annotate(q["key"], (q["latency_ms"], q["top1"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    readable_log_axis(ax, [q["latency_ms"] for q in p["points"]], "x")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"p50 latency, ms ({p['basis'].split(' vs ')[-1].replace('p50 latency at ', '')})")
    ax.set_ylabel("test top-1 %")
    smoke = " (smoke preset: not meaningful)" if report.get("preset") == "smoke" else ""
    ax.set_title(f"Accuracy vs latency by runtime: {report['run']}{smoke}", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    save(fig, path)
    plt.close(fig)
