"""Training loop: bit-exact resume, stale checkpoints refused, non-finite loss stops, pipeline on tiny data."""

import json

import pytest
import torch

from toolkit import ToolkitError
from toolkit.config import build_config
from toolkit.pipeline import prepare_data, train_student

SYNTH = ["data.dataset=synthetic", "data.synthetic_per_class=24", "data.val_size=40", "data.train_subset=null",
         "data.test_subset=null", "student.batch_size=32", "progress=false"]


def _cfg(*extra):
    return build_config("smoke", overrides=SYNTH + list(extra))


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = _cfg("student.epochs=3", "configuration=Student")
    data = prepare_data(cfg)
    full = train_student(cfg, data, None, None, tmp_path / "full", configuration="Student")
    part = train_student(cfg, data, None, None, tmp_path / "resumed", configuration="Student", max_epochs_this_call=1)
    assert part["finished"] is False and (tmp_path / "resumed" / "student.ckpt").is_file()
    resumed = train_student(cfg, data, None, None, tmp_path / "resumed", configuration="Student")
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_acc"] == full["test_acc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert not (tmp_path / "resumed" / "student.ckpt").exists()


def test_finished_stage_is_reused_and_other_settings_are_refused(tmp_path):
    cfg = _cfg("student.epochs=1", "configuration=Student")
    data = prepare_data(cfg)
    first = train_student(cfg, data, None, None, tmp_path, configuration="Student")
    again = train_student(cfg, data, None, None, tmp_path, configuration="Student")
    assert again["test_acc"] == first["test_acc"] and again["seconds"] == first["seconds"]
    other = _cfg("student.epochs=1", "student.lr=0.05", "configuration=Student")
    with pytest.raises(ToolkitError, match="fingerprint differs"):
        train_student(other, data, None, None, tmp_path, configuration="Student")


def test_non_finite_loss_stops_with_the_step(tmp_path):
    cfg = _cfg("student.epochs=1", "student.lr=1e30", "precision=fp32", "configuration=Student")
    data = prepare_data(cfg)
    with pytest.raises(ToolkitError, match=r"non-finite loss in student at epoch 1, step \d+"):
        train_student(cfg, data, None, None, tmp_path, configuration="Student")


def test_training_learns_synthetic_classes(tmp_path):
    cfg = _cfg("student.epochs=4", "configuration=Student")
    result = train_student(cfg, prepare_data(cfg), None, None, tmp_path, configuration="Student")
    assert result["test_acc"] > 30.0  # 10 classes: chance is 10%
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all("val_acc" in r for r in rows)


def test_same_seed_gives_same_init_and_order_across_configurations(tmp_path):
    from toolkit.models import build_model, load_model

    cfg = _cfg("student.epochs=1", "teacher.mode=scratch", "teacher.model=resnet8", "student.max_steps=1",
               "loss.alpha=0.0", "teacher.checkpoint=null")
    data = prepare_data(cfg)
    # alpha = 0 makes KD's total equal to CE's: the same seed must then give identical weights.
    teacher = build_model("resnet8").eval()
    train_student(cfg, data, None, None, tmp_path / "a", configuration="Student")
    train_student(cfg, data, teacher, None, tmp_path / "b", configuration="KD")
    a, b = load_model("resnet8", tmp_path / "a" / "student.pt"), load_model("resnet8", tmp_path / "b" / "student.pt")
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_paper_preset_runs_a_few_steps_on_cpu(tmp_path):
    cfg = build_config("paper", overrides=["data.dataset=synthetic", "data.synthetic_per_class=16", "data.val_size=20",
                                           "student.max_steps=2", "student.epochs=1", "progress=false",
                                           "configuration=KD_AT"])
    data = prepare_data(cfg)
    from toolkit.models import build_model

    teacher = build_model(cfg.teacher.model).eval()
    result = train_student(cfg, data, teacher, None, tmp_path, configuration="KD_AT")
    assert result["finished"] and result["name"] == "mobilenetv2_cifar_L5" and result["params"] == 543_498
    assert set(result["history"][0]["losses"]) == {"ce", "kd", "at"}


@pytest.mark.slow
def test_torchrun_ddp_two_processes_on_cpu(tmp_path):
    """The whole chain under torchrun (gloo on CPU): ranks agree on the teacher, IG cache and summary."""
    import subprocess
    import sys

    import socket

    with socket.socket() as sock:  # a free port, so parallel test runs on one machine do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "toolkit", "distill", "--preset", "smoke", "--name", "ddp", "--runs-dir", str(tmp_path),
           *SYNTH, "teacher.mode=scratch", "teacher.checkpoint=null", "teacher.model=resnet8", "teacher.epochs=1",
           "student.epochs=1", "ig.steps=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("world size 2") == 2
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["student"]["name"] == "resnet8" and "baseline" in summary


