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
