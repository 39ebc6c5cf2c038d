"""The run folder contract: what ``make distill`` writes and ``make export`` / ``make bench-edge`` read.

runs/<name>/
  config.yaml        the resolved RunConfig
  teacher.pt         teacher checkpoint (toolkit.models.checkpoint format: {"format", "model", "state_dict", "meta"})
  student.pt         distilled student checkpoint (same format)
  baseline.pt        the same student trained without distillation (when cfg.baseline)
  metrics.jsonl      one JSON object per epoch and stage
  summary.json       {"preset", "configuration", "config", "data", "seed", "teacher": {name, params, test_acc, checkpoint},
                      "student": {...}, "baseline": {...} | absent, "compression_factor", "split": {...}, ...}
  ig/                IG map cache (fingerprinted)
  export/            ONNX models + manifest.json (deploy.export)
  bench/             report.json, report.md, plots (benchmarks.bench_edge)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit import ToolkitError


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def checkpoint(self, role: str) -> Path:
        """``role`` is teacher, student or baseline."""
        return self.root / f"{role}.pt"

    @property
    def ig_dir(self) -> Path:
        return self.root / "ig"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"

    def read_summary(self) -> dict:
        if not self.summary.is_file():
            raise ToolkitError(f"{self.root} is not a finished run: {self.summary.name} missing (run `make distill RUN=...` first)")
        try:
            return json.loads(self.summary.read_text())
        except json.JSONDecodeError as exc:
            raise ToolkitError(f"{self.summary} is not valid JSON: {exc}") from None


def open_run(path: str | Path) -> RunFolder:
    root = Path(path)
    if not root.is_dir():
        raise ToolkitError(f"run folder not found: {root}")
    return RunFolder(root)


def finished_runs(runs_dir: str | Path = "runs") -> list[str]:
    """Names of the folders under ``runs_dir`` that hold a summary.json (runs ``make distill`` finished)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "summary.json").is_file())


def finished_runs_text(runs_dir: str | Path = "runs") -> str:
    names = finished_runs(runs_dir)
    return (f"finished runs in {runs_dir}/: {', '.join(names)}" if names
            else f"no finished run in {runs_dir}/ yet (make distill RUN=<name> first)")


def resolve_run(text: str | Path | None, runs_dir: str | Path = "runs") -> Path:
    """A run given by name (``demo``: ``runs_dir/demo``) or by path (``runs/demo``, ``/abs/path``), as a folder Path.

    A bare name means ``runs_dir/<name>`` when that folder exists; any other text is taken as a path. Raises one
    ToolkitError line listing the finished runs when neither is a folder."""
    if text is None or not str(text).strip():
        raise ToolkitError(f"name the run: RUN=<name> (make) or --run <name or folder>; {finished_runs_text(runs_dir)}")
    raw = str(text).strip()
    by_name = Path(runs_dir) / raw
    if "/" not in raw and "\\" not in raw and by_name.is_dir():
        return by_name
    path = Path(raw)
    if path.is_dir():
        return path
    bare = "/" not in raw and "\\" not in raw
    raise ToolkitError(f"run folder not found: {raw}" + (f" (nor {by_name})" if bare and by_name != path else "")
                       + f"; {finished_runs_text(runs_dir)}")


def move_aside(root: str | Path) -> Path | None:
    """Rename an existing run folder to ``<root>.old-<UTC timestamp>`` (never deleted); returns the new path."""
    import time

    root = Path(root)
    if not root.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = root.with_name(f"{root.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = root.with_name(f"{root.name}.old-{stamp}-{n}")
        n += 1
    root.rename(target)
    return target
