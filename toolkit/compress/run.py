"""``make compress``: the most accurate student of a run's teacher under a latency budget, timed on the user's device.

Stages (each resumable; settings and progress in ``runs/<name>/compress/state.json``):

1. candidates: profile and export every candidate (``toolkit.compress.candidates``) into ``runs/<name>/candidates/``;
2. timing: the device's timings file (``deploy.time_candidates`` run on the board) or, without one, the host timed the
   same way (the report says so) -> ``compress/timings.json``;
3. budget: keep the candidates whose selected p50 is within the budget (none: one line naming the fastest, exit 2);
4. proxy: a short KD(+IG) training of each kept candidate on a seeded subset, the same for all -> ``compress/proxy/``;
5. final: the best ``finalists`` by proxy accuracy distilled with the run's full settings -> ``compress/final/``;
6. winner: the best finalist (validation accuracy) as a run folder ``compress/winner/`` exported by ``deploy.export``
   and benchmarked by ``benchmarks.bench_edge``;
7. report: ``compress/report.md``, ``results.json`` and plots (``toolkit.compress.report``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecommon.hashing import fingerprint, sha256_file
from toolkit import ToolkitError
from toolkit.io import atomic_write_json

COMPRESS_DIR = "compress"
STATE_FILE = "state.json"


@dataclass
class CompressConfig:
    run: str
    budget_ms: float | None
    candidates: list[str] | None = None
    """Model names; None: the teacher family's members / truncations (``default_candidates``)."""
    device_timings: str | None = None
    """A ``deploy.time_candidates`` JSON file from the target device; None: time the host instead."""
    threads: int = 1
    """Intra-op threads when the host is timed (a device file records its own)."""
    timing_runs: int = 200
    proxy_epochs: int = 2
    proxy_subset: int | None = 5000
    """Train rows of the proxy training (seeded, stratified); None: all."""
    finalists: int = 2
    calib_images: int = 64
    max_float_nodes: int | None = None
    """The winner's export: most nodes its int8 fallback keeps in float (None: the export's default)."""
    bench: bool = True
    candidates_only: bool = False
    """Stop after writing the candidates folder (to copy it to the device and time it there first)."""
    runs_dir: str = "runs"
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.budget_ms is None and self.candidates_only:
            pass
        elif not (isinstance(self.budget_ms, (int, float)) and np.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ToolkitError(f"--budget-ms must be a latency in ms > 0, got {self.budget_ms}")
        if self.proxy_epochs < 1 or self.finalists < 1 or self.calib_images < 1 or self.timing_runs < 1:
            raise ToolkitError("--proxy-epochs, --finalists, --calib-images and --timing-runs must be >= 1")
        if self.proxy_subset is not None and self.proxy_subset < 10:
            raise ToolkitError(f"--proxy-subset must be >= 10 images, got {self.proxy_subset}")
        if self.threads < 0:
            raise ToolkitError(f"--threads must be >= 0, got {self.threads}")


def load_run_config(run):
    """The run's RunConfig from its config.yaml over the preset it names (as ``deploy.qat`` reads it)."""
    from toolkit.config import build_config, load_yaml

    if not run.config.is_file():
        raise ToolkitError(f"{run.config} missing: make compress needs the run's configuration (make distill first)")
    return build_config(str(load_yaml(run.config).get("preset") or "cpu"), config_file=str(run.config))


class State:
    """``compress/state.json``: each stage's fingerprint and outcome."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"stages": {}}

    def done(self, stage: str, fp: str) -> dict | None:
        s = self.data["stages"].get(stage)
        return s if s and s.get("fingerprint") == fp else None

    def set(self, stage: str, fp: str, **values) -> None:
        self.data["stages"][stage] = {"fingerprint": fp, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **values}
        atomic_write_json(self.path, self.data)


def _timings(cc: CompressConfig, cand: dict, out: Path, state: State, log) -> dict:
    from deploy.time_candidates import time_candidates
    from toolkit.compress.select import read_timings

    path = out / "timings.json"
    if cc.device_timings:
        doc = read_timings(Path(cc.device_timings), cand)
        doc["source"] = {"kind": "device", "file": str(cc.device_timings), "sha256": sha256_file(cc.device_timings)}
        atomic_write_json(path, doc)
        log(f"timings: device file {cc.device_timings} ({doc['device']['cpu_model']}, {doc['threads']} thread(s))")
        return doc
    fp = fingerprint({"candidates": cand["fingerprint"], "threads": cc.threads, "runs": cc.timing_runs})
    if state.done("timing", fp) and path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("source", {}).get("kind") == "host":
            log(f"timings: the host's, kept from an earlier call ({path})")
            return doc
    log("timings: no device file given (--device-timings): timing this host instead")
    doc = time_candidates(cand_dir(cc), cc.threads, runs=cc.timing_runs, log=log)
    doc["source"] = {"kind": "host", "note": "no device timings file given: this host was timed instead"}
    atomic_write_json(path, doc)
    state.set("timing", fp, source="host")
    return doc


def cand_dir(cc: CompressConfig) -> Path:
    from toolkit.compress.candidates import CANDIDATES_DIR
    from toolkit.runs import resolve_run

    return resolve_run(cc.run, cc.runs_dir) / CANDIDATES_DIR


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _winner_folder(run, cfg, name: str, ckpt: Path, rec: dict, teacher_info: dict, out: Path) -> Path:
    """A run folder (toolkit.runs contract) holding the run's teacher and the winner, for deploy.export/bench_edge."""
    from toolkit.config import save_config

    w = out / "winner"
    w.mkdir(parents=True, exist_ok=True)
    c = copy.deepcopy(cfg)
    c.student.model = name
    import yaml

    if not (w / "config.yaml").is_file() or yaml.safe_load((w / "config.yaml").read_text()) != c.to_dict():
        save_config(c, w / "config.yaml")
    for src, dst in ((run.checkpoint("teacher"), w / "teacher.pt"), (ckpt, w / "student.pt")):
        if not dst.is_file() or sha256_file(dst) != sha256_file(src):
            _link_or_copy(src, dst)
    base = run.read_summary() if run.summary.is_file() else {}
    summary = {k: base.get(k) for k in ("preset", "configuration", "config", "data", "seed", "image_size", "classes",
                                          "split") if k in base}
    summary.update(run=f"{run.root.name}/compress/winner", teacher={**teacher_info, "checkpoint": "teacher.pt"},
                   student={"name": name, "params": rec.get("params"), "test_acc": rec.get("test_acc"),
                            "val_acc": rec.get("val_acc"), "checkpoint": "student.pt"},
                   compression_factor=round(teacher_info["params"] / rec["params"], 2) if rec.get("params") else None,
                   note="made by make compress: the run's teacher and the chosen student")
    if not (w / "summary.json").is_file() or json.loads((w / "summary.json").read_text()) != summary:
        atomic_write_json(w / "summary.json", summary)
    return w


def _export_and_bench(cc: CompressConfig, w: Path, state: State, log) -> dict:
    from deploy.export import ExportConfig, run_export
    from deploy.fallback import Int8Config
    from deploy.manifest import MANIFEST_NAME

    fp = fingerprint({"student": sha256_file(w / "student.pt"), "teacher": sha256_file(w / "teacher.pt"),
                      "bench": cc.bench, "threads": cc.threads, "max_float_nodes": cc.max_float_nodes})
    done = state.done("winner", fp)
    if done and (w / "export" / MANIFEST_NAME).is_file() and (not cc.bench or (w / "bench" / "report.json").is_file()):
        log(f"winner export{' and bench' if cc.bench else ''}: kept from an earlier call ({w})")
        return done
    int8 = Int8Config(allow_budget_miss=True, timing_threads=max(cc.threads, 1))
    if cc.max_float_nodes is not None:
        int8.max_float_nodes = cc.max_float_nodes
    manifest = run_export(w, ExportConfig(int8=int8), log=log)
    info = {"ship": manifest.shipped_student, "ship_reason": (manifest.ship or {}).get("reason"),
            "models": {k: {"file": e.file, "test_top1": e.accuracy.get("top1"),
                           "val_top1": e.accuracy.get("validation", {}).get("top1")}
                       for k, e in manifest.models.items()}}
    if cc.bench:
        from benchmarks.bench_edge import config_from_args, run_bench

        argv = ["--run", str(w), "--quick", "--no-aarch64", "--batches", "1", "--threads", str(max(cc.threads, 1))]
        report = run_bench(config_from_args(argv), command="python -m benchmarks.bench_edge " + " ".join(argv))
        info["bench"] = {"report": str(w / "bench" / "report.md"), "speedups": report.get("speedups")}
    state.set("winner", fp, **info)
    return state.data["stages"]["winner"]


def run_compress(cc: CompressConfig, log: Callable[[str], None] = print) -> dict:
    """All stages; returns the results document (also ``compress/results.json``)."""
    from toolkit.compress.candidates import build_candidates, check_candidates, default_candidates
    from toolkit.compress.report import write_report
    from toolkit.compress.select import latency_rows, score, spearman, train_candidates, within_budget
    from toolkit.device import select_device
    from toolkit.pipeline import prepare_data, prepare_ig_maps, prepare_teacher, teacher_result
    from toolkit.runs import open_run, resolve_run

    cc.validate()
    t0 = time.perf_counter()
    run = open_run(resolve_run(cc.run, cc.runs_dir))
    if not run.checkpoint("teacher").is_file():
        raise ToolkitError(f"{run.root} has no teacher.pt: make teacher (or make distill) RUN={run.root.name} first")
    cfg = load_run_config(run)
    names = (check_candidates(cc.candidates, cfg.teacher.model) if cc.candidates else None)
    out = run.root / COMPRESS_DIR
    out.mkdir(parents=True, exist_ok=True)
    state = State(out / STATE_FILE)
    device = select_device(cfg.device)
    data = prepare_data(cfg)
    names = names or default_candidates(cfg.teacher.model, data.num_classes, data.image_size)
    log(f"compress {run.root.name}: teacher {cfg.teacher.model}, {len(names)} candidates ({', '.join(names)}), "
        + (f"budget {cc.budget_ms:g} ms p50 at batch 1" if cc.budget_ms else "candidates only"))
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(data.train), min(cc.calib_images, len(data.train)), replace=False))
    calib = data.train.images[rows].numpy().astype(np.float32) / 255
    cand = build_candidates(run.root / "candidates", names, cfg.teacher.model, run.checkpoint("teacher"),
                            data.num_classes, data.image_size, calib, seed=cfg.seed, log=log)
    if cc.candidates_only:
        log(f"candidates ready in {cand_dir(cc)}: copy it (with deploy/ and edgecommon/) to the device, run "
            f"`python -m deploy.time_candidates candidates --out device-timings.json` there, then rerun with "
            "--device-timings device-timings.json (docs/compress.md)")
        return {"candidates": cand}
    timings = _timings(cc, cand, out, state, log)
    rows_l = latency_rows(cand, timings)
    dev = timings["device"]
    device_line = (f"{dev['cpu_model']} ({dev['cores']} cores, {dev['os']} {dev['machine']}, onnxruntime "
                   f"{dev['onnxruntime']}, {timings['threads']} thread(s))")
    host = "this host, " if timings["source"]["kind"] == "host" else ""
    ok = within_budget(rows_l, cc.budget_ms, host + device_line)
    log(f"within {cc.budget_ms:g} ms: " + ", ".join(f"{r['name']} {r['p50_ms']:.3f} ms ({r['form']})" for r in ok))
    teacher = prepare_teacher(cfg, run, data, device, progress=False)
    maps = prepare_ig_maps(cfg, run, teacher, data, device, progress=False)
    t_info = teacher_result(cfg, run, teacher, data, device)
    t_sha = sha256_file(run.checkpoint("teacher"))
    n_proxy = min(cc.proxy_subset or len(data.train), len(data.train))
    log(f"proxy: {cc.proxy_epochs} epoch(s) of {cfg.configuration} on {n_proxy:,} "
        f"training images for {len(ok)} candidate(s)")
    proxy = train_candidates(out / "proxy", [r["name"] for r in ok], cfg, data, teacher, maps, device, t_sha,
                             epochs=cc.proxy_epochs, subset=cc.proxy_subset, log=log)
    ranked = sorted(ok, key=lambda r: (-score(proxy[r["name"]]), r["p50_ms"]))
    finalists = [r["name"] for r in ranked[:cc.finalists]]
    log(f"final: full distillation ({cfg.student.epochs} epochs, run settings) of {', '.join(finalists)}")
    final = train_candidates(out / "final", finalists, cfg, data, teacher, maps, device, t_sha, log=log)
    winner = max(finalists, key=lambda n: (score(final[n]), -next(r["p50_ms"] for r in ok if r["name"] == n)))
    rho = spearman([score(proxy[n]) for n in finalists], [score(final[n]) for n in finalists])
    w = _winner_folder(run, cfg, winner, out / "final" / final[winner]["checkpoint"], final[winner], t_info, out)
    export = _export_and_bench(cc, w, state, log)
    results = {"run": str(run.root), "budget_ms": cc.budget_ms, "teacher": t_info, "device": dev,
               "timing_source": timings["source"], "threads": timings["threads"], "plan": timings.get("plan"),
               "teacher_timings": timings["results"].get("teacher"), "device_line": device_line,
               "rows": [{**r, "within_budget": r in ok, "proxy": proxy.get(r["name"]), "final": final.get(r["name"])}
                        for r in rows_l],
               "proxy_settings": {"epochs": cc.proxy_epochs, "train_images": min(cc.proxy_subset or len(data.train),
                                                                                 len(data.train)),
                                  "configuration": cfg.configuration},
               "final_settings": {"epochs": cfg.student.epochs, "train_images": len(data.train),
                                  "configuration": cfg.configuration},
               "finalists": finalists, "winner": winner, "rank_correlation": rho, "export": export,
               "winner_dir": str(w), "seconds_this_call": round(time.perf_counter() - t0, 1)}
    write_report(out, results)
    wr = next(r for r in rows_l if r["name"] == winner)
    log(f"winner: {winner} ({wr['p50_ms']:.3f} ms p50 {wr['form']}, val {score(final[winner]):.2f}%, test "
        f"{final[winner].get('test_acc') or 0:.2f}%; export ships {export.get('ship')}); report {out / 'report.md'}")
    return results
