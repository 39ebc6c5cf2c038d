"""Guest side of the aarch64 check: run under ``qemu-aarch64 -L sysroot sysroot/usr/bin/python3.11 infer.py ...``.

Needs only numpy and onnxruntime (and the standard library), plus the repository's torch-free ``edgecommon`` and
``deploy`` packages, which the host puts on the guest's PYTHONPATH. Times with the project's one timer
(``edgecommon.timing``). Uses the device runtime ``deploy.runtime.Classifier`` when it is importable and accepts the
manifest, else a plain ONNX Runtime session. Reads uint8 images
(N, 3, 32, 32) from a .npy written by the x86 side, writes ``logits_<role>.npy`` per model and ``guest.json``
(platform, versions, runtime used, emulated latency). Latency here is under qemu user-mode emulation on another
CPU: it is labelled "emulated" and is never a device latency.

``--runtime openvino``: the same ONNX files with OpenVINO (when its aarch64 wheel is on the PYTHONPATH), through the
device-side ``deploy.targets.runtimes.open_runner`` the x86 side also uses; writes ``logits_<role>@openvino.npy`` and
``guest_openvino.json``, rewritten after every model so a crash or a timeout keeps the models already done. The host
runs it as a separate process, so OpenVINO failing under qemu never costs the ONNX Runtime rows.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecommon.timing import TimingPlan, percentile, time_callable


def _plain_predictor(path: Path, input_name: str, output_name: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run([output_name], {input_name: x})[0]


def make_predictor(export_dir: Path, role: str, entry: dict) -> tuple[object, str]:
    """``(fn, runtime)`` where ``fn(float32 (N, 3, H, W)) -> logits (N, C)``; device runtime first, plain ORT else."""
    try:
        from deploy.runtime import Classifier  # noqa: PLC0415 - optional, only when the repo's deploy/ is on the path

        clf = Classifier(export_dir, model=role, threads=1)
        return clf.logits, "deploy.runtime.Classifier"
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - a manifest the runtime refuses (e.g. a newer schema): fall back
        print(f"note: deploy.runtime refused {role} ({str(exc).splitlines()[0][:120]}); using plain onnxruntime",
              file=sys.stderr)
    inp = entry.get("input", {}).get("name", "input")
    out = entry.get("output", {}).get("name", "logits")
    return _plain_predictor(export_dir / entry["file"], inp, out), "onnxruntime (plain)"


def _openvino_predictor(export_dir: Path, role: str, entry: dict) -> tuple[object, str]:
    from deploy.targets.runtimes import open_runner  # noqa: PLC0415 - imports openvino on demand

    return open_runner(export_dir / entry["file"], "openvino", 1), "openvino"


def _write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--export", required=True, type=Path)
    p.add_argument("--images", required=True, type=Path, help="uint8 (N, 3, 32, 32) .npy")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--counts", default="teacher.fp32=32,student.fp32=32,student.int8=500",
                   help="role=N: run the model on the first N images")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--latency-runs", type=int, default=5)
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="onnxruntime (device runtime or plain session) or openvino (deploy.targets.runtimes)")
    args = p.parse_args()

    manifest = json.loads((args.export / "manifest.json").read_text())
    images = np.load(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
              "onnxruntime": ort.__version__, "n_images": int(len(images)), "models": {}}
    ov = args.runtime == "openvino"
    suffix, json_name = ("@openvino", "guest_openvino.json") if ov else ("", "guest.json")
    if ov:
        from deploy.targets.runtimes import missing  # noqa: PLC0415 - imports openvino on demand

        why = missing("openvino")
        if why:  # the host marks every OpenVINO row skipped with this reason
            report["openvino_missing"] = why
            _write_json(args.out / json_name, report)
            return 0
        report["openvino"] = importlib.metadata.version("openvino")
    for item in args.counts.split(","):
        role, n = item.split("=")
        n = min(int(n), len(images))
        try:
            predict, runtime = (_openvino_predictor if ov else make_predictor)(args.export, role, manifest["models"][role])
            t0 = time.perf_counter()
            chunks = []
            for start in range(0, n, args.batch):
                x = np.ascontiguousarray(images[start:min(start + args.batch, n)].astype(np.float32) * np.float32(1 / 255))
                chunks.append(np.asarray(predict(x), dtype=np.float32))
            total_s = time.perf_counter() - t0
            np.save(args.out / f"logits_{role}{suffix}.npy", np.concatenate(chunks))
            one = np.ascontiguousarray(images[:1].astype(np.float32) * np.float32(1 / 255))
            times = time_callable(lambda: predict(one), TimingPlan(warmup=1, runs=args.latency_runs, duration_s=0))
        except Exception as exc:  # noqa: BLE001 - OpenVINO failing on one model skips that row; ORT errors stay fatal
            if not ov:
                raise
            report["models"][role] = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}
            print(f"{role}{suffix}: failed: {report['models'][role]['error']}", file=sys.stderr, flush=True)
            _write_json(args.out / json_name, report)
            continue
        p50 = percentile(times, 50)
        report["models"][role] = {"runtime": runtime, "n_images": n, "emulated_eval_s": total_s,
                                  "emulated_batch1_p50_ms": p50, "emulated_batch1_runs": len(times)}
        print(f"{role}{suffix}: {runtime}, emulated batch-1 p50 {p50:.2f} ms (qemu, not device latency)", flush=True)
        if ov:  # keep what is done if a later model crashes the process or the host's timeout stops it
            _write_json(args.out / json_name, report)
    _write_json(args.out / json_name, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
