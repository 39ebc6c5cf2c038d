"""ig.steps=auto: the fewest IG steps passing the completeness check and matching the 50-step maps (steps.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.attribution.cache import fingerprint_parts, ig_fingerprint, load_or_compute_ig_maps
from toolkit.attribution.ig import ig_attributions, ig_baseline, prepare_teacher, quadrature
from toolkit.attribution.steps import CANDIDATE_STEPS, choose_ig_steps, completeness_error
from toolkit.config import IGConfig, build_config
from toolkit.data import make_synthetic
from toolkit.models.normalize import InputNormalize
from builders import bn_perturbed_model

CPU = torch.device("cpu")


class LinearClassifier(nn.Module):
    """Linear in the input behind the normalisation: IG is exact with any number of steps."""

    def __init__(self, classes: int = 10, size: int = 32):
        super().__init__()
        self.normalize = InputNormalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
        self.fc = nn.Linear(3 * size * size, classes)

    def forward(self, x):
        return self.fc(self.normalize(x).flatten(1))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train_per_class=2, n_test_per_class=1, seed=3)


def _linear():
    torch.manual_seed(0)
    return LinearClassifier().eval()


def test_linear_model_picks_the_smallest_candidate(data):
    cfg = IGConfig(steps="auto", auto_sample=8)
    choice = choose_ig_steps(_linear(), data.train.images, data.train.labels, cfg, CPU, "fp32")
    assert choice.steps == min(CANDIDATE_STEPS) and not choice.fell_back
    assert [c.steps for c in choice.candidates] == [min(CANDIDATE_STEPS)]
    assert choice.candidates[0].completeness_error < 1e-3 and choice.candidates[0].correlation > 0.999
    assert choice.sample_size == 8 and choice.reference_steps == 50
    assert "chose 4 steps" in choice.line()


def test_no_qualifying_count_falls_back_to_50(data):
    cfg = IGConfig(steps="auto", auto_sample=4, auto_min_corr=1.01)
    choice = choose_ig_steps(_linear(), data.train.images, data.train.labels, cfg, CPU, "fp32")
    assert choice.steps == 50 and choice.fell_back
    assert [c.steps for c in choice.candidates] == sorted(CANDIDATE_STEPS)
    assert not any(c.qualifies for c in choice.candidates)


def test_completeness_error_of_50_step_ig_on_a_small_cnn_is_small(data):
    model = bn_perturbed_model()
    x = data.train.images[:4].float() / 255.0
    target = data.train.labels[:4]
    base = ig_baseline(model, "mean")
    weights, alphas = quadrature("gausslegendre", 50)
    attr = ig_attributions(prepare_teacher(model, CPU), x, target, base, weights, alphas)
    with torch.no_grad():
        delta = model(x).gather(1, target.view(-1, 1)).view(-1) - model(base.expand_as(x)).gather(1, target.view(-1, 1)).view(-1)
    err = completeness_error(attr, delta)
    assert err.shape == (4,) and float(err.mean()) < 0.02
    # a wrong sum is caught: attributions with half the mass have error ~0.5
    assert float(completeness_error(attr / 2, delta).mean()) == pytest.approx(0.5, abs=0.02)


def test_cnn_needs_more_than_the_smallest_candidate(data):
    cfg = IGConfig(steps="auto", auto_sample=8)
    choice = choose_ig_steps(bn_perturbed_model(), data.train.images, data.train.labels, cfg, CPU, "fp32")
    first = choice.candidates[0]
    assert first.steps == 4 and not first.qualifies and first.completeness_error > choice.reference_completeness_error
    assert 4 < choice.steps <= 50 and choice.candidates[-1].steps == choice.steps
    assert choice.reference_completeness_error < 0.01


def test_auto_choice_and_figures_are_in_meta_and_fingerprint(tmp_path, data, capsys):
    model = _linear()
    images, labels = data.train.images[:6], data.train.labels[:6]
    index = torch.arange(6)
    cfg = IGConfig(steps="auto", auto_sample=4, chunk_size=4, batch_size=4)
    maps = load_or_compute_ig_maps(tmp_path / "ig", model, "linear", images, labels, index, "synthetic", cfg, CPU, "fp32",
                                   progress=False)
    assert maps.shape == (6, 32, 32)
    out = capsys.readouterr().out
    assert out.count("IG steps=auto") == 1 and "chose 4 steps" in out
    meta = json.loads((tmp_path / "ig" / "meta.json").read_text())
    auto = meta["steps_auto"]
    assert auto["steps"] == 4 and auto["reference_steps"] == 50 and auto["sample_size"] == 4 and auto["sample_seed"] == 0
    assert auto["candidates"][0]["steps"] == 4 and {"completeness_error", "correlation", "seconds"} <= set(auto["candidates"][0])
    assert auto["estimated_seconds_saved"] >= 0 and auto["train_images"] == 6
    assert meta["parts"]["ig_settings"]["steps"] == 4
    # documented: an auto cache that chose 4 has the fingerprint of a steps=4 cache (same maps)
    fixed = dataclasses.replace(cfg, steps=4)
    assert meta["fingerprint"] == ig_fingerprint(model, "linear", index, "synthetic", fixed, "fp32")
    assert meta["parts"] == json.loads(json.dumps(fingerprint_parts(model, "linear", index, "synthetic", fixed, "fp32")))
    # a rerun reuses the recorded choice (no new search) and the cached maps
    again = load_or_compute_ig_maps(tmp_path / "ig", model, "linear", images, labels, index, "synthetic", cfg, CPU, "fp32",
                                    progress=False)
    assert torch.equal(again, maps) and "as chosen before" in capsys.readouterr().out


def test_auto_never_reuses_a_cache_made_with_other_steps(tmp_path, data):
    model = _linear()
    images, labels, index = data.train.images[:4], data.train.labels[:4], torch.arange(4)
    load_or_compute_ig_maps(tmp_path / "ig", model, "linear", images, labels, index, "synthetic", IGConfig(steps=50),
                            CPU, "fp32", progress=False)
    with pytest.raises(ToolkitError, match=r"steps: 50 -> 4"):
        load_or_compute_ig_maps(tmp_path / "ig", model, "linear", images, labels, index, "synthetic",
                                IGConfig(steps="auto", auto_sample=4), CPU, "fp32", progress=False)


def test_steps_config_values():
    assert build_config("cpu", overrides=["ig.steps=auto"]).ig.steps == "auto"
    assert build_config("cpu", overrides=["ig.steps=16"]).ig.steps == 16
    for bad in ("fast", "0", "2.5", "true"):
        with pytest.raises(ToolkitError) as info:
            build_config("cpu", overrides=[f"ig.steps={bad}"])
        assert "ig.steps" in str(info.value) and "\n" not in str(info.value)


def test_a_reference_less_complete_than_the_tolerance_sets_the_bound(data):
    """With a tolerance no count can meet (1e-9), the 50-step reference's own error is the bound: the count chosen is
    the first as complete as the reference (and as correlated), not a fall-back."""
    cfg = IGConfig(steps="auto", auto_sample=6, auto_tolerance=1e-9)
    choice = choose_ig_steps(bn_perturbed_model(), data.train.images, data.train.labels, cfg, CPU, "fp32")
    assert choice.reference_completeness_error > 1e-9
    assert choice.completeness_bound == choice.reference_completeness_error and choice.tolerance == 1e-9
    assert not choice.fell_back
    chosen = choice.candidates[-1]
    assert chosen.steps == choice.steps and chosen.qualifies
    assert chosen.completeness_error <= choice.completeness_bound and chosen.correlation >= cfg.auto_min_corr
    assert all(c.completeness_error > choice.completeness_bound or c.correlation < cfg.auto_min_corr
               for c in choice.candidates[:-1])
    assert "reference's own error" in choice.line()
