"""Per-scale study settings: ``toolkit/experiments/scales/<scale>.yaml`` (smoke, cpu, paper).

Layout of a scale file::

    preset: cpu                 # run preset (toolkit/presets/<preset>.yaml) for every study at this scale
    overrides: [key=value, ...] # config overrides for every study
    ablation:   {overrides: [...], configs: [...], seeds: 3}
    montecarlo: {overrides: [...], configs: [...], runs: 10, fraction: 0.8}
    sweep:      {overrides: [...], configs: [...], seeds: 1, models: [resnet8, ...]}
    generalize: {split: val, strict: false}

``seeds`` is a count (seeds 0..n-1) or an explicit list. A study may set its own ``preset``. Command-line flags
(``--configs``, ``--seeds``, ``--runs``, ``--fraction``, ``--models``, ``--preset``, trailing ``key=value``) override.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from toolkit import ToolkitError
from toolkit.config import CONFIGURATIONS, canonical_configuration

SCALES_DIR = Path(__file__).resolve().parent / "scales"
STUDIES = ("ablation", "montecarlo", "sweep", "generalize")
STUDY_KEYS = {"preset", "overrides", "configs", "seeds", "runs", "fraction", "models", "split", "strict"}


@dataclass
class StudySettings:
    study: str
    scale: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=lambda: list(CONFIGURATIONS))
    seeds: list[int] = field(default_factory=lambda: [0])
    runs: int = 1
    """montecarlo: runs per configuration."""
    fraction: float | int = 0.8
    """montecarlo: stratified subset of the train split per run (fraction in (0, 1] or a count)."""
    models: list[str] = field(default_factory=list)
    """sweep: student models."""
    split: str = "val"
    """generalize: ImageNet-aligned split (val, train or all)."""
    strict: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def list_scales() -> list[str]:
    return sorted(p.stem for p in SCALES_DIR.glob("*.yaml"))


def parse_seeds(value) -> list[int]:
    """An int n -> [0..n-1]; a list or "0,3,5" -> those seeds."""
    if isinstance(value, bool):
        raise ToolkitError(f"seeds must be a count or a list, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ToolkitError(f"seeds must be >= 1, got {value}")
        return list(range(value))
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_seeds(int(text))
        value = [v for v in text.split(",") if v.strip()]
    try:
        seeds = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ToolkitError(f"seeds must be a count or a comma-separated list of integers, got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ToolkitError(f"seeds must be a non-empty list without repeats, got {seeds}")
    return seeds


def parse_list(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def load_scale(study: str, scale: str) -> StudySettings:
    """Settings of ``study`` at ``scale`` from the scale YAML."""
    if study not in STUDIES:
        raise ToolkitError(f"unknown study '{study}'; choose one of {', '.join(STUDIES)}")
    path = SCALES_DIR / f"{scale}.yaml"
    if not path.is_file():
        raise ToolkitError(f"unknown scale '{scale}'; available: {', '.join(list_scales())}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ToolkitError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    own = values.get(study) or {}
    unknown = set(own) - STUDY_KEYS
    if unknown:
        raise ToolkitError(f"{path}: unknown key(s) under {study}: {', '.join(sorted(unknown))}")
    s = StudySettings(study=study, scale=scale, preset=own.get("preset", values.get("preset", scale)))
    s.overrides = [str(o) for o in values.get("overrides", [])] + [str(o) for o in own.get("overrides", [])]
    if "configs" in own:
        s.configs = [canonical_configuration(c) for c in parse_list(own["configs"])]
    if "seeds" in own:
        s.seeds = parse_seeds(own["seeds"])
    for key in ("runs", "fraction", "split", "strict"):
        if key in own:
            setattr(s, key, own[key])
    if "models" in own:
        s.models = parse_list(own["models"])
    return s
