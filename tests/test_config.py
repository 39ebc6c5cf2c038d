"""Configs: presets, overrides, validation, configuration names."""

import pytest

from toolkit import ToolkitError
from toolkit.config import CONFIGURATIONS, build_config, canonical_configuration, list_presets


def test_presets_exist_and_paper_has_the_paper_hyperparameters():
    assert {"smoke", "cpu", "paper"} <= set(list_presets())
    cfg = build_config("paper")
    assert (cfg.teacher.model, cfg.student.model) == ("mobilenetv2_cifar", "mobilenetv2_cifar_L5")
    assert (cfg.student.optimizer, cfg.student.lr, cfg.student.schedule, cfg.student.epochs, cfg.student.batch_size) == \
        ("adam", 0.001, "constant", 100, 64)
    assert (cfg.loss.temperature, cfg.loss.alpha, cfg.loss.at_weight) == (2.5, 0.01, 0.8)
    assert (cfg.ig.steps, cfg.ig.method, cfg.overlay.prob, cfg.overlay.weight) == (50, "gausslegendre", 0.1, 0.5)


def test_overrides_apply_and_unknown_keys_fail():
    cfg = build_config("smoke", overrides=["student.epochs=7", "loss.alpha=0.2", "configuration=KD+IG+AT"])
    assert cfg.student.epochs == 7 and cfg.loss.alpha == 0.2 and cfg.configuration == "KD_IG_AT"
    with pytest.raises(ToolkitError, match="unknown config key 'student.epoch'"):
        build_config("smoke", overrides=["student.epoch=3"])
    with pytest.raises(ToolkitError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(ToolkitError, match="overlay.prob"):
        build_config("smoke", overrides=["overlay.prob=1.5"])
    with pytest.raises(ToolkitError, match="not key=value"):
        build_config("smoke", overrides=["student.epochs"])
    assert build_config("smoke").ig.rows == "auto" and build_config("smoke", overrides=["ig.rows=128"]).ig.rows == 128
    with pytest.raises(ToolkitError, match="ig.rows must be a whole number >= 1 or auto"):
        build_config("smoke", overrides=["ig.rows=0"])


def test_eight_configurations_by_name():
    assert len(CONFIGURATIONS) == 8
    assert canonical_configuration("kd+ig") == "KD_IG"
    assert canonical_configuration("Student") == "Student"
    with pytest.raises(ToolkitError, match="unknown configuration"):
        canonical_configuration("KD+XY")
