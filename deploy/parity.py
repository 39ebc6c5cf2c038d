"""A self-contained numerical parity check: ONNX Runtime outputs of a model vs reference outputs.

In the spirit of onnxsim's model checking: run the ONNX file on fixed inputs, compare every output element with a
reference (here the PyTorch model), and stop with the figures when they differ. Needs only numpy and onnxruntime;
the reference is any callable ``float32 (N, 3, H, W) -> logits (N, C)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from toolkit import ToolkitError

DEFAULT_ATOL = 1e-4


class ParityError(ToolkitError):
    """ONNX Runtime and the reference disagree beyond tolerance; the message carries the figures."""


@dataclass
class SetParity:
    """Figures for one named input set."""

    n: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_mismatches: int
    batch_sizes: list[int]


@dataclass
class ParityReport:
    stage: str
    atol: float
    sets: dict[str, SetParity]

    @property
    def max_abs_diff(self) -> float:
        return max(s.max_abs_diff for s in self.sets.values())

    @property
    def top1_mismatches(self) -> int:
        return sum(s.top1_mismatches for s in self.sets.values())

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.atol and self.top1_mismatches == 0)

    def summary(self) -> str:
        parts = [f"{name}: max |diff| {s.max_abs_diff:.2e}, top-1 mismatches {s.top1_mismatches}/{s.n}"
                 for name, s in self.sets.items()]
        return f"{self.stage}: max |logit diff| {self.max_abs_diff:.2e} (atol {self.atol:.0e}); " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"atol": self.atol, "max_abs_diff": self.max_abs_diff, "top1_mismatches": self.top1_mismatches,
                "sets": {k: asdict(v) for k, v in self.sets.items()}}


def run_onnx(session: ort.InferenceSession, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Outputs of a one-input, one-output session on ``x`` (N, ...) in chunks of ``batch_size``."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def check_parity(onnx_path: str | os.PathLike | bytes, reference: Callable[[np.ndarray], np.ndarray],
                 inputs: Mapping[str, np.ndarray], stage: str, atol: float = DEFAULT_ATOL, batch_size: int = 64,
                 single: int = 4, raise_on_fail: bool = True) -> ParityReport:
    """Compare ONNX Runtime (CPU) with ``reference`` on each named float32 input set (N, 3, H, W).

    Each set runs in chunks of ``batch_size`` and, for its first ``single`` samples, at batch 1 (so a model that
    lost its dynamic batch axis fails too). Passing needs max |diff| <= ``atol`` on every logit and identical top-1.
    Raises ParityError with the figures when ``raise_on_fail`` and the check fails.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(onnx_path if isinstance(onnx_path, bytes) else str(onnx_path), opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        raise ParityError(f"{stage}: ONNX Runtime cannot load the model: {str(exc).splitlines()[0][:200]}") from None
    sets = {}
    for name, x in inputs.items():
        x = np.ascontiguousarray(x, dtype=np.float32)
        ref = np.asarray(reference(x), dtype=np.float32)
        try:
            got = run_onnx(session, x, batch_size)
            k = min(single, len(x))
            got_single = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(k)])
        except Exception as exc:  # noqa: BLE001
            raise ParityError(f"{stage}: ONNX Runtime failed on '{name}': {str(exc).splitlines()[0][:200]}") from None
        if got.shape != ref.shape:
            raise ParityError(f"{stage}: output shape {got.shape} differs from reference {ref.shape} on '{name}'")
        diff = np.abs(got.astype(np.float64) - ref)
        diff_single = np.abs(got_single.astype(np.float64) - ref[:k])
        mismatches = int((got.argmax(1) != ref.argmax(1)).sum()) + int((got_single.argmax(1) != ref[:k].argmax(1)).sum())
        max_diff = float(max(diff.max(initial=0.0), diff_single.max(initial=0.0)))
        if not np.isfinite(got).all():
            max_diff = float("inf")
        sets[name] = SetParity(len(x), max_diff, float(diff.mean()) if diff.size else 0.0, mismatches, [1, batch_size])
    report = ParityReport(stage, atol, sets)
    if raise_on_fail and not report.passed:
        raise ParityError("parity check failed, " + report.summary())
    return report
