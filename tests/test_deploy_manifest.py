"""The manifest schema shared by exporter and runtime (pure Python, no data needed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from deploy.manifest import (
    SCHEMA, SCHEMA_MINOR, DeployError, Manifest, ModelEntry, Normalization, Preprocessing, TensorSpec,
    manifest_from_dict, read_manifest, sha256_file,
)


def make_manifest() -> Manifest:
    entry = ModelEntry(
        file="student.fp32.onnx", sha256="0" * 64, size_bytes=10, role="student", precision="fp32",
        architecture="resnet8", opset=18, input=TensorSpec("input", ["batch", 3, 32, 32], "float32", "NCHW"),
        output=TensorSpec("logits", ["batch", 10]),
        preprocessing=Preprocessing(Normalization([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])),
        source_checkpoint={"path": "student.pt", "sha256": "1" * 64}, accuracy={"top1": 50.0, "n": 10},
    )
    return Manifest(models={"student.fp32": entry}, classes=[f"c{i}" for i in range(10)], toolkit_version="0.1.0", run="runs/x")


def test_roundtrip_through_json(tmp_path):
    m = make_manifest()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(m.to_dict()))
    back = read_manifest(tmp_path)  # a folder resolves to its manifest.json
    assert back == m and back.to_dict()["schema"] == SCHEMA
    assert back.entry("student.fp32").preprocessing.normalization.std == [0.25] * 3
    with pytest.raises(DeployError, match="'student.int8' not in manifest; available: student.fp32"):
        back.entry("student.int8")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema="other"), "not an export manifest"),
    (lambda d: d.update(schema_version=99), "schema_version 99 not supported"),
    (lambda d: d["models"]["student.fp32"].pop("sha256"), "models.student.fp32' lacks sha256"),
    (lambda d: d["models"]["student.fp32"]["preprocessing"]["normalization"].update(std=[1, 0, 1]), "3 positive stds"),
    (lambda d: d["models"]["student.fp32"].update(file="../evil.onnx"), "plain name"),
    (lambda d: d["models"]["student.fp32"].update(input=[1, 2]), "must be an object"),
    (lambda d: d.update(models={}), "no models"),
    (lambda d: d.update(ship={"reason": "fast"}), "'ship' must be an object naming a model key"),
    (lambda d: d.update(ship="student.fp32"), "'ship' must be an object naming a model key"),
])
def test_malformed_manifests_give_one_line_errors(mutate, message):
    d = make_manifest().to_dict()
    mutate(d)
    with pytest.raises(DeployError, match=message) as err:
        manifest_from_dict(d)
    assert "\n" not in str(err.value)


def test_minor_revisions_read_both_ways():
    """Minor 1 adds optional ``ship`` and ``int8``; a minor-0 manifest (written before them) still reads, and a
    reader ignores fields a later minor adds."""
    m = make_manifest()
    m.ship, m.int8 = {"model": "student.fp32", "reason": "int8 is no faster"}, {"decisions_on": "validation"}
    d = m.to_dict()
    assert d["schema_minor"] == SCHEMA_MINOR == 1 and list(d)[:3] == ["schema", "schema_version", "schema_minor"]
    back = manifest_from_dict(json.loads(json.dumps(d)))
    assert back == m and back.shipped_student == "student.fp32"
    old = make_manifest().to_dict()
    for key in ("schema_minor", "ship", "int8"):
        old.pop(key)
    read = manifest_from_dict(old)
    assert (read.schema_minor, read.ship, read.int8) == (0, None, None)
    assert read.shipped_student == "student.fp32"  # a minor-0 manifest without int8: the only student
    old["models"]["student.int8"] = dict(old["models"]["student.fp32"], file="student.int8.onnx", precision="int8")
    assert manifest_from_dict(old).shipped_student == "student.int8"  # minor 0 shipped int8
    gone = manifest_from_dict(dict(d, ship={"model": "student.int8", "reason": "r"}))  # names a missing entry:
    with pytest.raises(DeployError, match="'student.int8' not in manifest"):  # refused where it is used
        gone.entry(gone.shipped_student)
    later = dict(d, schema_minor=7, some_future_field={"x": 1})
    assert manifest_from_dict(later).schema_minor == 7


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DeployError, match="manifest not found"):
        read_manifest(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DeployError, match="cannot read manifest"):
        read_manifest(tmp_path / "bad.json")


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    big = bytes(range(256)) * 9000  # spans several read chunks
    (tmp_path / "g").write_bytes(big)
    assert sha256_file(tmp_path / "g", chunk=4096) == hashlib.sha256(big).hexdigest()
