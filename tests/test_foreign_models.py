"""torchvision:/timm:/truncate: models, their checkpoints, and attention transfer between networks of two families."""

import json

import pytest
import torch
import torch.nn.functional as F

from toolkit import ToolkitError
from toolkit.config import LossConfig
from toolkit.distill import Distiller
from toolkit.distill.losses import attention_map, attention_transfer_terms
from toolkit.distill.taps import resolve_at_pairs
from toolkit.models import (build_model, canonical_student_name, classifier_name, derivable_students, get_spec,
                            load_model, load_weights)
from toolkit.models.normalize import InputNormalize
from toolkit.models.profile import count_params, profile_model

IMAGENET_MEAN = [0.485, 0.456, 0.406]


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name,sizes", [
    ("torchvision:mobilenet_v3_small", (32, 64)),
    ("torchvision:resnet18", (32, 48)),
    ("timm:resnet10t", (32, 64)),
    ("truncate:5:mobilenetv2_cifar", (32, 64)),
    ("truncate:3:torchvision:mobilenet_v2", (32, 64)),
    ("truncate:2:timm:resnet10t", (32, 64)),
])
def test_every_kind_builds_and_runs_at_two_sizes(name, sizes):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    assert isinstance(model.normalize, InputNormalize)
    with torch.no_grad():
        for s in sizes:
            out = model(torch.rand(2, 3, s, s))
            assert out.shape == (2, 7) and torch.isfinite(out).all()
    if name.startswith(("torchvision:", "timm:", "truncate:3:torchvision")):
        assert model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)


def test_specs_of_prefixed_names():
    spec = get_spec("torchvision:resnet18")
    assert (spec.family, spec.family_teacher, spec.at_layers) == ("torchvision:resnet18", "torchvision:resnet18",
                                                                  ("layer2", "layer3", "layer4"))
    trunc = get_spec("truncate:3:torchvision:mobilenet_v2")
    assert (trunc.family, trunc.family_teacher, trunc.at_layers) == ("torchvision:mobilenet_v2",
                                                                     "torchvision:mobilenet_v2", ("features.9",))
    assert get_spec("truncate:5:mobilenetv2_cifar").at_layers == get_spec("mobilenetv2_cifar_L5").at_layers
    assert get_spec("timm:resnet10t").at_layers == ("layer2", "layer3", "layer4")


def test_truncating_mobilenetv2_cifar_is_the_builtin_student():
    derived, builtin = build_model("truncate:5:mobilenetv2_cifar"), build_model("mobilenetv2_cifar_L5")
    assert count_params(derived) == count_params(builtin) == 543_498
    assert {k: v.shape for k, v in derived.state_dict().items()} == {k: v.shape for k, v in builtin.state_dict().items()}
    assert profile_model("truncate:5:mobilenetv2_cifar").compression_factor == pytest.approx(4.12, abs=0.005)


def test_truncated_torchvision_mobilenet_is_smaller_and_derivable():
    full, cut = build_model("torchvision:mobilenet_v2"), build_model("truncate:4:torchvision:mobilenet_v2")
    assert count_params(cut) < count_params(full)
    assert cut(torch.rand(1, 3, 40, 40)).shape == (1, 10)
    students = derivable_students("torchvision:mobilenet_v3_small")
    assert students[0] == "truncate:1:torchvision:mobilenet_v3_small" and len(students) == 12
    assert derivable_students("torchvision:resnet18") == [] and derivable_students("resnet56") == []
    assert canonical_student_name("truncate:3", "torchvision:mobilenet_v2") == "truncate:3:torchvision:mobilenet_v2"
    assert canonical_student_name("resnet20", "resnet56") == "resnet20"


@pytest.mark.parametrize("name,message", [
    ("torchvision:resnet1", r"unknown torchvision classification model 'resnet1'; close names: .*resnet18"),
    ("timm:resnet10x", r"unknown timm model 'resnet10x'; close names: .*resnet10t"),
    ("truncate:0:mobilenetv2_cifar", r"L must be 1 to 18 \(mobilenetv2_cifar has 19 blocks"),
    ("truncate:19:mobilenetv2_cifar", r"L must be 1 to 18"),
    ("truncate:13:torchvision:mobilenet_v3_small", r"L must be 1 to 12 \(torchvision:mobilenet_v3_small has 13 blocks"),
    ("truncate:2:torchvision:resnet18", r"'torchvision:resnet18' cannot be truncated: .*truncatable bases: mobilenetv2_cifar"),
    ("truncate:2:resnet56", r"cannot be truncated"),
    ("truncate:5", r"names no base"),
    ("truncate:x:mobilenetv2_cifar", r"whole number"),
    ("truncate:2:nosuchmodel", r"unknown model 'nosuchmodel'"),
])
def test_bad_names_are_one_line_errors(name, message):
    with pytest.raises(ToolkitError, match=message) as exc:
        build_model(name)
    _one_line(exc)