# ---------------------------------------------------------------- paired runs, the teacher's input, hooks, resume safety
from toolkit.config import LossConfig, OptimConfig, OverlayConfig  # noqa: E402
from toolkit.data.augment import to_float  # noqa: E402
from toolkit.distill.batches import epoch_batches  # noqa: E402
from toolkit.distill.trainer import TrainJob, train_model  # noqa: E402


class InputRecorder:
    """A forward pre-hook that keeps a copy of every training-mode input of a module."""

    def __init__(self, module: torch.nn.Module, when_training: bool = True):
        self.inputs: list[torch.Tensor] = []
        self.when_training = when_training
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if module.training or not self.when_training:
            self.inputs.append(args[0].detach().float().clone())


def _job(tmp_path, data, model, **kw) -> TrainJob:
    optim = OptimConfig(model="resnet8", epochs=kw.pop("epochs", 2), batch_size=16, lr=0.05, max_steps=kw.pop("max_steps", 4))
    return TrainJob(role="student", model_name="resnet8", model=model, optim=optim, train=data.train, val=None,
                    test=data.test, out_dir=tmp_path, fingerprint="f", seed=kw.pop("seed", 3), device=torch.device("cpu"),
                    precision="fp32", channels_last=False, progress=False, **kw)


def _maps(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_configurations_with_one_seed_see_the_same_crops_over_several_batches(tmp_path):
    """IG and non-IG runs of one seed: every non-overlaid image is identical in every batch of every epoch, and the
    overlaid ones are exactly 0.5 * (the same crop) + 0.5 * map: the overlay never shifts later crops."""
    from toolkit.models import build_model

    data = prepare_data(_cfg())
    recorded = {}
    for name, overlay in (("plain", None), ("ig", OverlayConfig(prob=0.5))):
        torch.manual_seed(0)
        model = build_model("resnet8")
        rec = InputRecorder(model)
        train_model(_job(tmp_path / name, data, model, ig_maps=_maps(len(data.train)) if overlay else None,
                         overlay=overlay))
        recorded[name] = rec.inputs
    assert len(recorded["plain"]) == len(recorded["ig"]) == 8  # 2 epochs x 4 steps
    overlaid_rows = 0
    for plain, ig in zip(recorded["plain"], recorded["ig"]):
        same = (plain == ig).flatten(1).all(1)
        overlaid_rows += int((~same).sum())
        changed = ~same
        # an overlaid row is a blend of the same crop: x_ig - 0.5 * x_plain lies in [0, 0.5]
        blend_part = ig[changed] - 0.5 * plain[changed]
        assert blend_part.min() >= -1e-6 and blend_part.max() <= 0.5 + 1e-6
    # p = 0.5 over 8 x 16 rows: the overlaid count is Binomial(128, 0.5); 40..88 holds with probability > 1 - 1e-5
    assert 40 <= overlaid_rows <= 88


def test_dropout_draws_from_its_own_seeded_stream(tmp_path):
    """Dropout masks depend on (seed, epoch) only: global RNG use before training changes nothing, and training
    leaves the global generator as it found it."""
    data = prepare_data(_cfg())

    def model_with_dropout():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(8 * 8 * 8, 10))

    weights = []
    for i, global_seed in enumerate((1, 2)):
        model = model_with_dropout()
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        train_model(_job(tmp_path / str(i), data, model, epochs=1, max_steps=3))
        assert torch.equal(torch.random.get_rng_state(), before)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    # and the dropout seed matters: another run seed gives other masks, so other weights
    other = model_with_dropout()
    train_model(_job(tmp_path / "other", data, other, epochs=1, max_steps=3, seed=4))
    assert not torch.equal(other[3].weight, weights[0][2])


def test_teacher_sees_the_students_actual_cropped_flipped_overlaid_batch(tmp_path):
    """Online KD (METHOD.md defect 3): in every step the teacher's input is the student's input, which is the
    cropped, flipped and overlaid batch of epoch_batches, not the stored image."""
    from toolkit.models import build_model

    data = prepare_data(_cfg())
    teacher, student = build_model("resnet8").eval(), build_model("resnet8")
    maps = _maps(len(data.train))
    overlay = OverlayConfig(prob=1.0)
    t_rec, s_rec = InputRecorder(teacher, when_training=False), InputRecorder(student)
    train_model(_job(tmp_path, data, student, teacher=teacher, use_kd=True, loss=LossConfig(alpha=0.5),
                     ig_maps=maps, overlay=overlay, epochs=1, max_steps=3))
    expected = list(epoch_batches(data.train, 16, 3, 0, 4, maps, overlay, None, 3))
    t_inputs = t_rec.inputs[:3]  # after training the test set is evaluated with the student only
    assert len(s_rec.inputs) == 3 and len(t_inputs) == 3
    for t_x, s_x, batch in zip(t_inputs, s_rec.inputs, expected):
        assert torch.equal(t_x, s_x) and torch.equal(s_x, batch.x)
        assert batch.overlaid.all()
        assert not torch.equal(s_x, to_float(data.train.images[batch.index]))


