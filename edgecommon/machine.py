"""The CPU a figure was measured on: model name and flags from /proc/cpuinfo, and the load average (stdlib only)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo (``Features`` on ARM); the platform's processor name
    and no flags where there is no /proc/cpuinfo."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or "unknown CPU", flags


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (runnable threads; above the CPU count, timings include waiting for a
    core), or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