def test_pretrained_is_refused_for_builtin_models():
    with pytest.raises(ToolkitError, match="no published pretrained weights"):
        build_model("resnet20", pretrained=True)


# --- checkpoints -----------------------------------------------------------------------------------------------------

def _bare_mobilenet(num_classes: int = 10) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.mobilenet_v3_small(num_classes=num_classes)


def _assert_loaded(model, bare, skip=()):
    ours = model.state_dict()
    for k, v in bare.state_dict().items():
        if k not in skip:
            assert torch.equal(ours[f"net.{k}"], v), k


def test_bare_torchvision_state_dicts_load_into_the_wrapper(tmp_path):
    from safetensors.torch import save_file

    bare = _bare_mobilenet()
    sd = bare.state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bare.safetensors"))
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "lightning.pt")
    for file in ("bare.pth", "bare.safetensors", "ddp.pt", "lightning.pt"):
        model = build_model("torchvision:mobilenet_v3_small")
        load_weights(model, "torchvision:mobilenet_v3_small", tmp_path / file)
        _assert_loaded(model, bare)
    assert load_model("torchvision:mobilenet_v3_small", tmp_path / "bare.pth").training is False


def test_a_head_for_other_classes_is_refused_or_reset(tmp_path):
    bare = _bare_mobilenet(num_classes=5)
    torch.save(bare.state_dict(), tmp_path / "five.pth")
    model = build_model("torchvision:mobilenet_v3_small", num_classes=10)
    assert classifier_name(model) == "net.classifier.3"
    with pytest.raises(ToolkitError) as exc:
        load_weights(model, "torchvision:mobilenet_v3_small", tmp_path / "five.pth")
    text = _one_line(exc)
    assert "net.classifier.3.weight" in text and "(5, 1024)" in text and "(10, 1024)" in text
    assert "teacher.reset_head=true" in text
    fresh_head = model.get_submodule("net.classifier.3").weight.clone()
    load_weights(model, "torchvision:mobilenet_v3_small", tmp_path / "five.pth", reset_head=True)
    _assert_loaded(model, bare, skip=("classifier.3.weight", "classifier.3.bias"))
    assert model.get_submodule("net.classifier.3").weight.shape == (10, 1024)
    assert torch.equal(model.get_submodule("net.classifier.3").weight, fresh_head)


def test_a_checkpoint_of_another_network_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(build_model("resnet8").state_dict(), tmp_path / "resnet8.pt")
    with pytest.raises(ToolkitError, match=r"does not fit model 'torchvision:mobilenet_v3_small': \d+ missing \(") as exc:
        load_weights(build_model("torchvision:mobilenet_v3_small"), "torchvision:mobilenet_v3_small",
                     tmp_path / "resnet8.pt")
    assert "unexpected (" in _one_line(exc)


def test_a_pickled_model_needs_trust(tmp_path):
    bare = _bare_mobilenet()
    torch.save(bare, tmp_path / "whole.pt")
    model = build_model("torchvision:mobilenet_v3_small")
    with pytest.raises(ToolkitError) as exc:
        load_weights(model, "torchvision:mobilenet_v3_small", tmp_path / "whole.pt")
    text = _one_line(exc)
    for part in ("pickled model", "can run code", "torch.save(model.state_dict(), path)", "teacher.trust_pickle=true"):
        assert part in text
    load_weights(model, "torchvision:mobilenet_v3_small", tmp_path / "whole.pt", trust_pickle=True)
    _assert_loaded(model, bare)


# --- attention transfer across families ------------------------------------------------------------------------------

def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_at_pairs_between_resnet18_and_mobilenet_v3_small_with_different_sizes():
    teacher, student = build_model("torchvision:resnet18").eval(), build_model("torchvision:mobilenet_v3_small")
    pairs = resolve_at_pairs(teacher, student, [["layer2", "features.6"], "normalize"], "torchvision:resnet18",
                             "torchvision:mobilenet_v3_small")
    assert pairs == (("net.layer2", "net.features.6"), ("normalize", "normalize"))
    pairs = pairs[:1]
    with Distiller(student, teacher, LossConfig(at_form="zagoruyko"), use_kd=True, use_at=True, at_layers=pairs) as d:
        _, parts = d.forward_train(torch.rand(2, 3, 64, 64), torch.tensor([0, 1]))
        t_feat, s_feat = d._teacher_tap.outputs, d._student_tap.outputs
        assert t_feat == {} and s_feat == {}  # taken by the loss
        assert torch.isfinite(parts["at"]) and parts["at"].item() > 0
        parts["at"].backward()
        assert student.net.features[0][0].weight.grad.abs().sum() > 0
        assert _hooks(teacher) == 1 and _hooks(student) == 1
    assert _hooks(teacher) == 0 and _hooks(student) == 0


