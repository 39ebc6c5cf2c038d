"""report.md tables and PNG plots (matplotlib, Agg) from the bench report dict."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.edge_report_runtimes import plot_pareto, runtime_sections
from toolkit.io import atomic_write_bytes, atomic_write_text

MODEL_LABELS = {
    "teacher.fp32.eager": "teacher PyTorch eager fp32",
    "teacher.fp32": "teacher ORT fp32",
    "student.fp32": "student ORT fp32",
    "student.int8": "student ORT int8",
    "teacher.int8": "teacher ORT int8 (baseline)",
}
MODEL_ORDER = tuple(MODEL_LABELS)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


SMOKE_NOTE = "smoke preset: figures are not meaningful, the run only proves the chain works"
"""The same words as ``toolkit.pipeline.SMOKE_NOTE`` (kept here so the report renders without importing torch)."""
LOGIT_DIFF_NOTE = ("Max |logit| difference: the largest absolute difference between two models' raw output scores "
                   "(logits, before softmax) over every test image and class. Between the ORT and the PyTorch teacher it "
                   "measures export fidelity and should be ~1e-5; between int8 and fp32 it is the quantization error, "
                   "typically 0.1-3 on a logit scale of about 10-20, harmless while the top-1 agreement stays high.")


def _run_summary(report: dict) -> dict:
    """The run's summary.json (baseline accuracy, parameter counts), or {} when the run folder is not at hand."""
    path = Path(report.get("run_dir") or "") / "summary.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _kib(n) -> str:
    return "-" if n is None else f"{n / 1024:,.0f} KiB"


