"""A resumable, shardable runner for a study's list of runs.

A study is a list of :class:`RunSpec` (a unique key plus parameters). The runner records each finished run as one JSON
line in ``<folder>/results.jsonl``, appended only after the run function returned (so after the run's final
checkpoint is written), and skips keys already recorded on a rerun. An unfinished run is simply run again: the run
function resumes it from its own checkpoint in ``<folder>/runs/<key>/``.

Sharding: ``--shard i/n`` (0 <= i < n) keeps the runs whose position in the study's plan is ``i`` modulo ``n``. The
plan order is fixed by the study's settings, so every machine given the same command computes the same partition.
:func:`merge_folders` unions the results of several folders (checking they ran the same study with the same settings
and the same teacher).

Results belong to their settings: every line carries ``settings_fingerprint``, the hash of the run settings that
produced it (``study.json`` keeps those settings under ``run_settings``). A rerun with other settings refuses, naming
what changed, unless asked to rerun the stale runs (``rerun_stale``: their lines stay in ``results.jsonl`` but are no
longer read, their folders move to ``stale/<fingerprint>/<key>/``); ``merge`` refuses folders of other settings.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from toolkit import ToolkitError
from toolkit.io import append_jsonl, atomic_write_json, atomic_write_text, folder_lock, read_jsonl  # noqa: F401 - folder_lock re-exported

RESULTS_FILE = "results.jsonl"
STUDY_FILE = "study.json"
RUNS_DIR = "runs"
STALE_DIR = "stale"


@dataclass(frozen=True)
class RunSpec:
    """One run of a study. ``key`` is unique within the study and names its folder ``runs/<key>/``."""

    key: str
    params: dict = field(default_factory=dict, hash=False, compare=False)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None passes through."""
    if text is None:
        return None
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ToolkitError(f"--shard must look like i/n (e.g. 0/2), got '{text}'") from None
    if n < 1 or not 0 <= i < n:
        raise ToolkitError(f"--shard i/n needs n >= 1 and 0 <= i < n, got '{text}'")
    return i, n


