"""Pure losses: values against hand computations, shape checks, the AT layer rule."""

import pytest
import torch
import torch.nn.functional as F

from toolkit.config import LossConfig
from toolkit.distill import Distiller, attention_map, attention_transfer_loss, cross_entropy_loss, kd_loss
from toolkit.models import build_model, get_spec


def test_kd_loss_equals_t2_batch_mean_kl():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    T = 2.5
    p_t = F.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_map_is_unit_norm_mean_of_squares():
    f = torch.randn(2, 8, 4, 4)
    a = attention_map(f)
    assert a.shape == (2, 16)
    assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-6)
    raw = f.pow(2).mean(1).flatten(1)
    assert torch.allclose(a, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)


def test_at_loss_zero_for_same_attention_and_positive_otherwise():
    f = torch.randn(2, 8, 4, 4)
    assert attention_transfer_loss([f], [f * 3]).item() == pytest.approx(0.0, abs=1e-7)  # attention is scale-free
    g = torch.randn(2, 16, 4, 4)
    expected = (attention_map(g) - attention_map(f)).pow(2).mean()
    assert attention_transfer_loss([f], [g]).item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() > 1e-4


@pytest.mark.parametrize("bad", [
    lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 9), 2.0),
    lambda: cross_entropy_loss(torch.randn(4, 10), torch.zeros(3, dtype=torch.long)),
    lambda: attention_transfer_loss([torch.randn(2, 8, 4, 4)], [torch.randn(3, 8, 4, 4)]),  # sizes may differ, batches not
    lambda: attention_map(torch.randn(2, 8, 4)),
])
def test_shape_mismatches_raise(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("removed,layer", [(3, "features.9"), (5, "features.9"), (7, "features.9"), (9, "features.4"),
                                           (13, "features.4"), (15, "features.2"), (17, "features.0")])
def test_mobilenet_at_layer_rule(removed, layer):
    assert get_spec(f"mobilenetv2_cifar_L{removed}").at_layers == (layer,)


def test_distiller_contract_teacher_stays_in_eval_and_parts_sum():
    student, teacher = build_model("mobilenetv2_cifar_L5"), build_model("mobilenetv2_cifar")
    d = Distiller(student, teacher, LossConfig(temperature=2.5, alpha=0.01, at_weight=0.8), use_kd=True, use_at=True,
                  at_layers=get_spec("mobilenetv2_cifar_L5").at_layers)
    d.train()
    assert student.training and not teacher.training
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    logits, parts = d.forward_train(x, y)
    assert logits.shape == (3, 10) and set(parts) == {"ce", "kd", "at"}
    assert parts["ce"].item() == pytest.approx(0.99 * F.cross_entropy(logits, y).item(), rel=1e-5)
    assert all(p.grad is None for p in teacher.parameters())
    sum(parts.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.features[0][0].weight.grad.abs().sum() > 0


def _one_channel(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


def test_at_forms_against_hand_worked_values():
    """Teacher map all ones -> A_t = [.5, .5, .5, .5]; student one-hot -> A_s = [1, 0, 0, 0]; squared difference .25
    everywhere, so that layer's term is .25; two further layers agree exactly (term 0).
    paper: mean over the 3 layers = .25 / 3; zagoruyko: half the sum = .125."""
    t = [_one_channel([1, 1, 1, 1]), _one_channel([1, 2, 3, 4]), _one_channel([0, 0, 5, 0])]
    s = [_one_channel([1, 0, 0, 0]), _one_channel([1, 2, 3, 4]), _one_channel([0, 0, 2, 0])]
    from toolkit.distill.losses import attention_transfer_terms

    assert attention_transfer_terms(s, t).tolist() == pytest.approx([0.25, 0.0, 0.0], abs=1e-7)
    assert attention_transfer_loss(s, t, "paper").item() == pytest.approx(0.25 / 3, rel=1e-6)
    assert attention_transfer_loss(s, t, "zagoruyko").item() == pytest.approx(0.125, rel=1e-6)
    with pytest.raises(ValueError, match="unknown AT form"):
        attention_transfer_loss(s, t, "other")


def test_distiller_weights_the_at_term_by_its_form():
    student, teacher = build_model("resnet8"), build_model("resnet8").eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    values = {}
    for form, weight in (("paper", None), ("zagoruyko", None), ("zagoruyko", 10.0)):
        cfg = LossConfig(at_form=form, at_weight=weight)
        with Distiller(student, teacher, cfg, use_kd=False, use_at=True, at_layers=("layer1", "layer2", "layer3")) as d:
            _, parts = d.forward_train(x, y)
            values[(form, weight)] = parts["at"].item()
            assert d.weights["at"] == {None: {"paper": 0.8, "zagoruyko": 1000.0}[form], 10.0: 10.0}[weight]
    # same features: zagoruyko(1000) / paper(0.8) = (1000 / 2 * sum) / (0.8 * mean) = 1000 * 3 / (2 * 0.8)
    assert values[("zagoruyko", None)] / values[("paper", None)] == pytest.approx(1000 * 3 / (2 * 0.8), rel=1e-4)
    assert values[("zagoruyko", 10.0)] * 100 == pytest.approx(values[("zagoruyko", None)], rel=1e-5)
    assert _hook_count(student) == 0 and _hook_count(teacher) == 0


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_at_config_is_validated():
    from toolkit import ToolkitError
    from toolkit.config import build_config

    assert build_config("smoke", overrides=["loss.at_form=zagoruyko"]).loss.at_weight_value == 1000.0
    assert build_config("paper").loss.at_weight_value == 0.8
    with pytest.raises(ToolkitError, match="loss.at_form"):
        build_config("smoke", overrides=["loss.at_form=huge"])
    with pytest.raises(ToolkitError, match="loss.at_layers"):
        build_config("smoke", overrides=["loss.at_layers=layer1"])
