"""Model zoo: exact parameter counts of METHOD.md, registry, checkpoint loading, CLI."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import RESNET_CHECKPOINTS, requires_shared_checkpoints
from toolkit import ToolkitError
from toolkit.models import build_model, load_model
from toolkit.models.profile import count_params, profile_model

METHOD_TABLE = {  # METHOD.md section 1: params and CF
    "mobilenetv2_cifar": (2_236_682, 1.0),
    "mobilenetv2_cifar_L3": (1_019_402, 2.19),
    "mobilenetv2_cifar_L5": (543_498, 4.12),
    "mobilenetv2_cifar_L7": (306_954, 7.29),
    "mobilenetv2_cifar_L9": (185_738, 12.04),
    "mobilenetv2_cifar_L11": (77_194, 28.97),
    "mobilenetv2_cifar_L13": (40_970, 54.59),
    "mobilenetv2_cifar_L15": (16_042, 139.43),
    "mobilenetv2_cifar_L17": (1_994, 1121.71),
    "resnet56": (853_018, 1.0),
    "resnet20": (269_722, 3.16),
}


@pytest.mark.parametrize("name", list(METHOD_TABLE))
def test_parameter_counts_and_compression_factor_match_method(name):
    params, cf = METHOD_TABLE[name]
    p = profile_model(name)
    assert p.params == params
    assert p.compression_factor == pytest.approx(cf, abs=0.005)


def test_mflops_of_teacher_and_main_student():
    assert profile_model("mobilenetv2_cifar").mflops == pytest.approx(176, abs=1)
    assert profile_model("mobilenetv2_cifar_L5").mflops == pytest.approx(117, abs=1)


def test_truncated_student_structure():
    m = build_model("mobilenetv2_cifar_L5")
    assert len(m.features) == 14
    assert m.classifier[-1].in_features == 96
    assert not any(isinstance(x, torch.nn.Dropout) for x in m.classifier)
    out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ToolkitError, match="unknown model 'resnet7'"):
        build_model("resnet7")


@requires_shared_checkpoints
def test_pretrained_resnet56_loads_and_mismatch_is_refused(tmp_path):
    m = load_model("resnet56", RESNET_CHECKPOINTS["resnet56"])
    assert count_params(m) == 853_018
    with pytest.raises(ToolkitError, match="does not fit model 'resnet20'"):
        load_model("resnet20", RESNET_CHECKPOINTS["resnet56"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ToolkitError, match="cannot read checkpoint"):
        load_model("resnet20", junk)


@pytest.mark.slow
@requires_shared_checkpoints
@pytest.mark.integration
def test_pretrained_accuracy_on_bit_exact_test_images(cifar10):
    from toolkit.evaluate import evaluate_accuracy

    exact = cifar10.test.exact.nonzero().flatten()
    images, labels = cifar10.test.images[exact], cifar10.test.labels[exact]
    assert len(exact) == 1000
    assert evaluate_accuracy(load_model("resnet56", RESNET_CHECKPOINTS["resnet56"]), images, labels) >= 92.0
    assert evaluate_accuracy(load_model("resnet20", RESNET_CHECKPOINTS["resnet20"]), images, labels) >= 90.5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_models_cli_json_reproduces_method_table():
    r = _cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for name, (params, cf) in METHOD_TABLE.items():
        assert rows[name]["params"] == params
        assert rows[name]["compression_factor"] == pytest.approx(cf, abs=0.005)
    assert rows["mobilenetv2_cifar"]["mflops"] == pytest.approx(176, abs=1)  # METHOD.md, as in the test above
    assert rows["mobilenetv2_cifar_L5"]["mflops"] == pytest.approx(117, abs=1)
    # fewer blocks, fewer operations: the truncated MobileNetV2s' MFLOPs fall strictly with depth
    depth = [rows[f"mobilenetv2_cifar_L{k}"]["mflops"] for k in (3, 5, 7, 9, 11, 13, 15, 17)]
    assert all(a > b for a, b in zip(depth, depth[1:]))


@requires_shared_checkpoints
def test_evaluate_cli_errors_are_one_line(tmp_path):
    r = _cli("evaluate", "--model", "resnet20", "--checkpoint", str(tmp_path / "missing.th"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "checkpoint not found" in r.stderr
    r = _cli("evaluate", "--model", "resnet20", "--checkpoint", str(RESNET_CHECKPOINTS["resnet56"]))
    assert r.returncode == 2 and "does not fit" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.slow
@requires_shared_checkpoints
@pytest.mark.integration
def test_evaluate_cli_exact_only():
    r = _cli("evaluate", "--model", "resnet20", "--checkpoint", str(RESNET_CHECKPOINTS["resnet20"]), "--exact-only", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["images"] == 1000 and out["test_acc"] == pytest.approx(91.5, abs=0.3)
    assert "JPEG" in out["data"]