def select_shard(specs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """The specs of shard (i, n): positions i, i+n, i+2n, ... of the plan; all specs when ``shard`` is None."""
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ToolkitError("run keys of a study must be unique")
    if shard is None:
        return list(specs)
    i, n = shard
    return [s for pos, s in enumerate(specs) if pos % n == i]


def load_results(folder: Path, fingerprint: str | None = "study") -> dict[str, dict]:
    """Finished runs of ``folder`` by key (first record of a key wins; a torn last line is ignored).

    ``fingerprint``: keep only records made with these settings; ``"study"`` (default) means the fingerprint in the
    folder's study.json (all records when it has none); None keeps every record."""
    if fingerprint == "study":
        fingerprint = _study_fingerprint(folder)
    out: dict[str, dict] = {}
    for rec in read_jsonl(Path(folder) / RESULTS_FILE):
        if isinstance(rec, dict) and "key" in rec:
            if fingerprint is not None and rec.get("settings_fingerprint") != fingerprint:
                continue
            out.setdefault(rec["key"], rec)
    return out


def _study_fingerprint(folder: Path) -> str | None:
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("settings_fingerprint")
    except json.JSONDecodeError:
        return None


def flatten_settings(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the form in which changed settings are named."""
    out: dict = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_change(old: dict | None, new: dict, limit: int = 6) -> str:
    """``student.epochs 8 -> 20, loss.at_form paper -> zagoruyko``; what differs between two flat settings dicts."""
    if old is None:
        return "recorded without settings (made by an older toolkit)"
    keys = sorted(set(old) | set(new))
    diffs = [f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys if old.get(k) != new.get(k)]
    if not diffs:
        return "same settings, other fingerprint"
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line; first terminate a torn last line (a killed writer) so this record stays parseable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            torn = f.read(1) != b"\n"
        if torn:
            with open(path, "a") as f:
                f.write("\n")
    append_jsonl(path, record)


RunFunction = Callable[[RunSpec, Path], dict]


class Runner:
    """Runs the specs of a study folder that are not yet recorded in its ``results.jsonl`` with these settings.

    ``fingerprint`` (with the flat ``settings`` it hashes) identifies the settings of this invocation; every record
    carries it. Records of the plan made with other settings are stale: :meth:`pending` refuses them (one line naming
    what changed) unless ``rerun_stale``, which reruns them and moves their run folders aside.
    """

    def __init__(self, folder: str | Path, fingerprint: str, settings: dict | None = None, rerun_stale: bool = False):
        self.folder = Path(folder)
        self.results_path = self.folder / RESULTS_FILE
        self.fingerprint = fingerprint
        self.settings = settings or {}
        self.rerun_stale = rerun_stale

    def run_dir(self, spec: RunSpec) -> Path:
        return self.folder / RUNS_DIR / spec.key

    def _split(self, specs: list[RunSpec], shard: tuple[int, int] | None) -> tuple[list[RunSpec], dict[str, str | None]]:
        """(specs of ``shard`` not recorded with these settings, stale keys -> the fingerprint they were recorded with),
        from one read of results.jsonl."""
        records = [r for r in read_jsonl(self.results_path) if isinstance(r, dict) and "key" in r]
        current = {r["key"] for r in records if r.get("settings_fingerprint") == self.fingerprint}
        first_other: dict[str, str | None] = {}
        for r in records:
            if r["key"] not in current:
                first_other.setdefault(r["key"], r.get("settings_fingerprint"))
        mine = select_shard(specs, shard)
        stale = {s.key: first_other[s.key] for s in mine if s.key in first_other}
        return [s for s in mine if s.key not in current], stale

    def stale(self, specs: list[RunSpec], shard: tuple[int, int] | None = None) -> dict[str, str | None]:
        """Keys of ``shard`` recorded only with other settings -> the fingerprint they were recorded with."""
        return self._split(specs, shard)[1]

    def pending(self, specs: list[RunSpec], shard: tuple[int, int] | None = None) -> list[RunSpec]:
        return self._checked(specs, shard)[0]

    def _checked(self, specs: list[RunSpec], shard: tuple[int, int] | None) -> tuple[list[RunSpec], dict[str, str | None]]:
        todo, stale = self._split(specs, shard)
        if stale and not self.rerun_stale:
            old = None
            if (self.folder / STUDY_FILE).is_file():
                old = read_study(self.folder).get("run_settings")
            raise ToolkitError(f"{self.folder}: {len(stale)} recorded run(s) were made with other settings "
                               f"({describe_change(old, self.settings)}); pass --rerun-stale to retrain them "
                               "(old records kept, their folders moved to stale/), or choose another --out")
        return todo, stale

    def _move_stale_folder(self, key: str, old_fingerprint: str | None) -> None:
        src = self.folder / RUNS_DIR / key
        if src.exists():
            dst = self.folder / STALE_DIR / str(old_fingerprint or "unfingerprinted") / key
            suffix = 1
            while dst.exists():
                dst, suffix = dst.with_name(f"{key}.{suffix}"), suffix + 1
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)

    def run(self, specs: list[RunSpec], run_fn: RunFunction, shard: tuple[int, int] | None = None,
            log: Callable[[str], None] | None = None) -> list[dict]:
        """Run the pending specs of ``shard`` in plan order; returns the records appended by this call.

        ``run_fn(spec, run_dir)`` trains (resuming from ``run_dir`` if a checkpoint is there) and returns a dict of
        results; the runner adds key, spec (the spec's params), settings_fingerprint, host, shard, finished time, and
        appends the line.
        """
        todo, stale = self._checked(specs, shard)
        mine = select_shard(specs, shard)
        if log:
            log(f"{len(mine) - len(todo)} of {len(mine)} runs{' of shard ' + '/'.join(map(str, shard)) if shard else ''} "
                f"already recorded in {self.results_path}; {len(todo)} to run"
                + (f" ({len(stale)} stale, rerun)" if stale else ""))
        records = []
        for number, spec in enumerate(todo, 1):
            if log:
                log(f"[{number}/{len(todo)}] run {spec.key} {spec.params}")
            if spec.key in stale:
                self._move_stale_folder(spec.key, stale[spec.key])
            run_dir = self.run_dir(spec)
            run_dir.mkdir(parents=True, exist_ok=True)
            result = run_fn(spec, run_dir)
            if {"key", "spec", "settings_fingerprint"} & set(result):
                raise ToolkitError("a run function must not return 'key', 'spec' or 'settings_fingerprint' "
                                   "(the runner sets them)")
            record = {"key": spec.key, "spec": spec.params, "settings_fingerprint": self.fingerprint, **result,
                      "host": socket.gethostname(), "shard": "/".join(map(str, shard)) if shard else None,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            append_record(self.results_path, record)
            records.append(record)
        return records


def read_study(folder: Path) -> dict:
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise ToolkitError(f"{folder} is not a study folder: {STUDY_FILE} missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{path} is not valid JSON: {exc}") from None


def merge_folders(folders: list[Path], out: Path) -> dict:
    """Union the results of study ``folders`` into ``out`` (which may be one of them).

    Checks that all ran the same study at the same scale and with the same teacher (its SHA-256), copies each run's
    final ``*.pt`` files and the first folder's ``shared/teacher.pt`` when ``out`` lacks them, writes ``out``'s
    ``results.jsonl`` (one line per key, first folder wins) and ``study.json``; returns the merged study dict.
    """
    if not folders:
        raise ToolkitError("merge needs at least one study folder")
    studies = [read_study(f) for f in folders]
    first = studies[0]
    for f, s in zip(folders, studies):
        for key in ("study", "scale"):
            if s.get(key) != first.get(key):
                raise ToolkitError(f"cannot merge: {folders[0]} is {key} '{first.get(key)}' but {f} is '{s.get(key)}'")
        if s.get("settings_fingerprint") != first.get("settings_fingerprint") or not s.get("settings_fingerprint"):
            what = describe_change(first.get("run_settings"), s.get("run_settings") or {}) \
                if s.get("run_settings") and first.get("run_settings") else "recorded without settings (older toolkit)"
            raise ToolkitError(f"cannot merge: {folders[0]} and {f} ran with other settings ({what})")
    fingerprint = first["settings_fingerprint"]
    merged: dict[str, dict] = {}
    teachers: dict[str, Path] = {}
    for f in folders:
        current = load_results(f, fingerprint)
        foreign = [k for k in load_results(f, None) if k not in current]
        if foreign:
            raise ToolkitError(f"cannot merge: {f} holds {len(foreign)} run(s) recorded with other settings than its "
                               f"study.json ({foreign[0]}, ...): rerun them there with --rerun-stale first")
        for key, rec in current.items():
            sha = rec.get("teacher_sha256")
            if sha:
                teachers.setdefault(sha, f)
            merged.setdefault(key, rec)
    if len(teachers) > 1:
        where = ", ".join(f"{sha[:12]} in {f}" for sha, f in teachers.items())
        raise ToolkitError(f"cannot merge runs distilled from different teachers ({where}): prepare the teacher once "
                           "(--prepare-only) and copy its shared/ folder to every machine before running shards")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in folders:
        if f.resolve() == out.resolve():
            continue
        for key in merged:
            src = f / RUNS_DIR / key
            if not src.is_dir():
                continue
            for pt in src.glob("*.pt"):
                dst = out / RUNS_DIR / key / pt.name
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(pt, dst)
        teacher = f / "shared" / "teacher.pt"
        if teacher.is_file() and not (out / "shared" / "teacher.pt").exists():
            (out / "shared").mkdir(parents=True, exist_ok=True)
            shutil.copy2(teacher, out / "shared" / "teacher.pt")
            if (f / "shared" / "summary.json").is_file():
                shutil.copy2(f / "shared" / "summary.json", out / "shared" / "summary.json")
    study = dict(first)
    study["invocations"] = [inv for s in studies for inv in s.get("invocations", [])]
    study["merged_from"] = [str(f) for f in folders]
    atomic_write_json(out / STUDY_FILE, study)
    atomic_write_text(out / RESULTS_FILE, "".join(json.dumps(r) + "\n" for r in merged.values()))
    return study