def _dict_table(title: str, values: dict) -> list[str]:
    return [f"| {title} | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in values.items()]


def comparison(report: dict, summary: dict | None = None) -> dict:
    """Student against teacher (accuracy gap in points, top-1 agreement) and against its undistilled baseline, from
    the bench's own measurements plus the run's summary.json; ``notes`` and ``warnings`` as text lines."""
    summary = _run_summary(report) if summary is None else summary
    preset = report.get("preset") or summary.get("preset")
    out = {"meaningful": preset != "smoke", "notes": [], "warnings": [], "student_minus_teacher_points": None,
           "student_fp32_teacher_agreement": None, "student_minus_baseline_points": None}
    acc = report.get("accuracy") or {}
    models = acc.get("models", {})
    if "student.fp32" in models and "teacher.fp32" in models:
        gap = models["student.fp32"]["top1"] - models["teacher.fp32"]["top1"]
        out["student_minus_teacher_points"] = round(gap, 2)
        agree = acc.get("agreement", {}).get("student.fp32 vs teacher.fp32")
        out["student_fp32_teacher_agreement"] = agree
        out["notes"].append(f"Student fp32 vs teacher (ORT fp32): {gap:+.2f} points of top-1 on these {acc['n']:,} images"
                            + (f"; the two give the same top-1 class on {agree:.2f}% of them" if agree is not None else "") + ".")
        if "student.int8" in models:
            gap8 = models["student.int8"]["top1"] - models["teacher.fp32"]["top1"]
            agree8 = acc.get("agreement", {}).get("student.int8 vs teacher.fp32")
            out["notes"].append(f"Student int8 (what may ship) vs teacher: {gap8:+.2f} points"
                                + (f", same top-1 on {agree8:.2f}%" if agree8 is not None else "") + ".")
    base, stud = summary.get("baseline"), summary.get("student")
    if base and stud and base.get("test_acc") is not None and stud.get("test_acc") is not None:
        gain = stud["test_acc"] - base["test_acc"]
        out["student_minus_baseline_points"] = round(gain, 2)
        out["notes"].append(f"Distilled student vs the same student trained without distillation (summary.json, "
                            f"PyTorch test top-1): {gain:+.2f} points ({stud['test_acc']:.2f}% vs {base['test_acc']:.2f}%).")
        if gain < 0:
            out["warnings"].append(f"WARNING: the distilled student is {-gain:.2f} points BELOW its undistilled baseline: "
                                   "distillation did not help in this run"
                                   + (" (expected noise at smoke scale)." if not out["meaningful"] else "."))
    return out


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    summary = _run_summary(report)
    cmp = comparison(report, summary)
    lines = [f"# Edge benchmark: {report['run']}", ""]
    if not cmp["meaningful"]:
        lines += [f"> **{SMOKE_NOTE}.**", ""]
    lines += [f"- Created {report['created_utc']}; command `{report['command']}`",
              f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical CPUs usable); flags: "
              + ", ".join(f for f, on in m["cpu_flags"].items() if on),
              f"- Load average (1 min) at start / end: {m['load_average_1min']['start']} / {m['load_average_1min']['end']}"
              + (" -- **above the CPU count: other work shared the cores, multi-thread figures are unreliable**"
                 if max(v or 0 for v in m["load_average_1min"].values()) > m["logical_cpus"] else ""),
              f"- ONNX Runtime {m['onnxruntime']} (CPUExecutionProvider), PyTorch {m['torch']}, numpy {m['numpy']}",
              f"- Timing split into {s['interleaved_rounds']} rounds alternating between the models; fixed input "
              f"seed {s['seed']}; batches {', '.join(map(str, s['batches']))}; intra-op threads {', '.join(map(str, s['threads']))}",
              f"- Export `{report['export']['folder']}`", ""]
    lines += ["## Student vs teacher", ""]
    lines += [f"- {n}" for n in cmp["notes"]] + [f"- **{w}**" for w in cmp["warnings"]]
    if not cmp["notes"]:
        lines.append("- no accuracy measured in this run")
    lines += ["", "## Models", "",
              "| model | architecture | parameters | file | size |", "|---|---|---:|---|---:|"]
    params = {"teacher": report["models"].get("teacher.fp32.eager", {}).get("params")
              or (summary.get("teacher") or {}).get("params"),
              "student": (summary.get("student") or {}).get("params")}
    for key in MODEL_ORDER:
        e = report["models"].get(key)
        if e is None:
            continue
        n = params[key.split(".")[0]]
        lines.append(f"| {MODEL_LABELS[key]} | `{e.get('architecture')}` | {'-' if n is None else f'{n:,}'} | "
                     f"`{Path(e.get('file', '')).name}` | {_kib(e.get('size_bytes'))} |")
    lines += ["", "Parameters are the PyTorch model's (the same for fp32 and int8); sizes are the files on disk "
              "(the eager teacher's checkpoint size is not a deployment size and is left out).", ""]
    lines += ["## Settings", ""] + _dict_table("ONNX Runtime session option", s["ort_settings"]) + [""]
    lines += _dict_table("timing plan (per model, batch and thread count)", s["timing"]) + [""]
    lines += ["(`runs` 0 means: time for `duration_s` seconds, at least `min_runs` and at most `max_runs` calls, after "
              "`warmup` untimed calls.)", ""]
    lines += ["## Latency (ms per batch)", "",
              "| model | batch | threads | runs | mean | min | p50 | p90 | p99 | images/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["latency"]:
        lines.append(f"| {MODEL_LABELS.get(r['model'], r['model'])} | {r['batch']} | {r['threads']} | {r['runs']} | "
                     f"{r['mean_ms']:.3f} | {r['min_ms']:.3f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['images_per_s']:.0f} |")
    lines += ["", "## Speed-ups of the student int8 (ratio of p50 latency, same run)", "",
              "| batch | threads | vs teacher ORT fp32 | vs teacher PyTorch eager | student fp32 vs teacher ORT fp32 | "
              "(min-latency basis: vs ORT fp32 / vs eager) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in report["speedups"]:
        mb = r["min_basis"]
        lines.append(f"| {r['batch']} | {r['threads']} | {r['int8_vs_teacher_ort_fp32']:.2f}x | "
                     f"{r['int8_vs_teacher_eager']:.2f}x | {r['student_fp32_vs_teacher_ort_fp32']:.2f}x | "
                     f"{mb['int8_vs_teacher_ort_fp32']:.2f}x / {mb['int8_vs_teacher_eager']:.2f}x |")
    acc = report.get("accuracy")
    if acc:
        ne = acc.get("n_exact_images")
        lines += ["", f"## Accuracy ({acc['n']} test images{' (the first ones)' if acc['subset'] else ''}; {acc['data']})", ""]
        if ne is not None:
            lines += [f"{ne} of them bit-exact, {acc['n'] - ne} JPEG-decoded; top-1 given on each part too.", ""]
        cols = [("top1_exact_images", "bit-exact images %", "top-1 on the test images stored losslessly"),
                ("top1_jpeg_images", "JPEG images %", "top-1 on the JPEG-decoded test images"),
                ("export_top1", "export-time top-1 %", "top-1 measured by the exporter (manifest), for comparison")]
        present = [c for c in cols if any(acc["models"][k].get(c[0]) is not None for k in acc["models"])]
        lines += ["| model | top-1 % | " + " | ".join(c[1] for c in present) + " |", "|---|---:|" + "---:|" * len(present)]
        for key in MODEL_ORDER:
            if key in acc["models"]:
                a = acc["models"][key]
                lines.append(f"| {MODEL_LABELS[key]} | {a['top1']:.2f} | "
                             + " | ".join(_fmt(a.get(c[0]), 2) for c in present) + " |")
        if present:
            lines += ["", "Columns: " + "; ".join(f"{c[1]}: {c[2]}" for c in present)
                      + " (\"-\": not measured for that model, e.g. the eager teacher was not exported)."]
        lines += ["", "| agreement (same top-1) | % |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in acc["agreement"].items()]
        g = acc["int8"]
        verdict = {True: "within the gate", False: "OUTSIDE the gate", None: "no gate in the manifest"}[g["within_gate"]]
        lines += ["", f"int8 drop (student fp32 - int8): {g['drop_points']:.2f} points; export gate "
                  f"{_fmt(g['max_drop'], 2)} points: {verdict}.",
                  f"Max |logit| difference teacher ORT vs PyTorch eager: {acc['max_abs_logit_diff']['teacher.fp32 vs teacher.fp32.eager']:.2e}; "
                  f"student int8 vs fp32: {acc['max_abs_logit_diff']['student.int8 vs student.fp32']:.3f}.", "",
                  f"_{LOGIT_DIFF_NOTE}_", ""]
        classes = list(next(iter(acc["models"].values()))["per_class"])
        lines += ["### Per-class top-1 %", "", "| class | " + " | ".join(MODEL_LABELS[k] for k in MODEL_ORDER if k in acc["models"]) + " |",
                  "|---|" + "---:|" * sum(k in acc["models"] for k in MODEL_ORDER)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(f"{acc['models'][k]['per_class'][c]:.1f}" for k in MODEL_ORDER
                                                  if k in acc["models"]) + " |")
    a64 = report.get("aarch64", {})
    lines += ["", "## aarch64 (ONNX Runtime and OpenVINO aarch64 builds under qemu user-mode emulation)", ""]
    if a64.get("status") == "ok":
        g = a64["guest"]
        n_img = a64["n_images"]
        n_img = ", ".join(f"{MODEL_LABELS.get(k, k)} {v}" for k, v in n_img.items()) if isinstance(n_img, dict) else n_img
        lines += [f"Test images per model: {n_img}; qemu CPU `{a64['qemu_cpu']}`; guest {g['machine']} Python {g['python']}, onnxruntime {g['onnxruntime']}, "
                  f"numpy {g['numpy']}; {a64['emulator']}. Overall: {'PASS' if a64['passed'] else 'FAIL'}"
                  + "".join(f"; {rt} {'pass' if ok else 'FAIL'}" for rt, ok in a64.get("passed_by_runtime", {}).items())
                  + ".", "",
                  "| model | runtime | images | top-1 aarch64 % | top-1 x86 % | agreement % | max abs logit diff | check | "
                  "emulated batch-1 p50 ms |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for role, r in a64["models"].items():
            if r.get("status", "ok") != "ok":
                lines.append(f"| {MODEL_LABELS.get(role, role)} | {r.get('runtime', '')} | 0 | | | | | skipped: "
                             f"{r['message']} | |")
                continue
            lines.append(f"| {MODEL_LABELS.get(role, role)} | {r['runtime']} | {r['n']} | {r['top1_aarch64']:.2f} | {r['top1_x86']:.2f} | "
                         f"{r['prediction_agreement']:.2f} | {r['max_abs_logit_diff']:.2e} | {r['check']}: "
                         f"{'pass' if r['passed'] else 'FAIL'} | {r['emulated_batch1_p50_ms']:.2f} (emulated) |")
        ov = a64.get("openvino")
        if ov:
            lines += ["", f"OpenVINO under qemu: {ov['status']}" + (f", openvino {ov['version']}" if ov.get("version") else "")
                      + (f" ({ov['message']})" if ov.get("message") else "") + "."]
        lines += ["", f"_{a64['note']}._"]
    else:
        lines.append(f"{a64.get('status', 'skipped')}: {a64.get('message', '')}")
    lines += runtime_sections(report)
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_latency(report: dict, path: Path) -> None:
    """Per-thread-count panels: p50 ms per image by batch, one line per model, whiskers p50..p99."""
    from matplotlib.ticker import NullLocator

    from toolkit.experiments.report import pyplot, readable_log_axis

    plt = pyplot()
    threads = sorted({r["threads"] for r in report["latency"]})
    fig, axes = plt.subplots(1, len(threads), figsize=(4.8 * len(threads) + 2.2, 4), squeeze=False, sharey=True)
    values = []
    for ax, t in zip(axes[0], threads):
        for i, key in enumerate(MODEL_ORDER):
            rows = sorted((r for r in report["latency"] if r["model"] == key and r["threads"] == t), key=lambda r: r["batch"])
            if not rows:
                continue
            b = [r["batch"] for r in rows]
            p50 = [r["p50_ms"] / r["batch"] for r in rows]
            p99 = [r["p99_ms"] / r["batch"] for r in rows]
            values += p50 + p99
            ax.errorbar(b, p50, yerr=[[0] * len(rows), [hi - lo for lo, hi in zip(p50, p99)]], marker="o", capsize=3,
                        label=MODEL_LABELS[key], color=f"C{i}")
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in report["latency"]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(f"{t} intra-op thread(s)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    readable_log_axis(axes[0][0], values, "y")
    axes[0][0].set_ylabel("ms per image (p50; whisker up to p99)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"Latency by model and batch: {report['run']} ({report['machine']['cpu_model']})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_vs_latency(report: dict, path: Path) -> None:
    """Top-1 against batch-1 p50 latency at the fewest threads, one point per model."""
    from toolkit.experiments.report import legend_outside, pyplot, readable_log_axis

    plt = pyplot()
    acc = report["accuracy"]["models"]
    t = min(r["threads"] for r in report["latency"])
    b = min(r["batch"] for r in report["latency"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = []
    for i, key in enumerate(MODEL_ORDER):
        row = next((r for r in report["latency"] if r["model"] == key and r["threads"] == t and r["batch"] == b), None)
        if row is None or key not in acc:
            continue
        xs.append(row["p50_ms"] / b)
        ax.scatter(xs[-1], acc[key]["top1"], s=60, label=f"{MODEL_LABELS[key]} ({acc[key]['top1']:.1f}%)",
                   marker="s" if key.endswith("int8") else "o", color=f"C{i}")
    ax.set_xscale("log")
    readable_log_axis(ax, xs, "x")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"p50 latency, ms per image (batch {b}, {t} thread(s))")
    ax.set_ylabel(f"top-1 % ({report['accuracy']['n']:,} test images)")
    smoke = " (smoke preset: not meaningful)" if report.get("preset") == "smoke" else ""
    ax.set_title(f"Accuracy vs latency: {report['run']}{smoke}", fontsize=10)
    legend_outside(ax)
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_outputs(report: dict, bench_dir: Path) -> list[str]:
    """Write the plots, then report.md; returns plot file names (relative to ``bench_dir``)."""
    plots = ["latency_by_model.png"]
    plot_latency(report, bench_dir / plots[0])
    if report.get("accuracy"):
        plots.append("accuracy_vs_latency.png")
        plot_accuracy_vs_latency(report, bench_dir / plots[1])
    if (report.get("pareto") or {}).get("points"):
        plots.append("pareto.png")
        plot_pareto(report, bench_dir / plots[-1], _save)
    report["plots"] = plots
    cmp = comparison(report)
    report["comparison"] = cmp
    atomic_write_text(bench_dir / "report.md", render_markdown(report))
    if not cmp["meaningful"]:
        print(f"  ** {SMOKE_NOTE} **")
    for line in cmp["notes"] + cmp["warnings"]:
        print(f"  {line}")
    return plots
