"""report.md tables and PNG plots (matplotlib, Agg) from the bench report dict."""

from __future__ import annotations

from pathlib import Path

from toolkit.io import atomic_write_bytes, atomic_write_text

MODEL_LABELS = {
    "teacher.fp32.eager": "teacher PyTorch eager fp32",
    "teacher.fp32": "teacher ORT fp32",
    "student.fp32": "student ORT fp32",
    "student.int8": "student ORT int8",
}
MODEL_ORDER = tuple(MODEL_LABELS)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"# Edge benchmark: {report['run']}", ""]
    lines += [f"- Created {report['created_utc']}; command `{report['command']}`",
              f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical CPUs usable); flags: "
              + ", ".join(f for f, on in m["cpu_flags"].items() if on),
              f"- Load average (1 min) at start / end: {m['load_average_1min']['start']} / {m['load_average_1min']['end']}"
              + (" -- **above the CPU count: other work shared the cores, multi-thread figures are unreliable**"
                 if max(v or 0 for v in m["load_average_1min"].values()) > m["logical_cpus"] else ""),
              f"- ONNX Runtime {m['onnxruntime']} (CPUExecutionProvider), PyTorch {m['torch']}, numpy {m['numpy']}",
              f"- Session options: {s['ort_settings']}",
              f"- Timing: {s['timing']}, split into {s['interleaved_rounds']} rounds alternating between the models; fixed input seed {s['seed']}; batches {s['batches']}; intra-op threads {s['threads']}",
              f"- Models: teacher `{report['models']['teacher.fp32.eager']['architecture']}`, "
              f"student `{report['models']['student.fp32']['architecture']}`; export `{report['export']['folder']}`", ""]
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
        lines += ["| model | top-1 % | bit-exact images % | JPEG images % | export-time top-1 % |", "|---|---:|---:|---:|---:|"]
        for key in MODEL_ORDER:
            if key in acc["models"]:
                a = acc["models"][key]
                lines.append(f"| {MODEL_LABELS[key]} | {a['top1']:.2f} | {_fmt(a.get('top1_exact_images'), 2)} | "
                             f"{_fmt(a.get('top1_jpeg_images'), 2)} | {_fmt(a.get('export_top1'), 2)} |")
        lines += ["", "| agreement (same top-1) | % |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in acc["agreement"].items()]
        g = acc["int8"]
        verdict = {True: "within the gate", False: "OUTSIDE the gate", None: "no gate in the manifest"}[g["within_gate"]]
        lines += ["", f"int8 drop (student fp32 - int8): {g['drop_points']:.2f} points; export gate "
                  f"{_fmt(g['max_drop'], 2)} points: {verdict}.",
                  f"Max |logit| difference teacher ORT vs PyTorch eager: {acc['max_abs_logit_diff']['teacher.fp32 vs teacher.fp32.eager']:.2e}; "
                  f"student int8 vs fp32: {acc['max_abs_logit_diff']['student.int8 vs student.fp32']:.3f}.", ""]
        classes = list(next(iter(acc["models"].values()))["per_class"])
        lines += ["### Per-class top-1 %", "", "| class | " + " | ".join(MODEL_LABELS[k] for k in MODEL_ORDER if k in acc["models"]) + " |",
                  "|---|" + "---:|" * sum(k in acc["models"] for k in MODEL_ORDER)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(f"{acc['models'][k]['per_class'][c]:.1f}" for k in MODEL_ORDER
                                                  if k in acc["models"]) + " |")
    a64 = report.get("aarch64", {})
    lines += ["", "## aarch64 (ONNX Runtime aarch64 build under qemu user-mode emulation)", ""]
    if a64.get("status") == "ok":
        g = a64["guest"]
        lines += [f"Test images per model: {a64['n_images']}; qemu CPU `{a64['qemu_cpu']}`; guest {g['machine']} Python {g['python']}, onnxruntime {g['onnxruntime']}, "
                  f"numpy {g['numpy']}; {a64['emulator']}. Overall: {'PASS' if a64['passed'] else 'FAIL'}.", "",
                  "| model | runtime | images | top-1 aarch64 % | top-1 x86 % | agreement % | max abs logit diff | check | "
                  "emulated batch-1 p50 ms |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for role, r in a64["models"].items():
            lines.append(f"| {MODEL_LABELS.get(role, role)} | {r['runtime']} | {r['n']} | {r['top1_aarch64']:.2f} | {r['top1_x86']:.2f} | "
                         f"{r['prediction_agreement']:.2f} | {r['max_abs_logit_diff']:.2e} | {r['check']}: "
                         f"{'pass' if r['passed'] else 'FAIL'} | {r['emulated_batch1_p50_ms']:.2f} (emulated) |")
        lines += ["", f"_{a64['note']}._"]
    else:
        lines.append(f"{a64.get('status', 'skipped')}: {a64.get('message', '')}")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in report["latency"]})
    fig, axes = plt.subplots(1, len(threads), figsize=(5.2 * len(threads), 4), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], threads):
        for key in MODEL_ORDER:
            rows = sorted((r for r in report["latency"] if r["model"] == key and r["threads"] == t), key=lambda r: r["batch"])
            if not rows:
                continue
            b = [r["batch"] for r in rows]
            p50 = [r["p50_ms"] / r["batch"] for r in rows]
            p99 = [r["p99_ms"] / r["batch"] for r in rows]
            ax.errorbar(b, p50, yerr=[[0] * len(rows), [hi - lo for lo, hi in zip(p50, p99)]], marker="o", capsize=3,
                        label=MODEL_LABELS[key])
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in report["latency"]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(f"{t} intra-op thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ms per image (p50, whisker to p99)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Latency by model and batch: {report['run']} ({report['machine']['cpu_model']})", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_vs_latency(report: dict, path: Path) -> None:
    """Top-1 against batch-1 p50 latency at the fewest threads, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = report["accuracy"]["models"]
    t = min(r["threads"] for r in report["latency"])
    b = min(r["batch"] for r in report["latency"])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key in MODEL_ORDER:
        row = next((r for r in report["latency"] if r["model"] == key and r["threads"] == t and r["batch"] == b), None)
        if row is None or key not in acc:
            continue
        ax.scatter(row["p50_ms"] / b, acc[key]["top1"], s=60, label=f"{MODEL_LABELS[key]} ({acc[key]['top1']:.1f}%)",
                   marker="s" if key.endswith("int8") else "o")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, ms per image (batch {b}, {t} thread(s))")
    ax.set_ylabel(f"top-1 % ({report['accuracy']['n']} test images)")
    ax.set_title(f"Accuracy vs latency: {report['run']}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_outputs(report: dict, bench_dir: Path) -> list[str]:
    """Write the plots, then report.md; returns plot file names (relative to ``bench_dir``)."""
    plots = ["latency_by_model.png"]
    plot_latency(report, bench_dir / plots[0])
    if report.get("accuracy"):
        plots.append("accuracy_vs_latency.png")
        plot_accuracy_vs_latency(report, bench_dir / plots[1])
    report["plots"] = plots
    atomic_write_text(bench_dir / "report.md", render_markdown(report))
    return plots