def test_cached_teacher_logits_mode_uses_the_cache_and_says_it_is_an_approximation(tmp_path):
    from toolkit.distill.distiller import Distiller
    from toolkit.distill.losses import kd_loss
    from toolkit.models import build_model
    from toolkit.pipeline import CACHED_LOGITS_NOTE, run_distill

    teacher, student = build_model("resnet8").eval(), build_model("resnet8")
    calls = InputRecorder(teacher, when_training=False)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cached = torch.randn(4, 10)
    with Distiller(student, teacher, LossConfig(alpha=0.3, temperature=2.0), use_kd=True, use_at=False) as d:
        logits, parts = d.forward_train(x, y, cached)
    assert calls.inputs == []  # the teacher is not run when its logits are given
    assert parts["kd"].item() == pytest.approx(0.3 * kd_loss(logits, cached, 2.0).item())
    cfg = _cfg("teacher_outputs=cached", "configuration=KD", "student.epochs=1", "teacher.epochs=1",
               "teacher.mode=scratch", "teacher.checkpoint=null", "teacher.model=resnet8", "baseline=false")
    summary = run_distill(cfg, "cached", runs_dir=tmp_path)
    assert summary["teacher_outputs"] == CACHED_LOGITS_NOTE and "approximation" in CACHED_LOGITS_NOTE
    assert json.loads((tmp_path / "cached" / "summary.json").read_text())["teacher_outputs"] == CACHED_LOGITS_NOTE


def _our_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_attention_transfer_hooks_are_removed_when_training_ends(tmp_path):
    from toolkit.models import build_model

    cfg = _cfg("student.epochs=1", "configuration=KD_AT", "student.max_steps=2")
    data = prepare_data(cfg)
    teacher = build_model("resnet8").eval()
    for run in range(3):  # a study reuses one teacher for many runs: hooks must not pile up
        result = train_student(cfg, data, teacher, None, tmp_path / str(run), configuration="KD_AT")
        assert result["finished"] and _our_hooks(teacher) == 0
    assert set(result["loss_terms"]["weighted"]) == {"ce", "kd", "at"}


def test_loss_terms_are_logged_weighted_and_unweighted(tmp_path):
    from toolkit.models import build_model

    cfg = _cfg("student.epochs=2", "configuration=KD_AT", "student.max_steps=2", "loss.at_form=zagoruyko",
               "loss.alpha=0.25")
    data = prepare_data(cfg)
    result = train_student(cfg, data, build_model("resnet8").eval(), None, tmp_path, configuration="KD_AT")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["loss_weights"] == {"ce": 0.75, "kd": 0.25, "at": 1000.0}
        for k, w in row["loss_weights"].items():
            assert row["losses"][k] == pytest.approx(w * row["losses_unweighted"][k])
        assert sum(row["losses"].values()) == pytest.approx(row["train_loss"], rel=1e-6)
    assert result["loss_terms"]["weighted"] == rows[-1]["losses"] and result["loss_terms"]["epoch"] == 2


def test_a_pickled_payload_in_a_run_folder_is_refused_not_run(tmp_path):
    """Resume loads with weights_only=True: an object that would run code when unpickled is refused."""
    from toolkit.models import build_model

    from pathlib import Path

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    data = prepare_data(_cfg())
    job = _job(tmp_path, data, build_model("resnet8"))
    torch.save({"fingerprint": "f", "epoch": 1, "model": {}, "evil": Payload()}, tmp_path / "student.ckpt")
    with pytest.raises(ToolkitError, match="not a plain-data training checkpoint"):
        train_model(job)
    assert not marker.exists()
    # a truncated or garbage checkpoint gets the same one-line refusal, not a traceback
    (tmp_path / "student.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ToolkitError, match="not a plain-data training checkpoint"):
        train_model(_job(tmp_path, data, build_model("resnet8")))
    # a genuine checkpoint of the same job still resumes
    (tmp_path / "student.ckpt").unlink()
    train_model(_job(tmp_path, data, build_model("resnet8")), max_epochs_this_call=1)
    assert (tmp_path / "student.ckpt").is_file()
    resumed = train_model(_job(tmp_path, data, build_model("resnet8")))
    assert resumed["finished"] and len(resumed["history"]) == 2


def test_attention_transfer_on_a_layer_the_model_lacks_is_one_clear_error(tmp_path):
    from toolkit.models import build_model

    cfg = _cfg("student.epochs=1", "configuration=KD_AT", "loss.at_layers=[layer9]")
    with pytest.raises(ToolkitError, match=r"loss.at_layers: student resnet8 has no module named 'layer9' \(its top-level"):
        train_student(cfg, prepare_data(cfg), build_model("resnet8").eval(), None, tmp_path, configuration="KD_AT")
    assert not (tmp_path / "student.ckpt").exists()
