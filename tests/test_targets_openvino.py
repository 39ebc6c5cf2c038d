"""deploy.targets.openvino on a tiny hand-made export (the ORT-format test's fp32 + QDQ int8 models): IR written beside
the manifest with sha256 of .xml and .bin, parity vs ONNX Runtime passes, OpenVINO's int8 convolution kernels counted,
``deploy.predict`` runs the IR, a replaced .bin is refused, and a missing openvino gives one line naming the extra."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("openvino")

from test_ort_format import SIZE  # noqa: E402
from test_ort_format import make_export as make_ort_export  # noqa: E402 - tests/ is on sys.path

from deploy import predict  # noqa: E402
from deploy.manifest import DeployError, read_manifest  # noqa: E402
from deploy.runtime import Classifier  # noqa: E402
from deploy.targets import openvino  # noqa: E402
from deploy.targets.__main__ import main as targets_main  # noqa: E402
from deploy.targets.runtimes import RuntimeUnavailable, missing, open_runner  # noqa: E402
from edgecommon.hashing import sha256_file  # noqa: E402

KEYS = ("student.fp32.openvino", "student.int8.openvino")


def make_export(run):
    """The ORT-format test's tiny export, with images of the model's input size."""
    return make_ort_export(run, (SIZE, SIZE))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    export, images = make_export(run)
    block = openvino.build(run, images=str(images), log=lambda s: None)
    return run, export, images, block


def test_ir_entries_parity_and_int8_kernels(built):
    _, export, _, block = built
    m = read_manifest(export)
    raw = json.loads((export / "manifest.json").read_text())["models"]
    assert list(block["models"]) == list(KEYS) and m.ship["model"] == "student.int8"
    for key in KEYS:
        e = m.entry(key)
        assert (e.runtime, e.format, e.file) == ("openvino", "openvino-ir", f"{key}.xml")
        (bin_name, bin_sha), = e.extra_files.items()
        assert bin_name == f"{key}.bin" and bin_sha == sha256_file(export / bin_name)
        assert e.sha256 == sha256_file(export / e.file)
        assert e.size_bytes == (export / e.file).stat().st_size + (export / bin_name).stat().st_size
        assert e.parity["passed"] and set(e.parity["sets"]) == {"random", "images"}
        info = raw[key]["openvino"]
        assert info["compile_seconds"]["onnx"] > 0 and info["compile_seconds"]["ir"] > 0
    assert m.entry("student.fp32.openvino").parity["max_abs_diff"] <= openvino.FP32_ATOL
    fp32_k = raw["student.fp32.openvino"]["openvino"]["int8_kernels"]["convolution"]
    int8_k = raw["student.int8.openvino"]["openvino"]["int8_kernels"]["convolution"]
    assert fp32_k == {"int8": 0, "fp32": 2, "other": 0}
    assert int8_k["int8"] == 2 and int8_k["fp32"] == 0  # both QDQ convolutions run OpenVINO's integer kernels
    assert not [p for p in export.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_predict_runs_the_ir(built, capsys):
    _, export, images, _ = built
    files = sorted(str(p) for p in images.iterdir())
    x = Classifier(export, "student.fp32.openvino", threads=1).preprocess_files(files)
    got = Classifier(export, "student.fp32.openvino", threads=1).logits(x)
    want = Classifier(export, "student.fp32", threads=1).logits(x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert predict.main([str(export), *files, "--model", "student.int8.openvino", "--threads", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(files)


def test_replaced_bin_is_refused(built, tmp_path):
    _, export, _, _ = built
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    (copy / "student.fp32.openvino.bin").write_bytes(b"\0" * 64)
    with pytest.raises(DeployError, match="sha256"):
        Classifier(copy, "student.fp32.openvino")


def test_missing_openvino_is_one_line(built, monkeypatch, capsys):
    run, export, _, _ = built
    monkeypatch.setitem(sys.modules, "openvino", None)  # the real import now fails, as without the extra
    reason = missing("openvino")
    assert reason.startswith("openvino is not installed: pip install -e '.[openvino]'") and "\n" not in reason
    with pytest.raises(RuntimeUnavailable, match=r"\[openvino\]"):
        open_runner(export / "student.fp32.openvino.xml", "openvino", 1)
    assert predict.main([str(export), str(run / "images"), "--model", "student.fp32.openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: openvino is not installed")
    assert targets_main(["--run", str(run), "--only", "openvino"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"skipped openvino: {reason}"]
    assert json.loads((export / "manifest.json").read_text())["targets"]["openvino"] == {"status": "skipped",
                                                                                         "reason": reason}


def test_targets_cli_builds_ort_then_openvino(tmp_path, capsys):
    run = tmp_path / "run"
    export, images = make_export(run)
    assert targets_main(["--run", str(run), "--only", "openvino,ort", "--images", str(images)]) == 0
    out = capsys.readouterr().out.splitlines()  # the ORT converter also prints its own progress to stdout
    assert [ln for ln in out if ln in ("ort: ok", "openvino: ok")] == ["ort: ok", "openvino: ok"]
    m = read_manifest(export)
    raw = json.loads((export / "manifest.json").read_text())
    assert raw["targets"] == {"ort": {"status": "ok", "reason": ""}, "openvino": {"status": "ok", "reason": ""}}
    assert m.entry("student.int8.ort").format == "ort" and set(KEYS) <= set(m.models)
    assert not [k for k in m.models if k.endswith(".ort.openvino")]  # only the plain ONNX models are converted
