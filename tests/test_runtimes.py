"""deploy.targets.runtimes (the one runner API for ONNX Runtime, OpenVINO, ExecuTorch) and ``python -m deploy.targets``:
runtime names and defaults, an ONNX runner matching a plain session, one-line reasons for a missing runtime or file,
and exit 2 with one ``error:`` line for a bad run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from test_ort_format import SIZE, _entry, _tiny_fp32  # noqa: E402 - tests/ is on sys.path

from deploy.manifest import DeployError, manifest_from_dict  # noqa: E402
from deploy.runtime import create_session  # noqa: E402
from deploy.targets import runtimes  # noqa: E402
from deploy.targets.__main__ import main as targets_main  # noqa: E402


def test_names_and_runtime_of(tmp_path):
    assert runtimes.RUNTIMES == ("onnxruntime", "openvino", "executorch")
    assert runtimes.EXTRAS == {"onnxruntime": None, "openvino": "openvino", "executorch": "executorch"}
    assert runtimes.missing("onnxruntime") is None
    assert runtimes.missing("tflite").startswith("unknown runtime 'tflite'")
    _tiny_fp32(tmp_path / "m.onnx")
    old = _entry(tmp_path / "m.onnx", "fp32")  # an entry written before the runtime field existed
    assert runtimes.runtime_of(old) == "onnxruntime" and runtimes.runtime_of({**old, "runtime": "openvino"}) == "openvino"
    raw = {"schema": "edge-distill-export-manifest", "schema_version": 1, "classes": ["a"], "toolkit_version": "t",
           "run": "r", "models": {"a": old, "b": {**old, "runtime": "executorch", "format": "pte", "file": "b.pte"}}}
    m = manifest_from_dict(raw)
    assert (m.models["a"].runtime, m.models["a"].format) == ("onnxruntime", "onnx")
    assert runtimes.runtime_of(m.models["b"]) == "executorch" and m.models["b"].format == "pte"
    with pytest.raises(DeployError, match="plain name"):
        manifest_from_dict({**raw, "models": {"a": {**old, "extra_files": {"sub/w.bin": "0"}}}})


def test_onnx_runner_matches_session(tmp_path):
    _tiny_fp32(tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    run = runtimes.open_runner(tmp_path / "m.onnx", "onnxruntime", threads=1)
    want = create_session(tmp_path / "m.onnx", threads=1).run(None, {"input": x})[0]
    got = run(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_one_line_failures(tmp_path, monkeypatch):
    with pytest.raises(DeployError, match="model file missing"):
        runtimes.open_runner(tmp_path / "nope.onnx", "onnxruntime", 1)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DeployError) as exc:
        runtimes.open_runner(tmp_path / "bad.onnx", "onnxruntime", 1)
    assert "\n" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # the real import fails, as without the extra
    reason = runtimes.missing("executorch")
    assert reason.startswith("executorch is not installed: pip install -e '.[executorch]'") and "\n" not in reason
    with pytest.raises(runtimes.RuntimeUnavailable, match=r"\[executorch\]"):
        runtimes.open_runner(tmp_path / "m.pte", "executorch", 1)


def test_targets_cli_bad_run_exits_2(tmp_path, capsys):
    assert targets_main(["--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run folder not found")
    (tmp_path / "run" / "export").mkdir(parents=True)
    assert targets_main(["--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "export the run first" in err[0]
    (tmp_path / "run" / "export" / "manifest.json").write_text(json.dumps({"schema": "x"}))
    assert targets_main(["--run", str(tmp_path / "run")]) == 2
    assert "not an export manifest" in capsys.readouterr().err
    assert targets_main(["--run", str(tmp_path / "run"), "--only", "tflite"]) == 2


def test_runtimes_module_is_torch_free():
    code = ("import sys; import deploy.targets.runtimes as r; r.open_runner; "
            "assert 'torch' not in sys.modules and 'openvino' not in sys.modules, sorted(sys.modules); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-500:]
