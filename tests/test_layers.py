"""The import rules between the layers (docs/architecture.md), checked on the source files with ``ast``.

- ``edgecommon/``: the standard library, numpy and Pillow (``edgecommon.images``, the one image rule) only;
- ``toolkit/``: never ``deploy`` or ``benchmarks``, except ``toolkit/compress/`` (``make compress``), the top floor that
  drives training, export and benchmark; nothing else imports ``toolkit.compress``;
- ``deploy/``: never ``benchmarks``; its device-side modules (copied to a device with ``edgecommon/``) and the aarch64 guest
  script only the standard library, numpy, onnxruntime, Pillow, ``edgecommon`` and other device-side modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = ("deploy/runtime.py", "deploy/manifest.py", "deploy/predict.py", "deploy/latency.py",
                  "deploy/time_candidates.py", "deploy/targets/__init__.py", "deploy/targets/runtimes.py")
DEVICE_SCRIPTS = ("benchmarks/aarch64/infer.py",)
DEVICE_THIRD_PARTY = {"numpy", "onnxruntime", "PIL"}
DEVICE_OPTIONAL = {"deploy/targets/runtimes.py": {"openvino", "executorch", "torch"}}
"""Runtimes a device-side module may load on demand (inside a function), for artifacts that need them; ExecuTorch's
Python bindings take torch tensors."""
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imported_modules(source: str, package: str = "") -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import in ``source``, including those inside functions; relative imports
    are resolved against ``package`` (the dotted package of the file)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts if p)
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if "." in module:
                found.append((node.lineno, module))
            else:  # ``from deploy import runtime``: the names may be modules of the package
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _package(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])


def _device_name(module: str) -> bool:
    return any(module == p[:-3].replace("/", ".") for p in DEVICE_MODULES)


def violations(path: Path, source: str | None = None) -> list[str]:
    """The rule breaks of one source file of the repository, as ``file:line imports module (rule)``."""
    rel = path.relative_to(REPO).as_posix()
    top = rel.split("/")[0]
    out = []
    for line, module in imported_modules(path.read_text() if source is None else source, _package(path)):
        root = module.split(".")[0]
        rule = None
        if top == "edgecommon" and root not in STDLIB | {"numpy", "PIL", "edgecommon"}:
            rule = "edgecommon/ imports only the standard library, numpy and Pillow"
        elif top == "toolkit" and root in ("deploy", "benchmarks") and not rel.startswith("toolkit/compress/"):
            rule = "toolkit/ never imports deploy or benchmarks (only toolkit/compress/, the top floor, does)"
        elif module.startswith("toolkit.compress") and not rel.startswith("toolkit/compress/"):
            rule = "nothing below the top floor imports toolkit.compress"
        elif top == "deploy" and root == "benchmarks":
            rule = "deploy/ never imports benchmarks"
        if rel in DEVICE_MODULES + DEVICE_SCRIPTS and not (
                root in STDLIB | DEVICE_THIRD_PARTY | {"edgecommon"} | DEVICE_OPTIONAL.get(rel, set())
                or _device_name(module)):
            rule = "device-side code imports only stdlib, numpy, onnxruntime, Pillow, edgecommon and device-side deploy"
        if rule:
            out.append(f"{rel}:{line} imports {module} ({rule})")
    return out


def _sources() -> list[Path]:
    return sorted(p for folder in ("edgecommon", "toolkit", "deploy", "benchmarks") for p in (REPO / folder).rglob("*.py"))


def test_the_layers_keep_their_import_rules():
    files = _sources()
    assert len(files) > 30 and {REPO / m for m in DEVICE_MODULES + DEVICE_SCRIPTS} <= set(files)
    broken = [v for path in files for v in violations(path)]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("rel, source, expected", [
    ("toolkit/experiments/x.py", "from deploy.manifest import sha256_file\n", "toolkit/ never imports deploy"),
    ("toolkit/x.py", "def f():\n    import benchmarks.edge_latency\n", "toolkit/ never imports deploy or benchmarks"),
    ("deploy/latency.py", "import torch\n", "device-side code"),
    ("deploy/runtime.py", "from toolkit import ToolkitError\n", "device-side code"),
    ("deploy/predict.py", "from deploy.steps import top1\n", "device-side code"),
    ("deploy/predict.py", "from . import steps\n", "device-side code"),
    ("deploy/latency.py", "from deploy import export\n", "device-side code"),
    ("deploy/export.py", "from benchmarks.edge_export import load_export\n", "deploy/ never imports benchmarks"),
    ("edgecommon/timing.py", "import onnxruntime\n", "edgecommon/ imports only"),
    ("edgecommon/images.py", "import torch\n", "edgecommon/ imports only"),
    ("benchmarks/aarch64/infer.py", "import torch\n", "device-side code"),
])
def test_the_check_catches_each_kind_of_break(rel, source, expected):
    found = violations(REPO / rel, source)
    assert len(found) == 1 and expected in found[0], found


def test_the_check_allows_what_the_rules_allow():
    allowed = {
        "deploy/latency.py": "import numpy as np\nfrom edgecommon.timing import measure\n"
                             "from deploy.runtime import create_session\n",
        "deploy/runtime.py": "from PIL import Image\nimport onnxruntime as ort\nfrom .manifest import read_manifest\n"
                             "from . import manifest\nfrom edgecommon import ToolkitError\n",
        "deploy/export.py": "import torch\nfrom toolkit.runs import open_run\nfrom deploy.steps import export_onnx\n",
        "toolkit/x.py": "import torch\nfrom edgecommon.hashing import fingerprint\nfrom edgecommon.images import fit_image\n",
        "edgecommon/images.py": "import numpy as np\nfrom PIL import Image\nfrom edgecommon import ToolkitError\n",
        "benchmarks/bench_edge.py": "from deploy.manifest import read_manifest\nfrom toolkit.runs import open_run\n",
    }
    for rel, source in allowed.items():
        assert violations(REPO / rel, source) == [], rel
