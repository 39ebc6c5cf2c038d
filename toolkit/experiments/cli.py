"""``python -m toolkit experiment <study> [options] [key=value ...]``: ablation, montecarlo, sweep, generalize, merge.

Training studies (ablation, montecarlo, sweep) write ``runs/studies/<study>-<scale>/`` (or ``--out``; the committed
reports are regenerated with ``--out reports/<study>-<scale>``): study.json,
results.jsonl, shared/ (teacher, IG maps), runs/<key>/, report.md, results.json and PNG plots. A rerun skips the runs
already recorded; ``--shard i/n`` runs a deterministic share; ``--merge A B`` or ``experiment merge A B --out C``
unions shard folders; ``--report-only`` rebuilds the report from results.jsonl.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from toolkit import ToolkitError
from toolkit.config import canonical_configuration
from toolkit.experiments import ablation, generalize, montecarlo, sweep
from toolkit.experiments.common import (finish_invocation, prepare_shared, run_settings, settings_fingerprint, setup_of,
                                       start_study, study_path)
from toolkit.experiments.report import duration, fmt, hardware, hardware_line, header
from toolkit.experiments.runner import Runner, load_results, merge_folders, parse_shard, read_study
from toolkit.experiments.scales import STUDIES, StudySettings, load_scale, parse_list, parse_seeds
from toolkit.io import atomic_write_json, atomic_write_text

MODULES = {"ablation": ablation, "montecarlo": montecarlo, "sweep": sweep}
TITLES = {"ablation": "Ablation of the eight configurations", "montecarlo": "Monte Carlo subsampling study",
          "sweep": "Compression sweep", "generalize": "Zero-shot generalisation to the ImageNet-aligned set"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one-line error through the toolkit CLI instead of argparse's usage dump
        raise ToolkitError(f"{self.prog}: {message}")


def build_parser(study: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"python -m toolkit experiment {study}", description=TITLES.get(study, study))
    p.add_argument("--scale", default="cpu", help="smoke, cpu or paper (toolkit/experiments/scales/<scale>.yaml)")
    p.add_argument("--preset", default=None, help="run preset overriding the scale's (toolkit/presets/<name>.yaml)")
    p.add_argument("--out", default=None, help="study folder (default runs/studies/<study>-<scale>; "
                   "pass --out reports/<study>-<scale> to rewrite a committed report)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    if study == "generalize":
        p.add_argument("--run", action="append", default=[], help="run name or folder (runs/<name>); repeatable")
        p.add_argument("--study", action="append", default=[], help="study folder with saved students; repeatable "
                       "(default: runs/studies/{ablation,montecarlo,sweep}-<scale> that exist)")
        p.add_argument("--split", default=None, help="ImageNet-aligned split: val (1,450 images), train (14,500) or all")
        p.add_argument("--strict", action="store_true", default=None, help="strict synset groups only")
        return p
    p.add_argument("--configs", default=None, help="comma-separated configurations (e.g. Student,KD,KD_IG)")
    if study in ("ablation", "sweep"):
        p.add_argument("--seeds", default=None, help="number of seeds (0..N-1) or a comma-separated list")
    if study == "montecarlo":
        p.add_argument("--runs", type=int, default=None, help="runs per configuration")
        p.add_argument("--fraction", type=float, default=None, help="train fraction per run (paper 0.8), or a count > 1")
    if study == "sweep":
        p.add_argument("--models", default=None, help="comma-separated student models (see `python -m toolkit models`)")
    p.add_argument("--shard", default=None, help="i/n: run only runs i, i+n, ... of the plan (0 <= i < n)")
    p.add_argument("--merge", nargs="+", default=None, metavar="FOLDER", help="merge these study folders into --out, "
                   "then report")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from results.jsonl; train nothing")
    p.add_argument("--rerun-stale", action="store_true", help="retrain runs recorded with other settings (their old "
                   "records stay in results.jsonl, unread; their folders move to stale/)")
    p.add_argument("--prepare-only", action="store_true", help="prepare data, teacher and IG maps, then stop "
                   "(copy shared/ to other machines before sharding)")
    p.add_argument("overrides", nargs="*", help="run-config overrides key=value, e.g. student.epochs=3")
    return p


def settings_from_args(study: str, ns: argparse.Namespace) -> StudySettings:
    s = load_scale(study, ns.scale)
    if ns.preset:
        s.preset = ns.preset
    s.overrides = s.overrides + list(getattr(ns, "overrides", []) or [])
    if getattr(ns, "configs", None):
        s.configs = list(dict.fromkeys(canonical_configuration(c) for c in parse_list(ns.configs)))
    if getattr(ns, "seeds", None):
        s.seeds = parse_seeds(ns.seeds)
    if getattr(ns, "runs", None) is not None:
        if ns.runs < 1:
            raise ToolkitError(f"--runs must be >= 1, got {ns.runs}")
        s.runs = ns.runs
    if getattr(ns, "fraction", None) is not None:
        if ns.fraction <= 0 or (ns.fraction > 1 and ns.fraction != int(ns.fraction)):
            raise ToolkitError(f"--fraction must be in (0, 1] or a whole count, got {ns.fraction}")
        s.fraction = ns.fraction if ns.fraction <= 1 else int(ns.fraction)
    if getattr(ns, "models", None):
        from toolkit.models.registry import get_spec

        s.models = parse_list(ns.models)
        for m in s.models:
            get_spec(m)
    if getattr(ns, "split", None):
        s.split = ns.split
    if getattr(ns, "strict", None):
        s.strict = True
    if study == "sweep" and not s.models:
        raise ToolkitError("the sweep needs student models: set models in the scale file or pass --models")
    return s


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _at_text(loss: dict) -> str:
    """How the AT term was formed, in words, for the report header."""
    from toolkit.distill.losses import DEFAULT_AT_WEIGHT

    form = loss.get("at_form", "paper")
    weight = DEFAULT_AT_WEIGHT[form] if loss.get("at_weight") is None else loss["at_weight"]
    if form == "zagoruyko":
        return f"form zagoruyko (beta/2 x sum over tapped layers, beta={weight:g})"
    return f"form paper (g x mean over tapped layers, g={weight:g})"


def _at_layers(setup: dict) -> list[str]:
    """The layers AT tapped: as recorded, else the config's loss.at_layers, else the student family's rule."""
    from toolkit.models.registry import get_spec

    recorded = setup.get("at_layers") or (setup.get("loss") or {}).get("at_layers")
    if recorded:
        return list(recorded)
    model = (setup.get("student") or {}).get("model")
    return list(get_spec(model).at_layers) if model else ["?"]


def write_report(folder: Path) -> Path:
    """Rebuild report.md, results.json and the plots of a training-study folder from study.json + results.jsonl."""
    study = read_study(folder)
    module = MODULES.get(study.get("study"))
    if module is None:
        raise ToolkitError(f"{folder}: unknown study '{study.get('study')}'")
    settings = StudySettings(**study["settings"])
    records = list(load_results(folder).values())
    if not records:
        raise ToolkitError(f"{folder}: no finished runs in results.jsonl yet")
    # Include configurations/models found in the results even if the latest command chose a subset.
    settings.configs = list(dict.fromkeys(settings.configs + [r["spec"]["configuration"] for r in records]))
    if study["study"] == "sweep":
        settings.models = list(dict.fromkeys(settings.models + [r["spec"]["model"] for r in records]))
    planned = list(dict.fromkeys(study.get("plan", []) + [r["key"] for r in records]))
    analysis = module.analyze(records, settings, folder, _log) if module is sweep else module.analyze(records, settings)
    study["_run_seconds"] = sum(float(r.get("seconds") or 0) for r in records)
    setup = study.get("setup") or {}
    extra = []
    if setup:
        t, st = setup.get("teacher", {}), setup.get("student", {})
        extra.append(f"- **Split sizes**: train {setup['train_images']:,} (IG maps for all of them when used), "
                     f"validation {setup['val_images']:,}, test {setup['test_images']:,} images")
        extra.append(f"- **Teacher**: {t.get('name')} ({t.get('params', 0):,} params, mode {t.get('mode')}, "
                     f"test {fmt(t.get('test_acc'))}%, sha256 {str(t.get('sha256'))[:12]})")
        students = ", ".join(settings.models) if study["study"] == "sweep" else st.get("model")
        extra.append(f"- **Students**: {students}; {st.get('epochs')} epochs, batch {st.get('batch_size')}, "
                     f"{st.get('optimizer')} lr {st.get('lr')} ({st.get('schedule')}), weight decay "
                     f"{st.get('weight_decay')}; loss T={setup['loss']['temperature']}, alpha={setup['loss']['alpha']}, "
                     f"AT {_at_text(setup['loss'])} on {', '.join(_at_layers(setup))}; "
                     f"overlay p={setup['overlay']['prob']}; IG "
                     f"{setup['ig']['steps']} steps; teacher outputs {setup['teacher_outputs']}; precision "
                     f"{setup['precision']} on {setup['device']}")
    extra.append("- **Selection**: none; every run reports its last-epoch test accuracy (no choice made on test data).")
    text = header(TITLES[study["study"]], study, len(planned), len(records), extra) + "\n"
    text += module.report_body(analysis, folder)
    text += ("\n---\nRebuild this report: `python -m toolkit experiment " + study["study"] +
             f" --scale {study['scale']} --out {folder} --report-only`; raw per-run records (with per-epoch history) in results.jsonl.\n")
    atomic_write_text(folder / "report.md", text)
    slim = [{k: v for k, v in r.items() if k != "history"} for r in records]
    atomic_write_json(folder / "results.json", {"study": {k: v for k, v in study.items() if not k.startswith("_")},
                                                "analysis": analysis, "records": slim})
    return folder / "report.md"


def run_training_study(study: str, ns: argparse.Namespace, command: str) -> int:
    settings = settings_from_args(study, ns)
    module = MODULES[study]
    folder = study_path(settings, ns.out)
    started = time.time()
    if ns.merge:
        sources = [Path(f) for f in ns.merge]
        merge_folders(sources, folder)
        _log(f"merged {len(sources)} folder(s) into {folder}: {len(load_results(folder))} runs")
        write_report(folder)
        _log(f"report: {folder / 'report.md'}")
        return 0
    if ns.report_only:
        _log(f"report: {write_report(folder)}")
        return 0
    shard = parse_shard(ns.shard)
    specs = module.plan(settings)
    flat = run_settings(settings)
    runner = Runner(folder, settings_fingerprint(flat), flat, rerun_stale=ns.rerun_stale)
    pending = runner.pending(specs, shard)  # refuses results of other settings before study.json is touched
    start_study(folder, settings, [s.key for s in specs], flat)
    ran = 0
    if pending or ns.prepare_only:
        from toolkit.device import select_device

        prepared = prepare_shared(settings, folder, select_device(ns.device), _log)
        finish = {"setup": setup_of(prepared), "data": prepared.data.description}
        if not ns.prepare_only:
            try:
                ran = len(runner.run(specs, module.make_run_fn(prepared), shard, _log))
            finally:
                finish_invocation(folder, command, time.time() - started, ns.shard, ran, finish)
        else:
            finish_invocation(folder, command, time.time() - started, ns.shard, 0, finish)
            _log(f"prepared {folder / 'shared'}; run the study (or its shards) next")
            return 0
    else:
        _log(f"all {len(specs)} planned runs{' of this shard' if shard else ''} already recorded in {folder}")
    if load_results(folder):
        _log(f"report: {write_report(folder)}")
    return 0


def run_generalize(ns: argparse.Namespace, command: str) -> int:
    settings = settings_from_args("generalize", ns)
    folder = study_path(settings, ns.out)
    started = time.time()
    entries = []
    from toolkit.runs import resolve_run

    for r in ns.run:
        entries += generalize.entries_from_run(resolve_run(r))
    studies = [Path(s) for s in ns.study] or ([] if ns.run else generalize.default_sources(settings.scale))
    for s in studies:
        entries += generalize.entries_from_study(s)
    if not entries:
        raise ToolkitError("generalize needs --run <name or runs/<name>> and/or --study <study folder> (none found "
                           f"under runs/studies/ for scale '{settings.scale}')")
    _log(f"evaluating {len(entries)} model(s) on the ImageNet-aligned set ({settings.split}"
         f"{', strict' if settings.strict else ''})")
    result = generalize.evaluate(entries, settings.split, bool(settings.strict), _log)
    seconds = time.time() - started
    hw = hardware()
    data_names = set()
    for e in entries:
        src = Path(e.source)
        try:
            data_names.add(read_study(src).get("data") or "")
        except ToolkitError:
            import json

            data_names.add(json.loads((src / "summary.json").read_text()).get("data", ""))
    study = {"study": "generalize", "scale": settings.scale, "preset": "none: evaluation only", "overrides": [],
             "data": "models trained on " + ("; ".join(sorted(d for d in data_names if d)) or "CIFAR-10")
             + "; evaluated on the ImageNet-aligned set (Tiny ImageNet, 29 synsets mapped to 8 CIFAR-10 classes, 32x32)",
             "invocations": [{"command": command, "seconds": seconds, "hardware_line": hardware_line(hw)}],
             "_run_seconds": None}
    text = header(TITLES["generalize"], study, len(entries), len(entries)) + "\n" + generalize.report_body(result, folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.md", text)
    atomic_write_json(folder / "results.json", {"command": command, "hardware": hw, "seconds": seconds, **result})
    _log(f"report: {folder / 'report.md'} ({duration(seconds)})")
    return 0


def run_merge(rest: list[str]) -> int:
    p = _Parser(prog="python -m toolkit experiment merge", description="union study folders (shards) into one")
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True)
    ns = p.parse_args(rest)
    merge_folders([Path(f) for f in ns.folders], Path(ns.out))
    _log(f"merged into {ns.out}: {len(load_results(Path(ns.out)))} runs")
    _log(f"report: {write_report(Path(ns.out))}")
    return 0


def run_experiment_command(args: argparse.Namespace) -> int:
    """Entry point from toolkit.cli: ``args.study`` (str) and ``args.rest`` (remaining argv)."""
    study, rest = args.study, list(args.rest or [])
    if study == "merge":
        return run_merge(rest)
    if study not in STUDIES:
        raise ToolkitError(f"unknown study '{study}'; choose one of {', '.join(STUDIES)} or merge")
    ns = build_parser(study).parse_intermixed_args(rest)
    command = f"python -m toolkit experiment {study} {shlex.join(rest)}".strip()
    if study == "generalize":
        return run_generalize(ns, command)
    return run_training_study(study, ns, command)
