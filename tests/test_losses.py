"""Pure losses: values against hand computations, shape checks, the AT layer rule."""

import math

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
    assert attention_transfer_loss([f], [torch.randn(2, 16, 4, 4)]).item() > 0


@pytest.mark.parametrize("bad", [
    lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 9), 2.0),
    lambda: cross_entropy_loss(torch.randn(4, 10), torch.zeros(3, dtype=torch.long)),
    lambda: attention_transfer_loss([torch.randn(2, 8, 4, 4)], [torch.randn(2, 8, 8, 8)]),
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
    assert student.features[0][0].weight.grad is not None
