"""Build every deployment target of an exported run: ``python -m deploy.targets --run <name-or-folder>``.

Runs the ORT format (always) and each other target whose runtime is installed, in the order ``ort``, ``openvino``,
``executorch`` (``--only`` picks a subset). A target whose extra is missing is skipped, and one that fails parity or
cannot convert is marked failed: either way one line is printed (``skipped openvino: openvino is not installed: ...``,
``openvino FAILED: ...``) and recorded in the manifest under ``targets: {name: {"status", "reason"}}``; the others
still run. Exit 0 then; exit 2 with one ``error:`` line when the run or its export is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from deploy.manifest import MANIFEST_NAME, read_manifest
from deploy.targets.runtimes import missing
from toolkit import ToolkitError
from toolkit.io import atomic_write_json
from toolkit.runs import resolve_run

TARGETS = ("ort", "openvino", "executorch")
RUNTIME = {"ort": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}


def _builder(name: str, args: argparse.Namespace) -> Callable[[Path, Callable[[str], None]], Any]:
    if name == "ort":
        from deploy.targets import ort_format
        return lambda run, log: ort_format.build(run, args.images, log=log)
    if name == "openvino":
        from deploy.targets import openvino
        return lambda run, log: openvino.build(run, args.images, log=log)
    from deploy.targets import executorch
    return lambda run, log: executorch.build(run, teacher=not args.no_teacher, log=log)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def run_targets(run: Path, only: list[str], args: argparse.Namespace,
                log: Callable[[str], None]) -> dict[str, dict[str, str]]:
    """Build the targets in ``only``; returns ``{name: {"status": ok|skipped|failed, "reason": ...}}``, also
    merged into the manifest's ``targets`` block. ToolkitError from reading the run/export propagates."""
    mpath = run / "export" / MANIFEST_NAME
    read_manifest(mpath)  # a bad export is the caller's error (exit 2), not a target's
    status: dict[str, dict[str, str]] = {}
    for name in only:
        reason = missing(RUNTIME[name])
        if reason:
            status[name] = {"status": "skipped", "reason": reason}
            print(f"skipped {name}: {reason}")
            continue
        try:
            _builder(name, args)(run, log)
        except Exception as exc:  # noqa: BLE001 - a failed target is reported, never a crash of the others
            status[name] = {"status": "failed", "reason": _one_line(exc)}
            print(f"{name} FAILED: {status[name]['reason']}")
            continue
        status[name] = {"status": "ok", "reason": ""}
        print(f"{name}: ok")
    manifest = json.loads(mpath.read_text())
    manifest["targets"] = {**(manifest.get("targets") or {}), **status}
    atomic_write_json(mpath, manifest)
    read_manifest(mpath)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.targets", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder with an export/ (or a name under runs/)")
    p.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--images", default=None, help="image folder for ORT / OpenVINO parity (default: the manifest's data)")
    p.add_argument("--no-teacher", action="store_true", help="ExecuTorch: build the student's programs only")
    args = p.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in only if t not in TARGETS]
    if unknown or not only:
        print(f"error: unknown target(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    try:
        run = resolve_run(args.run)
        mpath = run / "export" / MANIFEST_NAME
        if not mpath.is_file():
            raise ToolkitError(f"{mpath} missing: export the run first (make export RUN=...)")
        run_targets(run, [t for t in TARGETS if t in only], args, log=lambda s: print(s, file=sys.stderr))
    except ToolkitError as exc:  # DeployError is one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
