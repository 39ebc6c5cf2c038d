"""Report helpers: hardware description, the report header, Markdown tables, number formatting, Agg plots."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware() -> dict:
    """CPU model, logical cores, torch intra-op threads, and the CUDA device if any."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def hardware_line(hw: dict) -> str:
    text = f"{hw.get('cpu')}, {hw.get('cores')} logical cores, torch {hw.get('torch')} with {hw.get('torch_threads')} thread{'' if hw.get('torch_threads') == 1 else 's'}"
    if hw.get("gpu"):
        text += f"; GPU {hw['gpu']}"
    return text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers to fixed digits, None/NaN to '-', p values in scientific notation below 1e-3."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def mean_std(summary: dict, digits: int = 2) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    if summary.get("std") is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are str()-ed (format them first)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def header(title: str, study: dict, total_runs: int, done_runs: int, extra: Sequence[str] = ()) -> str:
    """The top of every report: command, scale/preset, data, hardware, time taken, completeness."""
    invocations = study.get("invocations", [])
    commands = [inv["command"] for inv in invocations] or [study.get("command", "-")]
    wall = sum(inv.get("seconds") or 0 for inv in invocations)
    lines = [f"# {title}", ""]
    if study.get("scale") == "smoke" or study.get("preset") == "smoke":
        lines += ["> **smoke scale: figures are not meaningful, the run only proves the chain works.**", ""]
    lines.append(f"- **Command**: `{commands[0]}`")
    for other in dict.fromkeys(commands[1:]):
        if other != commands[0]:
            lines.append(f"  - also run as: `{other}`")
    lines.append(f"- **Scale**: {study.get('scale')} (run preset `{study.get('preset')}`; overrides: "
                 f"{', '.join('`' + o + '`' for o in study.get('overrides', [])) or 'none'})")
    lines.append(f"- **Data**: {study.get('data', '-')}")
    hosts = {inv.get("hardware_line") for inv in invocations if inv.get("hardware_line")}
    lines.append(f"- **Hardware**: {'; '.join(sorted(hosts)) or hardware_line(hardware())}")
    lines.append(f"- **Time taken**: {duration(wall)} wall over {len(invocations)} invocation(s)"
                 f"{' (' + ', '.join(duration(i.get('seconds')) for i in invocations) + ')' if len(invocations) > 1 else ''}; "
                 f"sum of per-run training times {duration(study.get('_run_seconds'))}")
    status = "complete" if done_runs == total_runs else f"**incomplete: {done_runs} of {total_runs} planned runs finished**"
    lines.append(f"- **Runs**: {done_runs} of {total_runs} ({status})")
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save a figure as PNG atomically (render to memory, then atomic write), and close it."""
    import io

    from toolkit.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def readable_log_axis(ax, values, which: str = "x") -> None:
    """Plain, non-overlapping tick labels on a log axis (``0.2, 0.5, 1, 2`` rather than ``3x10^-1`` labels at every
    minor tick): major ticks on the 1-2-5 sequence inside the data's range (or the data values themselves, to two
    significant digits, when that range holds fewer than three), no minor labels."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    vals = sorted(float(v) for v in values if v is not None and v == v and float(v) > 0)
    if not vals:
        return
    lo, hi = vals[0] / 1.15, vals[-1] * 1.15
    nice = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    ticks = [t for t in nice if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = sorted({float(f"{v:.2g}") for v in vals})
        while len(ticks) > 6:  # thin dense data values so labels do not collide
            ticks = ticks[::2]
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, **kw) -> None:
    """The legend to the right of the axes, off the data (``save_figure``'s tight bounding box keeps it whole)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  fontsize=kw.pop("fontsize", 8), frameon=False, **kw)
