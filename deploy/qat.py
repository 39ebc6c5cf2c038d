"""Quantization-aware distillation to an int8 QDQ model: ``python -m deploy.qat --run runs/<name> [--epochs 3] [--lr X]``.

Fine-tunes the run's student with fake quantization against its teacher (``toolkit.distill.qat``; resumable), exports
``export/student.qat.int8.onnx`` (dynamo exporter, Q/DQ nodes; full-range Clips dropped, then onnxsim) and checks it:
ONNX Runtime loads it; agreement and max |logit diff| with the PyTorch fake-quant model on the val and test images;
top-1 on val (decision) and test (reported); the ORT-optimized graph's op counts (integer kernels such as
QLinearConv vs float Conv); batch-1 latency against ``student.int8.onnx`` (PTQ) and ``student.fp32.onnx``, timed in
interleaved rounds with ``edgecommon.timing``. Writes ``export/qat.json``; the manifest is not touched
(:func:`qat_artifact` gives its entry).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from deploy.manifest import INPUT_NAME, OUTPUT_NAME
from deploy.qdq import drop_full_range_clips, kernel_summary, op_counts, optimized_op_counts
from deploy.steps import check_io, simplify_onnx
from edgecommon.hashing import sha256_file
from edgecommon.timing import TimingPlan, fixed_input, ort_callable, percentile, time_rounds
from toolkit import ToolkitError
from toolkit.experiments.report import cpu_model
from toolkit.io import atomic_write_json
from toolkit.runs import RunFolder, open_run, resolve_run

QAT_FILE = "student.qat.int8.onnx"
REPORT_FILE = "qat.json"
FUSED_SLACK = 1.10
"""QAT int8 counts as running fused integer kernels when its latency is within 10% of PTQ int8's."""


