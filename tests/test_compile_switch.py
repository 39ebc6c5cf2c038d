"""The ``compile`` switch (toolkit.distill.compile): off/auto/on, the eager fallback when compilation really fails,
and the fused SGD that make_optimizer uses (bit-equal to the per-parameter loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.config import ADDED_SETTINGS, OptimConfig, RunConfig, build_config, fingerprint_settings
from toolkit.distill.compile import AUTO_COMPILE, CompiledOrEager, compile_wanted, maybe_compile
from toolkit.distill.trainer import make_optimizer

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def test_config_key_default_values_and_fingerprints():
    cfg = build_config("cpu")
    assert cfg.compile == "auto" and ADDED_SETTINGS["compile"] == "auto"
    for value in ("off", "on", "auto"):
        assert build_config("cpu", overrides=[f"compile={value}"]).compile == value
    with pytest.raises(ToolkitError) as info:
        build_config("cpu", overrides=["compile=fast"])
    assert "compile must be off, auto or on" in str(info.value) and "\n" not in str(info.value)
    # the default stays out of study fingerprints (settings recorded before the key existed are still current);
    # any other value is part of them
    assert "compile" not in fingerprint_settings({"compile": RunConfig().compile})
    assert fingerprint_settings({"compile": "on"}) == {"compile": "on"}
    # a speed-only setting never enters a fingerprint, whatever its value
    assert fingerprint_settings({"rows": 128, "steps": 16}, "ig.") == {"steps": 16}
    assert fingerprint_settings({"ig.rows": "auto"}) == {}


def test_auto_means_off_where_not_measured_to_gain():
    assert AUTO_COMPILE["cpu"] is False
    assert not compile_wanted("auto", CPU) and not compile_wanted("off", CPU) and compile_wanted("on", CPU)
    model = _small()
    assert maybe_compile(model, "auto", CPU) is model and maybe_compile(model, "off", CPU) is model
    assert isinstance(maybe_compile(model, "on", CPU), CompiledOrEager)
    with pytest.raises(ToolkitError):
        compile_wanted("yes", CPU)


_FALLBACK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    sys.path.insert(0, {repo!r})
    from toolkit.distill.compile import CompiledOrEager
    from toolkit.distill.trainer import make_optimizer
    from toolkit.config import OptimConfig
    torch.manual_seed(0)
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 10)).train()
    x = torch.rand(4, 3, 8, 8); y = torch.tensor([0, 1, 2, 3])
    model, plain = net(), net()
    wrapped = CompiledOrEager(model, "student", dynamic=False)
    opts = [make_optimizer(m.parameters(), OptimConfig(lr=0.1)) for m in (model, plain)]
    for _ in range(2):  # two training steps through the wrapper (falls back at the first) and eagerly
        for fwd, opt in ((wrapped, opts[0]), (plain, opts[1])):
            loss = nn.functional.cross_entropy(fwd(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    print(json.dumps({{"fell_back": wrapped.fell_back, "reason": wrapped.reason, "same": same}}))
""")


def test_fallback_when_the_cpp_compiler_is_missing(tmp_path):
    """A real compilation failure: inductor is pointed at a C++ compiler that does not exist (CXX), with its caches
    off, so the first kernel it builds fails. The wrapper warns once and trains eagerly, exactly as without it."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), CC=str(tmp_path / "no-such-cc"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TORCHINDUCTOR_FX_GRAPH_CACHE="0",
               TORCHINDUCTOR_AUTOGRAD_CACHE="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT.format(repo=str(REPO))], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fell_back"] and out["same"], out
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: torch.compile of the student failed")]
    assert len(warnings) == 1 and "continuing eager" in warnings[0]


def test_fallback_when_torch_compile_itself_raises(monkeypatch, capsys):
    """torch.compile raising at wrap time (a torch build without dynamo): eager from the start, one warning."""
    def broken(*a, **k):
        raise RuntimeError("dynamo is not available\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    model = _small()
    wrapped = CompiledOrEager(model, "teacher")
    x = torch.rand(2, 3, 8, 8)
    assert wrapped.fell_back and not wrapped.compiled and "dynamo is not available" in wrapped.reason
    assert torch.equal(wrapped(x), model(x))
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile of the teacher failed") == 1 and "second line" not in err


@pytest.mark.slow
def test_compiled_step_matches_eager_and_the_probe_changes_nothing():
    model, plain = _small().train(), _small().train()
    wrapped = CompiledOrEager(model, "student", dynamic=False)
    x = torch.rand(4, 3, 8, 8)
    out = wrapped(x)
    assert not wrapped.fell_back and wrapped.compiled
    ref = plain(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # the probe ran one extra forward in train mode: BatchNorm statistics must be those of one forward only
    torch.testing.assert_close(model[1].running_mean, plain[1].running_mean)
    assert int(model[1].num_batches_tracked) == int(plain[1].num_batches_tracked) == 1
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(model[0].weight.grad, plain[0].weight.grad, rtol=1e-4, atol=1e-5)
    assert wrapped.module is model and len(list(wrapped.parameters())) == len(list(model.parameters()))


def test_fused_sgd_is_bit_equal_to_the_loop():
    opt = make_optimizer(_small().parameters(), OptimConfig(optimizer="sgd", lr=0.05))
    assert opt.defaults.get("fused") is True

    def train(fused: bool) -> list[torch.Tensor]:
        model = _small().train()
        if fused:
            opt = make_optimizer(model.parameters(), OptimConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4))
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, foreach=False)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return [t.detach().clone() for t in model.state_dict().values()]

    assert all(torch.equal(a, b) for a, b in zip(train(True), train(False)))


def test_adam_stays_unfused():
    opt = make_optimizer(_small().parameters(), OptimConfig(optimizer="adam", lr=1e-3))
    assert not opt.defaults.get("fused")


def test_trainer_wraps_the_called_model_only_when_compiling(tmp_path):
    """place_models: compile=on wraps the model the step calls (the plain module stays the one saved and evaluated);
    auto on CPU and attention transfer leave it eager. Building the wrapper compiles nothing yet."""
    from toolkit.data import make_synthetic
    from toolkit.distill.trainer import TrainJob, place_models
    from toolkit.distributed import current

    data = make_synthetic(n_train_per_class=1, n_test_per_class=1)

    def job(**kw):
        return TrainJob(role="student", model_name="small", model=_small(), optim=OptimConfig(), train=data.train, val=None,
                        test=data.test, out_dir=tmp_path, fingerprint="f", seed=0, device=CPU, precision="fp32",
                        channels_last=False, progress=False, **kw)

    model, call = place_models(job(compile="on"), current())
    assert isinstance(call, CompiledOrEager) and call.module is model
    model, call = place_models(job(compile="auto"), current())
    assert call is model
    model, call = place_models(job(compile="on", use_at=True, teacher=_small(), at_layers=("0",)), current())
    assert call is model
