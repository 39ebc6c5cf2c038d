"""Time compression candidates on the device: ``python -m deploy.time_candidates candidates/ --out timings.json``.

Reads ``candidates/candidates.json`` (written by ``make compress``, ``toolkit.compress``) and the ``.onnx`` files it
lists, checks each file's sha256, and times every model (each candidate's fp32 and int8, and the teacher's for
reference) at batch 1 with ONNX Runtime's CPU provider and ``--threads`` intra-op threads, with the project's one
timer (``edgecommon.timing``): ``--warmup`` untimed calls per model, then ``--runs`` timed calls per model spread
over ``--rounds`` rounds that alternate between all the models (so a busy spell falls on all alike); p50/p90 per model.
Writes one JSON file naming the device (CPU model, cores, machine, OS, Python and ONNX Runtime versions).

Imports only numpy, onnxruntime, the standard library and ``edgecommon`` (no torch, no Pillow, no toolkit): copy
``deploy/`` and ``edgecommon/`` (or install the ``edge-distill-runtime`` wheel) and the candidates folder to the board.
Exit 2 with one ``error:`` line on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from edgecommon import ToolkitError
from edgecommon.hashing import sha256_file
from edgecommon.timing import TimingPlan, fixed_input, ort_callable, summarize, time_interleaved

CANDIDATES_FILE = "candidates.json"
TIMINGS_FORMAT = "edge-distill-candidate-timings"
FORMS = ("fp32", "int8")
REFERENCE = "teacher"
"""Key of the teacher's entry in ``results`` (timed for reference, never selected)."""


def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo ``model name`` (x86) or ``Model``/``Hardware`` (ARM boards), the device-tree model,
    macOS sysctl, else ``platform.processor()``."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for key in ("model name", "model", "hardware", "cpu model"):
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == key and value.strip():
                return value.strip()
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or "unknown CPU"
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info() -> dict:
    import onnxruntime as ort

    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": ort.__version__, "hostname": platform.node()}


def read_candidates(folder: str | os.PathLike) -> tuple[Path, dict]:
    """(folder, the parsed candidates.json); a folder or the json file itself may be given."""
    path = Path(folder)
    if path.is_dir():
        path = path / CANDIDATES_FILE
    if not path.is_file():
        raise ToolkitError(f"{path} not found: pass the candidates folder that `make compress` wrote "
                           "(runs/<name>/candidates/)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
        raise ToolkitError(f"{path} is not a candidates file (no 'candidates' list)")
    return path.parent, doc


def model_files(folder: Path, doc: dict, verify: bool = True) -> dict[str, dict[str, Path]]:
    """{candidate name or "teacher": {"fp32": path, "int8": path}}, each file checked against its sha256."""
    entries = [(c["name"], c) for c in doc["candidates"]]
    if doc.get("teacher"):
        entries.append((REFERENCE, doc["teacher"]))
    out: dict[str, dict[str, Path]] = {}
    for name, entry in entries:
        out[name] = {}
        for form in FORMS:
            f = (entry.get("files") or {}).get(form)
            if not f:
                continue
            path = folder / f["file"]
            if not path.is_file():
                raise ToolkitError(f"{path} missing: copy the whole candidates folder")
            if verify and f.get("sha256") and sha256_file(path) != f["sha256"]:
                raise ToolkitError(f"{path} does not match its sha256 in {CANDIDATES_FILE}: re-copy the folder")
            out[name][form] = path
    return out


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        raise ToolkitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None


def time_candidates(folder: str | os.PathLike, threads: int = 1, warmup: int = 20, runs: int = 200, rounds: int = 5,
                    only: list[str] | None = None, log=None) -> dict:
    """Time every model of a candidates folder; returns the timings document (see the module docstring)."""
    if threads < 0 or warmup < 0 or runs < 1 or rounds < 1:
        raise ToolkitError("--threads >= 0, --warmup >= 0, --runs >= 1 and --rounds >= 1 are required")
    root, doc = read_candidates(folder)
    files = model_files(root, doc)
    if only:
        unknown = [n for n in only if n not in files]
        if unknown:
            raise ToolkitError(f"unknown candidate(s) {', '.join(unknown)}; in {CANDIDATES_FILE}: {', '.join(files)}")
        files = {k: v for k, v in files.items() if k in only or k == REFERENCE}
    size = int(doc.get("image_size") or 32)
    x = fixed_input(1, seed=0, shape=(3, size, size))
    fns = {f"{name}|{form}": ort_callable(_session(path, threads), x)
           for name, forms in files.items() for form, path in forms.items()}
    if log:
        log(f"timing {len(fns)} models ({len(files)} candidates incl. the teacher) at batch 1, {threads or 'default'} "
            f"thread(s): {warmup} warm-up + {runs} timed calls each in {rounds} interleaved rounds")
    plan = TimingPlan(warmup=warmup, runs=runs, duration_s=0)
    times = time_interleaved(fns, plan, rounds)
    results: dict[str, dict] = {}
    for key, t in times.items():
        name, form = key.split("|")
        s = summarize(t)
        results.setdefault(name, {})[form] = {"p50_ms": round(s.p50_ms, 4), "p90_ms": round(s.p90_ms, 4),
                                              "mean_ms": round(s.mean_ms, 4), "min_ms": round(s.min_ms, 4),
                                              "runs": s.runs}
    return {"format": TIMINGS_FORMAT, "version": 1, "device": device_info(),
            "threads": threads if threads > 0 else "onnxruntime default",
            "plan": {"batch": 1, "warmup": warmup, "runs": runs, "rounds": rounds, "image_size": size,
                     "timer": "edgecommon.timing.time_interleaved", "statistic": "p50/p90 of all timed calls (ms)"},
            "candidates_fingerprint": doc.get("fingerprint"),
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.time_candidates", description=__doc__.splitlines()[0])
    p.add_argument("candidates", help="the candidates folder (runs/<name>/candidates/, copied to the device)")
    p.add_argument("--out", default="device-timings.json", help="JSON file to write (default device-timings.json)")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads, as your application will run (default 1; 0 = ORT's default)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per model (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--only", default=None, help="comma-separated candidate names (default all)")
    args = p.parse_args(argv)
    try:
        doc = time_candidates(args.candidates, args.threads, args.warmup, args.runs, args.rounds,
                              [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None,
                              log=lambda s: print(s, file=sys.stderr))
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)
    d = doc["device"]
    print(f"# {d['cpu_model']}, {d['cores']} cores, {d['os']} {d['machine']}, onnxruntime {d['onnxruntime']}, "
          f"{doc['threads']} thread(s); p50 / p90 ms at batch 1")
    for name, forms in doc["results"].items():
        print(f"{name:28s} " + "  ".join(f"{form} {r['p50_ms']:.3f} / {r['p90_ms']:.3f}" for form, r in forms.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
