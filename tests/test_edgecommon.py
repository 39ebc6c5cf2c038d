"""The bottom layer ``edgecommon``: hashing helpers (digests pinned to the values recorded before they moved here) and the
one latency timer as its users call it (deploy.latency, the sweep's latency)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecommon import ToolkitError
from edgecommon.hashing import array_bytes, fingerprint, sha256_file, sha256_hex, state_digest, tensor_digest
from edgecommon.timing import TimingPlan, fixed_input, measure, ort_callable, time_interleaved, time_rounds


# ---------------------------------------------------------------- hashing


def _net() -> nn.Module:
    """A module with fixed weights, a BatchNorm's buffers and a non-persistent buffer."""
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, p in enumerate(m.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / (i + 2))
    m.register_buffer("scale", torch.tensor([0.5, 2.0]), persistent=False)
    return m


def test_digests_equal_those_recorded_in_existing_run_folders():
    """Values computed with toolkit.pipeline's and toolkit.attribution.cache's own hashlib code before the move."""
    from toolkit.attribution.cache import teacher_weights_sha256
    from toolkit.pipeline import fingerprint as pipeline_fingerprint, state_digest as pipeline_state_digest

    assert pipeline_fingerprint is fingerprint and pipeline_state_digest is state_digest  # re-exported, not copied
    obj = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}, "p": Path("/tmp/x")}
    assert fingerprint(obj) == "99822716726f1a7d"
    t = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    assert tensor_digest(t) == "700a4498438a801b" and tensor_digest(t.t()) == "bf6cce68c5f41726"  # C order of a view
    assert tensor_digest(t.numpy()) == "700a4498438a801b"
    assert state_digest(_net()) == "292398b70d2b2ae9"
    assert state_digest(nn.DataParallel(_net())) == "292398b70d2b2ae9"  # the wrapped module's state
    assert teacher_weights_sha256(_net()) == "4b3023f421a177c65cbee9cb97b4de69186930baa678f56ed709739d33c75660"
    assert tensor_digest(torch.arange(5), length=None) == (
        "281b02b10f5f4997e5bf8c93343e6f2aa8bc81ffad6d6813c593181ebceda12a")
    assert fingerprint({"b": 1, "a": [1, 2]}, length=None) == (
        "3813f9409eb0095bf9c8e1225c627acf867d89bd18b8856fc38588a0c8c490f3")  # the IG cache's fingerprint form


def test_bfloat16_tensors_hash_by_their_bits():
    x = torch.linspace(-1, 1, 7).to(torch.bfloat16)
    assert tensor_digest(x, length=None) == "b87d6927874d952930072a66c7cf2d53678c3c6511afe9e0001f61d20eeeb093"
    assert array_bytes(x) == x.view(torch.int16).numpy().tobytes()
    assert tensor_digest(x) != tensor_digest(x.float())


def test_file_and_chunk_hashes(tmp_path):
    big = bytes(range(256)) * 9000
    (tmp_path / "g").write_bytes(big)
    full = hashlib.sha256(big).hexdigest()
    assert sha256_file(tmp_path / "g", chunk=4096) == full and sha256_file(tmp_path / "g", length=16) == full[:16]
    assert sha256_hex(["ab", b"c"]) == hashlib.sha256(b"abc").hexdigest()
    assert fingerprint({"k": 1}) == hashlib.sha256(json.dumps({"k": 1}).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the timer


def test_time_rounds_alternates_and_gives_each_round_its_share():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    per_round = time_rounds(fns, TimingPlan(warmup=1, runs=4, duration_s=0), rounds=2)
    assert calls == ["a", "b", "c"] + (["a"] * 2 + ["b"] * 2 + ["c"] * 2) * 2
    assert {k: [len(r) for r in v] for k, v in per_round.items()} == {k: [2, 2] for k in fns}
    flat = time_interleaved(fns, TimingPlan(warmup=0, runs=5, duration_s=0), rounds=2)  # 3 + 3 timed, cut to 5
    assert {k: len(v) for k, v in flat.items()} == {k: 5 for k in fns}
    with pytest.raises(ToolkitError):
        TimingPlan(runs=0, duration_s=0)


def test_measure_summarizes_per_batch():
    stats = measure(lambda: sum(range(1000)), TimingPlan(warmup=2, runs=20, duration_s=0), batch=8)
    assert stats.runs == 20 and 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.images_per_s == pytest.approx(8 * 1000 / stats.mean_ms)


def _tiny_onnx(path: Path, scale: float) -> Path:
    """A one-node ONNX model (input "input" (batch, 3, 32, 32) -> output "logits" = input * scale), no torch."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["input", "k"], ["logits"])], "tiny", [x], [y], [k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _tiny_export(folder: Path) -> Path:
    from deploy.manifest import (
        MANIFEST_NAME, Manifest, ModelEntry, Normalization, Preprocessing, TensorSpec,
    )

    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for key, scale in (("student.fp32", 2.0), ("teacher.fp32", 3.0)):
        path = _tiny_onnx(folder / f"{key}.onnx", scale)
        models[key] = ModelEntry(
            file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size, role=key.split(".")[0],
            precision="fp32", architecture="mul", opset=17, input=TensorSpec("input", ["batch", 3, 32, 32]),
            output=TensorSpec("logits", ["batch", 3, 32, 32]),
            preprocessing=Preprocessing(Normalization([0.0] * 3, [1.0] * 3)), source_checkpoint={})
    manifest = Manifest(models=models, classes=["a", "b", "c"], toolkit_version="0", run="none")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict()))
    return folder


def test_ort_callable_runs_the_session_on_the_fixed_input(tmp_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(_tiny_onnx(tmp_path / "m.onnx", 2.0)), providers=["CPUExecutionProvider"])
    x = fixed_input(2, seed=1)
    (out,) = ort_callable(session, x)()
    np.testing.assert_allclose(out, 2 * x)


def test_deploy_latency_times_every_model_in_rounds(tmp_path, capsys):
    from deploy import latency

    figures = latency.time_model(_tiny_onnx(tmp_path / "m.onnx", 2.0), batch=2, warmup=1, repeats=7)
    assert set(figures) == {"p50", "p90", "p99", "mean"} and 0 < figures["p50"] <= figures["p90"] <= figures["p99"]
    export = _tiny_export(tmp_path / "export")
    assert latency.main([str(export), "--warmup", "1", "--repeats", "5", "--rounds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("#") and "5 runs x 3 rounds" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"student.fp32", "teacher.fp32"}
    for line in rows.values():
        per_round = [float(v) for v in line.split("rounds: ")[1].rstrip(")").split(", ")]
        assert len(per_round) == 3 and float(line.split()[2]) == pytest.approx(np.median(per_round), abs=1e-3)
    assert latency.main([str(export), "--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: timing plan needs")


def test_sweep_latency_uses_the_timer():
    from toolkit.experiments.latency import measure_latency

    ort_figures = measure_latency("resnet8", warmup=1, repeats=5)
    assert ort_figures["method"].startswith("ONNX Runtime") and ort_figures["repeats"] == 5
    assert 0 < ort_figures["median_ms"] <= ort_figures["p90_ms"]
    eager = measure_latency("resnet8", warmup=1, repeats=3, prefer="eager")
    assert eager["method"].startswith("PyTorch") and eager["repeats"] == 3 and 0 < eager["median_ms"] <= eager["p90_ms"]
