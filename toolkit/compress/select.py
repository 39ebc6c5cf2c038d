"""Selection: device latency per candidate, the budget filter, proxy ranking, full distillation of the finalists.

Latency used for selection: per candidate, the faster of its shipped forms: int8 when fp32 p50 / int8 p50 reaches the
export's ``min_speedup`` (``deploy.fallback.Int8Config``, 1.05x: the export's ship rule), else fp32. (The export can
still ship fp32 when int8 misses its accuracy budget; the report then says so.)

Proxy and final training reuse the compression sweep's machinery (``toolkit.experiments.runner.Runner`` with one
``RunSpec`` per candidate, ``toolkit.pipeline.train_student``): each candidate trains in its own folder, finished ones
are recorded in ``results.jsonl`` and skipped on a rerun, an interrupted one resumes from its epoch checkpoint, and
records made with other settings are never reused (their folders are moved to ``stale/``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

from edgecommon.hashing import fingerprint
from toolkit import ToolkitError

TIMINGS_FORMAT = "edge-distill-candidate-timings"


def min_speedup() -> float:
    from deploy.fallback import Int8Config

    return Int8Config.min_speedup


def read_timings(path: Path, candidates: dict) -> dict:
    """A timings file (``deploy.time_candidates``) checked against the candidates document it must belong to."""
    if not Path(path).is_file():
        raise ToolkitError(f"device timings file not found: {path}")
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != TIMINGS_FORMAT:
        raise ToolkitError(f"{path} is not a timings file of python -m deploy.time_candidates")
    if doc.get("candidates_fingerprint") != candidates["fingerprint"]:
        raise ToolkitError(f"{path} timed another set of candidates (fingerprint {doc.get('candidates_fingerprint')} "
                           f"!= {candidates['fingerprint']}): copy the current candidates folder to the device and "
                           "run python -m deploy.time_candidates again")
    missing = [c["name"] for c in candidates["candidates"] if c["name"] not in doc.get("results", {})]
    if missing:
        raise ToolkitError(f"{path} has no timings for {', '.join(missing)}: time the whole candidates folder")
    return doc


def shipped_latency(result: dict) -> tuple[str, float, float]:
    """(form, p50 ms, p90 ms) of the faster shipped form of one candidate's timings."""
    f32, i8 = result.get("fp32"), result.get("int8")
    if i8 and (not f32 or f32["p50_ms"] / max(i8["p50_ms"], 1e-12) >= min_speedup()):
        return "int8", i8["p50_ms"], i8["p90_ms"]
    return "fp32", f32["p50_ms"], f32["p90_ms"]


def latency_rows(candidates: dict, timings: dict) -> list[dict]:
    """One row per candidate: profile, both forms' timings, the selected form and its p50/p90."""
    rows = []
    for c in candidates["candidates"]:
        r = timings["results"][c["name"]]
        form, p50, p90 = shipped_latency(r)
        rows.append({"name": c["name"], "slug": c["slug"], "params": c["params"],
                     "compression_factor": c["compression_factor"], "mflops": c["mflops"], "timings": r,
                     "form": form, "p50_ms": p50, "p90_ms": p90})
    return rows


def within_budget(rows: list[dict], budget_ms: float, device: str) -> list[dict]:
    """The rows whose selected p50 is within ``budget_ms``; none: one ToolkitError line naming the fastest."""
    ok = [r for r in rows if r["p50_ms"] <= budget_ms]
    if not ok:
        fastest = min(rows, key=lambda r: r["p50_ms"])
        raise ToolkitError(f"no candidate within {budget_ms:g} ms: the fastest is {fastest['name']} at "
                           f"{fastest['p50_ms']:.3f} ms p50 ({fastest['form']}) on {device}")
    return ok


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation of two paired lists (average ranks for ties); None below 2 pairs or no spread."""
    import numpy as np

    if len(a) < 2:
        return None

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for x in np.unique(v):
            r[v == x] = r[v == x].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


def score(rec: dict) -> float:
    """What ranks a trained candidate: its validation accuracy (test accuracy only for a run without validation)."""
    v = rec.get("val_acc")
    return float(v if v is not None else rec.get("test_acc") or 0.0)


def _settings(cfg, extra: dict) -> dict:
    from toolkit.config import fingerprint_settings
    from toolkit.experiments.common import RESULT_NEUTRAL_KEYS
    from toolkit.experiments.runner import flatten_settings

    values = {k: v for k, v in cfg.to_dict().items() if k not in RESULT_NEUTRAL_KEYS and k != "student"}
    values["student"] = {k: v for k, v in cfg.student.__dict__.items() if k != "model"}
    return {**fingerprint_settings(flatten_settings(values)), **extra}


def train_candidates(folder: Path, names: list[str], cfg, data, teacher, maps, device, teacher_sha: str,
                     epochs: int | None = None, subset: int | None = None, log: Callable[[str], None] = print
                     ) -> dict[str, dict]:
    """Distil each of ``names`` from the run's teacher with the run's settings (``epochs``/``subset``: the proxy's
    shorter training on a seeded stratified subset of the train rows); returns {name: record}. Resumable through
    ``toolkit.experiments.runner.Runner`` in ``folder`` (results.jsonl + runs/<slug>/)."""
    from toolkit.compress.candidates import slug
    from toolkit.experiments.runner import RunSpec, Runner, load_results
    from toolkit.pipeline import subset_training, train_student

    cfg = copy.deepcopy(cfg)
    cfg.progress = False
    if epochs is not None:
        cfg.student.epochs = epochs
    if subset is not None and subset < len(data.train):
        data, maps = subset_training(data, maps, subset, cfg.seed)
    flat = _settings(cfg, {"compress.train_rows": len(data.train), "compress.teacher_sha256": teacher_sha})
    fp = fingerprint(flat)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [RunSpec(slug(n), {"model": n}) for n in names]
    runner = Runner(folder, fp, flat, rerun_stale=True)
    stale = runner.stale(specs)
    if stale:
        log(f"{folder}: {len(stale)} earlier result(s) were made with other settings: retrained (old folders moved "
            f"to {folder / 'stale'})")

    def run(spec: RunSpec, run_dir: Path) -> dict:
        name = spec.params["model"]
        c = copy.deepcopy(cfg)
        c.student.model = name
        res = train_student(c, data, teacher, maps, run_dir, role="student", device=device, seed=cfg.seed,
                            progress=False, model_name=name)
        if not res.get("finished", True):
            raise ToolkitError(f"training of {name} stopped after {res.get('epochs')} epochs")
        pct = lambda v: "-" if v is None else f"{v:.2f}%"  # noqa: E731
        log(f"  {name}: val {pct(res.get('val_acc'))}, test {pct(res.get('test_acc'))} after {res.get('epochs')} "
            f"epoch(s) "
            f"on {len(data.train):,} images ({res.get('seconds') or 0:.0f} s)")
        keep = ("name", "params", "train_size", "test_acc", "val_acc", "epochs", "seconds")
        return {**{k: res.get(k) for k in keep}, "checkpoint": str((run_dir / "student.pt").relative_to(folder)),
                "configuration": res.get("configuration")}

    runner.run(specs, run, log=log)
    recs = load_results(folder, fp)
    return {n: recs[slug(n)] for n in names if slug(n) in recs}