def export_qat_onnx(converted: torch.nn.Module, dst: Path, image_size: int, opset: int = 18) -> dict[str, Any]:
    """Export a converted (Q/DQ) PT2E model to ``dst`` with a dynamic batch, drop no-op Clips, simplify, check I/O."""
    example = (torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)),)
    raw = dst.with_name(dst.name.replace(".onnx", ".raw.onnx"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(converted, example, None, dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=opset, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as exc:  # noqa: BLE001 - exporters raise many exception types
        raise ToolkitError(f"QAT ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    proto = program.model_proto
    dropped = drop_full_range_clips(proto)
    onnx.save(proto, str(raw))
    try:
        record = simplify_onnx(raw, dst)
    finally:
        raw.unlink(missing_ok=True)
    check = check_io(dst)
    check["full_range_clips_dropped"] = dropped
    check["op_counts"] = op_counts(onnx.load(str(dst)))
    check["simplify_seconds"] = round(record.seconds, 2)
    return check


def ort_logits(path: Path, x_uint8: np.ndarray, batch: int = 256) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = [session.run(None, {INPUT_NAME: x_uint8[i:i + batch].astype(np.float32) / np.float32(255)})[0]
           for i in range(0, len(x_uint8), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float((logits.argmax(1) == labels).mean() * 100), 4) if len(labels) else float("nan")


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a.argmax(1) == b.argmax(1)).mean() * 100), 4)


def latency_p50(paths: dict[str, Path], image_size: int, threads: int = 1, repeats: int = 300, rounds: int = 5,
                warmup: int = 50) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of each model: median over ``rounds`` interleaved rounds of each round's p50 (ms)."""
    from deploy.runtime import create_session

    x = fixed_input(1, seed=0, shape=(3, image_size, image_size))
    fns = {k: ort_callable(create_session(p, threads), x) for k, p in paths.items()}
    per_round = time_rounds(fns, TimingPlan(warmup=warmup, runs=repeats * rounds, duration_s=0), rounds)
    return {k: {"p50_ms": round(float(np.median([percentile(t, 50) for t in r])), 4),
                "rounds_p50_ms": [round(percentile(t, 50), 4) for t in r], "runs": sum(len(t) for t in r)}
            for k, r in per_round.items()}


def load_run_config(run: RunFolder):
    """The run's RunConfig from its config.yaml (over the preset it names)."""
    from toolkit.config import build_config, load_yaml

    if not run.config.is_file():
        raise ToolkitError(f"{run.config} missing: QAT needs the run's configuration")
    return build_config(str(load_yaml(run.config).get("preset") or "cpu"), config_file=str(run.config))


def run_qat(run_path: str | os.PathLike, epochs: int = 3, lr: float | None = None, threads: int = 1,
            repeats: int = 300, rounds: int = 5, compare: dict[str, Path] | None = None, progress: bool | None = None,
            max_epochs_this_call: int | None = None, ptq_reference: str = "ptq_int8", command: str = "",
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """QAT-fine-tune the run's student, export and check ``export/student.qat.int8.onnx``; returns the report that is
    also written to ``export/qat.json`` (``{"finished": False, ...}`` when stopped early by ``max_epochs_this_call``).

    Compared: ``fp32`` (export/student.fp32.onnx), ``ptq_int8`` (export/student.int8.onnx, the export's int8 as
    shipped: with float fallback where the export needed it), ``compare`` (name -> ONNX file) and ``qat_int8``;
    the fused-kernel verdict is QAT's latency against ``ptq_reference``."""
    from toolkit.distill.qat import convert_qat_model, train_qat_student
    from toolkit.evaluate import predict_logits
    from toolkit.device import select_device
    from toolkit.pipeline import prepare_data, prepare_ig_maps, prepare_teacher

    run = open_run(run_path)
    summary = run.read_summary()
    cfg = load_run_config(run)
    device = select_device(cfg.device)
    data = prepare_data(cfg)
    teacher = prepare_teacher(cfg, run, data, device, progress=False)
    maps = prepare_ig_maps(cfg, run, teacher, data, device, progress=False)
    student_ckpt = run.root / (summary.get("student") or {}).get("checkpoint", "student.pt")
    t0 = time.perf_counter()
    model, result = train_qat_student(cfg, data, teacher, maps, run.root, student_ckpt, epochs, lr, device=device,
                                      progress=progress, max_epochs_this_call=max_epochs_this_call)
    if not result.get("finished"):
        log(f"QAT stopped after {result['epochs']} of {epochs} epoch(s); rerun to continue")
        return {"finished": False, "epochs_done": result["epochs"]}
    log(f"QAT {result['name']}: fake-quant val {result['val_acc']:.2f}%, test {result['test_acc']:.2f}%")
    export_dir = run.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".qat-staging-", dir=export_dir))
    try:
        check = export_qat_onnx(convert_qat_model(model), staging / QAT_FILE, data.image_size)
        os.replace(staging / QAT_FILE, export_dir / QAT_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    qat_path = export_dir / QAT_FILE
    sets = {"val": (data.val.images.numpy(), data.val.labels.numpy()), "test": (data.test.images.numpy(), data.test.labels.numpy())}
    fq = {k: predict_logits(model, torch.from_numpy(x), device=device).numpy() for k, (x, _) in sets.items()}
    paths = {"fp32": export_dir / "student.fp32.onnx", "ptq_int8": export_dir / "student.int8.onnx",
             **(compare or {}), "qat_int8": qat_path}
    paths = {k: Path(p) for k, p in paths.items() if Path(p).is_file()}
    logits = {k: {s: ort_logits(p, x) for s, (x, _) in sets.items()} for k, p in paths.items()}
    q = logits["qat_int8"]
    parity = {s: {"n": int(len(fq[s])), "top1_agreement": _agree(q[s], fq[s]),
                  "max_abs_logit_diff": round(float(np.abs(q[s] - fq[s]).max(initial=0.0)), 6)} for s in sets}
    log("ORT vs fake-quant PyTorch: " + ", ".join(f"{s} agreement {p['top1_agreement']:.2f}%, max |diff| "
                                                   f"{p['max_abs_logit_diff']:.4f}" for s, p in parity.items()))
    latency = latency_p50(paths, data.image_size, threads, repeats, rounds)
    models: dict[str, Any] = {}
    for key, path in paths.items():
        row = {"file": path.name, "size_bytes": path.stat().st_size, "sha256": sha256_file(path),
               "val_top1": _top1(logits[key]["val"], sets["val"][1]), "test_top1": _top1(logits[key]["test"], sets["test"][1]),
               "latency_b1_ms": latency[key]}
        if "fp32" in logits:
            row.update({f"{s}_agreement_with_fp32": _agree(logits[key][s], logits["fp32"][s]) for s in sets})
        row["optimized_ops"] = kernel_summary(optimized_op_counts(path))
        models[key] = row
    fused = None
    if ptq_reference in latency:
        ratio = latency["qat_int8"]["p50_ms"] / latency[ptq_reference]["p50_ms"]
        fused = {"reference": ptq_reference, "latency_ratio_vs_ptq": round(ratio, 4),
                 "within_10pct_of_ptq": bool(ratio <= FUSED_SLACK)}
    report = {"file": QAT_FILE, "run": str(run.root), "command": command, "cpu": cpu_model(), "threads": threads,
              "timing": {"batch": 1, "threads": threads, "repeats_per_round": repeats, "rounds": rounds,
                         "statistic": "median of per-round p50 (ms)", "timer": "edgecommon.timing.time_rounds"},
              "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "torchao": _torchao_version()},
              "qat": {k: result.get(k) for k in ("name", "base_model", "recipe", "configuration", "seed", "epochs", "lr",
                                                  "val_acc", "test_acc", "seconds")},
              "qat_history": [{k: r.get(k) for k in ("epoch", "lr", "train_loss", "train_acc", "val_acc", "seconds")}
                              for r in result.get("history", [])],
              "export_check": check, "parity_vs_fake_quant": parity, "models": models, "fused_int8": fused,
              "qat_seconds_this_call": round(time.perf_counter() - t0, 1), "finished": True}
    report["verdict"] = verdict(report)
    atomic_write_json(export_dir / REPORT_FILE, report)
    return report


def _torchao_version() -> str | None:
    try:
        import torchao

        return torchao.__version__
    except ImportError:
        return None


def verdict(report: dict[str, Any]) -> str:
    """One line: whether ORT runs integer kernels and how much of the PTQ loss QAT recovered on val."""
    m = report["models"]
    ops = m["qat_int8"]["optimized_ops"]
    parts = [f"{ops['integer_ops']} integer kernels, {ops['float_convs']} float convs in ORT's graph"]
    if report.get("fused_int8"):
        f = report["fused_int8"]
        parts.append(("fused int8 kernels" if f["within_10pct_of_ptq"] else "NOT within 10% of PTQ int8 latency")
                     + f" (x{f['latency_ratio_vs_ptq']:.2f} of {f['reference']})")
    ref = (report.get("fused_int8") or {}).get("reference", "ptq_int8")
    if "fp32" in m and ref in m:
        loss = m["fp32"]["val_top1"] - m[ref]["val_top1"]
        gain = m["qat_int8"]["val_top1"] - m[ref]["val_top1"]
        parts.append(f"{ref} loses {loss:.2f} val points; QAT {gain:+.2f} vs it"
                     + (f" ({100 * gain / loss:.0f}% of the loss recovered)" if loss > 0 else ""))
    return "; ".join(parts)


def read_qat_report(export_dir: Path, run_path: str | os.PathLike) -> dict[str, Any]:
    """``export/qat.json``; one-line ToolkitError when QAT has not run."""
    import json

    path = export_dir / REPORT_FILE
    if not path.is_file():
        raise ToolkitError(f"{path} missing: run `python -m deploy.qat --run {run_path}` first")
    return json.loads(path.read_text())


def qat_artifact(run_path: str | os.PathLike, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The QAT model's entry for the export manifest, from ``export/qat.json`` (or ``report``, already read; the file
    is verified against its sha256)."""
    export_dir = open_run(run_path).export_dir
    report = report if report is not None else read_qat_report(export_dir, run_path)
    row = report["models"]["qat_int8"]
    if sha256_file(export_dir / row["file"]) != row["sha256"]:
        raise ToolkitError(f"{export_dir / row['file']} changed since {REPORT_FILE} was written; rerun deploy.qat")
    return {"file": row["file"], "sha256": row["sha256"], "size_bytes": row["size_bytes"], "role": "student",
            "precision": "int8", "quantization": {"method": "qat", "recipe": report["qat"]["recipe"], "format": "QDQ",
                                                  "activations": "uint8 per-tensor affine",
                                                  "weights": "int8 per-channel symmetric",
                                                  "epochs": report["qat"]["epochs"], "lr": report["qat"]["lr"]},
            "accuracy": {"val_top1": row["val_top1"], "test_top1": row["test_top1"],
                         "val_agreement_with_fp32": row.get("val_agreement_with_fp32"),
                         "test_agreement_with_fp32": row.get("test_agreement_with_fp32"), "runtime": "onnxruntime CPU"},
            "latency": {"batch": 1, "threads": report["threads"], "p50_ms": row["latency_b1_ms"]["p50_ms"],
                        "cpu": report["cpu"], "vs_ptq": report.get("fused_int8")},
            "parity_vs_fake_quant": report["parity_vs_fake_quant"]}


MANIFEST_KEY = "student.qat.int8"


def record_in_manifest(run_path: str | os.PathLike, log: Callable[[str], None] = print) -> str:
    """Add the QAT model to ``export/manifest.json`` as ``student.qat.int8`` (input, output and preprocessing of the
    exported student) and ship it when it meets the export's budget: validation drop vs fp32 within ``int8.max_drop``
    and at least ``int8.latency.min_speedup`` faster than fp32 at batch 1 (both measured side by side in qat.json).
    Returns the shipped model key. The manifest is rewritten atomically and read back through its schema check."""
    import json

    from deploy.manifest import MANIFEST_NAME, read_manifest

    export_dir = open_run(run_path).export_dir
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ToolkitError(f"{path} missing: export the run first (make export RUN=...)")
    manifest = json.loads(path.read_text())
    report = read_qat_report(export_dir, run_path)
    artifact = qat_artifact(run_path, report)
    base = dict(manifest["models"]["student.fp32"])
    acc = artifact["accuracy"]
    models = report["models"]
    fp32_val = models["fp32"]["val_top1"] if "fp32" in models else None
    base.update(file=artifact["file"], sha256=artifact["sha256"], size_bytes=artifact["size_bytes"], precision="int8",
                quantization=artifact["quantization"], exporter="dynamo (torchao PT2E QAT, converted)",
                accuracy={"top1": acc["test_top1"], "split": "test", "n": manifest.get("data", {}).get("test_images"),
                          "runtime": "onnxruntime CPU", "validation": {"top1": acc["val_top1"],
                                                                      "drop_points": None if fp32_val is None
                                                                      else round(fp32_val - acc["val_top1"], 4)},
                          "agreement_with_fp32": {"val": acc["val_agreement_with_fp32"],
                                                  "test": acc["test_agreement_with_fp32"]}},
                parity={"vs_fake_quant": artifact["parity_vs_fake_quant"]})
    manifest["models"][MANIFEST_KEY] = base
    int8 = manifest.get("int8") or {}
    budget = int8.get("max_drop", 0.5)
    need = (int8.get("latency") or {}).get("min_speedup", 1.05)
    drop = base["accuracy"]["validation"]["drop_points"]
    speedup = (models["fp32"]["latency_b1_ms"]["p50_ms"] / models["qat_int8"]["latency_b1_ms"]["p50_ms"]
               if "fp32" in models else 0.0)
    if drop is not None and drop <= budget and speedup >= need:
        manifest["ship"] = {"model": MANIFEST_KEY, "reason": f"QAT int8: validation drop {drop:.2f} points (budget "
                            f"{budget:g}), {speedup:.2f}x faster than fp32 at batch 1"}
    else:
        why = (f"validation drop {drop:.2f} points vs budget {budget:g}" if drop is not None and drop > budget
               else f"{speedup:.2f}x fp32 speed at batch 1, below the {need:g}x required")
        log(f"QAT int8 recorded in the manifest, not shipped: {why}; shipping {(manifest.get('ship') or {}).get('model')}")
    atomic_write_json(path, manifest)
    read_manifest(path)  # the rewritten manifest passes the schema check
    return manifest.get("ship", {}).get("model", "")


def _print_table(report: dict[str, Any]) -> None:
    print(f"{'model':<12} {'val %':>7} {'test %':>7} {'agree val/test':>15} {'b1 ms':>7} {'KiB':>7}  ORT int/float")
    for key, m in report["models"].items():
        agree = f"{m.get('val_agreement_with_fp32', float('nan')):.1f}/{m.get('test_agreement_with_fp32', float('nan')):.1f}"
        ops = m["optimized_ops"]
        print(f"{key:<12} {m['val_top1']:>7.2f} {m['test_top1']:>7.2f} {agree:>15} {m['latency_b1_ms']['p50_ms']:>7.3f} "
              f"{m['size_bytes'] / 1024:>7.0f}  {ops['integer_ops']}/{ops['float_convs']}")
    print(report["verdict"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.qat", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished run: its name (runs/<name>) or its folder")
    p.add_argument("--epochs", type=int, default=3, help="QAT epochs (default 3)")
    p.add_argument("--lr", type=float, default=None, help="QAT learning rate (default: the student's LR / 50)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for the latency (default 1)")
    p.add_argument("--repeats", type=int, default=300, help="timed batch-1 runs per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compare", action="append", default=[], metavar="NAME=FILE",
                   help="another ONNX model to put in the side-by-side (e.g. ptq_fallback=runs/x/export/y.onnx)")
    p.add_argument("--ptq-reference", default="ptq_int8",
                   help="the model QAT's latency is held against (default ptq_int8: export/student.int8.onnx)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier QAT stage (qat_student.pt/.ckpt) first")
    p.add_argument("--max-epochs-this-call", type=int, default=None, help="stop after this many epochs (resumable)")
    args = p.parse_args(argv)
    try:
        args.run = str(resolve_run(args.run))
        compare = {}
        for item in args.compare:
            name, sep, file = item.partition("=")
            if not sep or not name or not Path(file).is_file():
                raise ToolkitError(f"--compare wants NAME=FILE with an existing file, got '{item}'")
            compare[name] = Path(file)
        if args.fresh:
            for name in ("qat_student.pt", "qat_student.ckpt"):
                (open_run(args.run).root / name).unlink(missing_ok=True)
        report = run_qat(args.run, args.epochs, args.lr, args.threads, args.repeats, args.rounds, compare,
                         max_epochs_this_call=args.max_epochs_this_call, ptq_reference=args.ptq_reference,
                         command=" ".join(["python -m deploy.qat", *(argv if argv is not None else sys.argv[1:])]),
                         log=lambda s: print(s, file=sys.stderr))
    except ToolkitError as exc:  # bad input or a failed check: one line, exit 2 (as every toolkit command)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.get("finished"):
        _print_table(report)
        print(Path(args.run) / "export" / REPORT_FILE)
        if (open_run(args.run).export_dir / "manifest.json").is_file():
            try:
                shipped = record_in_manifest(args.run, log=lambda s: print(s, file=sys.stderr))
            except ToolkitError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"manifest: {MANIFEST_KEY} recorded; ship {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