def test_resolve_at_pairs_defaults_and_errors():
    teacher, student = build_model("torchvision:mobilenet_v2"), build_model("truncate:3:torchvision:mobilenet_v2")
    assert resolve_at_pairs(teacher, student, None, "torchvision:mobilenet_v2", "truncate:3") == (
        ("net.features.9", "net.features.9"),)
    assert resolve_at_pairs(build_model("resnet20"), build_model("resnet8"), None, "resnet20", "resnet8") == (
        ("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3"))
    other = build_model("resnet8")
    with pytest.raises(ToolkitError, match=r"different families; name the pairs with loss.at_layers=\[\[teacher_layer"):
        resolve_at_pairs(teacher, other, None, "torchvision:mobilenet_v2", "resnet8")
    with pytest.raises(ToolkitError, match=r"student resnet8 has no module named 'features.6' \(its top-level modules: "
                                           r"normalize, conv1, bn1, layer1") as exc:
        resolve_at_pairs(teacher, other, [["features.6", "features.6"]], "torchvision:mobilenet_v2", "resnet8")
    _one_line(exc)
    with pytest.raises(ToolkitError, match=r"teacher torchvision:mobilenet_v2 has no module named 'layer9' \(its "
                                           r"top-level modules: features, classifier"):
        resolve_at_pairs(teacher, other, [["layer9", "layer1"]], "torchvision:mobilenet_v2", "resnet8")
    with pytest.raises(ToolkitError, match="neither a module path nor"):
        resolve_at_pairs(teacher, other, [["a", "b", "c"]], "torchvision:mobilenet_v2", "resnet8")


def test_attention_maps_of_different_sizes_are_area_pooled_to_the_smaller():
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 4, 4, 4, requires_grad=True), torch.randn(2, 8, 8, 8)
    pooled_t = F.normalize(F.avg_pool2d(ft.pow(2).mean(1, keepdim=True), 2).flatten(1), dim=1)
    expected = (pooled_t - attention_map(fs)).pow(2).mean()
    got = attention_transfer_terms([fs], [ft])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.sum().backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0
    assert attention_transfer_terms([ft], [fs.detach()]).item() == pytest.approx(expected.item(), rel=1e-6)
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)  # same size: the unchanged formula, bit for bit
    old = (F.normalize(b.pow(2).mean(1).flatten(1), dim=1) - F.normalize(a.pow(2).mean(1).flatten(1), dim=1)).pow(2).mean()
    assert torch.equal(attention_transfer_terms([a], [b])[0], old)
    assert attention_transfer_terms([torch.randn(1, 2, 7, 7)], [torch.randn(1, 2, 4, 4)]).shape == (1,)


def test_models_cli_lists_a_family(capsys):
    from toolkit.cli import main

    assert main(["models", "--family", "truncate:3:torchvision:mobilenet_v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "truncate:3:torchvision:mobilenet_v2"
    assert main(["models", "--family", "mobilenetv2_cifar_L9", "--image-size", "64", "--num-classes", "100",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mobilenetv2_cifar_L9"] + [f"truncate:{k}:mobilenetv2_cifar_L9" for k in range(1, 10)]
    assert rows[0]["compression_factor"] == 1.0 and all(r["compression_factor"] > 1 for r in rows[1:])
    assert rows[0]["image_size"] == 64 and rows[0]["mflops"] == pytest.approx(4 * profile_model("mobilenetv2_cifar_L9").mflops, rel=0.01)
    assert main(["models", "--family", "torchvision:nope"]) == 2
    assert "unknown torchvision classification model" in capsys.readouterr().err


def test_pretrained_torchvision_gets_a_fresh_head_and_an_offline_download_is_one_line(monkeypatch):
    import torchvision.models as tvm

    real = tvm.get_model

    def published(name, weights=None, **kwargs):  # stands in for the download: a 1000-class network
        return real(name, weights=None) if weights == "DEFAULT" else real(name, weights=weights, **kwargs)

    monkeypatch.setattr(tvm, "get_model", published)
    model = build_model("torchvision:mobilenet_v3_small", num_classes=4, pretrained=True).eval()
    assert model.net.classifier[3].out_features == 4 and model(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    cut = build_model("truncate:9:torchvision:mobilenet_v3_small", 4, pretrained=True).eval()
    assert cut(torch.rand(1, 3, 32, 32)).shape == (1, 4)

    def offline(name, weights=None, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(ToolkitError, match=r"cannot get torchvision's pretrained weights for 'resnet18' .*needs internet") as exc:
        build_model("torchvision:resnet18", pretrained=True)
    _one_line(exc)
