"""The studies: runner (skip on rerun, resume after interruption, shards, merge), scales, CLI errors, and the four
commands end to end at smoke scale on real CIFAR-10 (JPEG copy) with the pretrained ResNet-20 teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit import ToolkitError
from toolkit.cli import main
from toolkit.experiments import ablation, montecarlo, sweep
from toolkit.experiments.common import base_config
from toolkit.experiments.runner import (RunSpec, Runner, load_results, merge_folders, parse_shard, read_study,
                                        select_shard)
from toolkit.experiments.scales import STUDIES, list_scales, load_scale, parse_seeds
from toolkit.io import atomic_write_json

from conftest import requires_shared_checkpoints, requires_shared_data


# ---------------------------------------------------------------- runner (cheap fake run function, as briefed)
class CountingRun:
    """Writes a final file in the run folder, then returns a result; can fail on a chosen key once."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, spec: RunSpec, run_dir: Path) -> dict:
        self.calls.append(spec.key)
        if spec.key == self.fail_on:
            self.fail_on = None
            raise KeyboardInterrupt("simulated interruption")
        (run_dir / "student.pt").write_text(spec.key)
        return {"test_acc": 50.0 + spec.params["seed"], "teacher_sha256": "t0"}


def _specs(n: int = 6) -> list[RunSpec]:
    return [RunSpec(f"C{c}-s{s}", {"configuration": f"C{c}", "seed": s}) for s in range(n // 2) for c in range(2)]


def _study(folder: Path, study: str = "ablation", scale: str = "smoke", fingerprint: str = "fp0",
           settings: dict | None = None) -> None:
    atomic_write_json(folder / "study.json", {"study": study, "scale": scale, "invocations": [],
                                              "settings_fingerprint": fingerprint,
                                              "run_settings": settings or {"student.epochs": 8}})


def test_runner_records_and_skips_on_rerun(tmp_path):
    runner, fn = Runner(tmp_path, "fp0"), CountingRun()
    specs = _specs()
    assert len(runner.run(specs, fn)) == 6 and fn.calls == [s.key for s in specs]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == fn.calls and rows[0]["spec"] == {"configuration": "C0", "seed": 0}
    again = CountingRun()
    assert runner.run(specs, again) == [] and again.calls == []


def test_runner_resumes_after_interruption(tmp_path):
    runner, specs = Runner(tmp_path, "fp0"), _specs()
    fn = CountingRun(fail_on=specs[2].key)
    with pytest.raises(KeyboardInterrupt):
        runner.run(specs, fn)
    assert list(load_results(tmp_path)) == [s.key for s in specs[:2]]  # nothing recorded for the interrupted run
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"key": "torn')  # a torn last line (killed mid-write) is ignored
    rest = CountingRun()
    runner.run(specs, rest)
    assert rest.calls == [s.key for s in specs[2:]]
    assert set(load_results(tmp_path)) == {s.key for s in specs}


def test_runner_rejects_reserved_result_keys(tmp_path):
    with pytest.raises(ToolkitError, match="must not return"):
        Runner(tmp_path, "fp0").run(_specs(2), lambda spec, d: {"settings_fingerprint": "x"})
    with pytest.raises(ToolkitError, match="must not return"):
        Runner(tmp_path, "fp0").run(_specs(2), lambda spec, d: {"key": "x"})


def test_results_of_other_settings_are_refused_naming_the_change_or_rerun(tmp_path):
    specs = _specs(4)
    _study(tmp_path, settings={"student.epochs": 8, "loss.alpha": 0.5})
    Runner(tmp_path, "fp0").run(specs, CountingRun())
    assert all(r["settings_fingerprint"] == "fp0" for r in load_results(tmp_path, None).values())
    changed = Runner(tmp_path, "fp1", {"student.epochs": 20, "loss.alpha": 0.5})
    with pytest.raises(ToolkitError, match=r"4 recorded run\(s\) were made with other settings \(student.epochs 8 -> 20\)"):
        changed.pending(specs)
    fn = CountingRun()
    with pytest.raises(ToolkitError, match="--rerun-stale"):
        changed.run(specs, fn)
    assert fn.calls == []  # nothing trained, nothing reported under the new settings
    rerun = Runner(tmp_path, "fp1", {"student.epochs": 20}, rerun_stale=True)
    (tmp_path / "runs" / specs[0].key / "student.ckpt").write_text("old")
    rerun.run(specs, fn)
    assert fn.calls == [s.key for s in specs]
    assert set(load_results(tmp_path, "fp1")) == {s.key for s in specs} and len(load_results(tmp_path, "fp0")) == 4
    # the old run folders were moved aside, not deleted
    assert (tmp_path / "stale" / "fp0" / specs[0].key / "student.ckpt").read_text() == "old"
    assert Runner(tmp_path, "fp1").pending(specs) == []


def test_merge_refuses_folders_of_other_settings(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _study(a, settings={"student.epochs": 8})
    _study(b, fingerprint="fp1", settings={"student.epochs": 20})
    Runner(a, "fp0").run(_specs(2), CountingRun())
    Runner(b, "fp1").run(_specs(2), CountingRun())
    with pytest.raises(ToolkitError, match=r"other settings \(student.epochs 8 -> 20\)"):
        merge_folders([a, b], tmp_path / "out")
    # a folder whose study.json matches but which still holds runs recorded under other settings
    _study(c, fingerprint="fp0", settings={"student.epochs": 8})
    Runner(c, "fp9").run(_specs(2), CountingRun())
    with pytest.raises(ToolkitError, match="recorded with other settings"):
        merge_folders([a, c], tmp_path / "out")


def test_shards_partition_the_plan_deterministically():
    specs = _specs(10)
    parts = [select_shard(specs, (i, 3)) for i in range(3)]
    keys = [s.key for p in parts for s in p]
    assert sorted(keys) == sorted(s.key for s in specs) and len(keys) == len(set(keys))
    assert [s.key for s in parts[1]] == [s.key for s in select_shard(_specs(10), (1, 3))]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(ToolkitError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ToolkitError, match="unique"):
        select_shard([RunSpec("a"), RunSpec("a")], None)


def test_shards_in_two_folders_merge_into_one(tmp_path):
    specs = _specs(8)
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    for folder, i in ((a, 0), (b, 1)):
        _study(folder)
        Runner(folder, "fp0").run(specs, CountingRun(), shard=(i, 2))
    (a / "shared").mkdir()
    (a / "shared" / "teacher.pt").write_text("teacher")
    merge_folders([a, b], out)
    assert set(load_results(out)) == {s.key for s in specs}
    assert all((out / "runs" / s.key / "student.pt").read_text() == s.key for s in specs)
    assert (out / "shared" / "teacher.pt").is_file() and read_study(out)["merged_from"] == [str(a), str(b)]
    # nothing left to run once merged
    assert Runner(out, "fp0").pending(specs) == []


def test_merge_refuses_mixed_studies_and_teachers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _study(a)
    _study(b, study="sweep")
    _study(c)
    Runner(a, "fp0").run(_specs(2), CountingRun())
    Runner(b, "fp0").run(_specs(2), CountingRun())
    with pytest.raises(ToolkitError, match="cannot merge"):
        merge_folders([a, b], tmp_path / "out")

    def other_teacher(spec, run_dir):
        return {"test_acc": 1.0, "teacher_sha256": "t1"}

    Runner(c, "fp0").run([RunSpec("X-s9", {"seed": 9})], other_teacher)
    with pytest.raises(ToolkitError, match="different teachers"):
        merge_folders([a, c], tmp_path / "out")
    with pytest.raises(ToolkitError, match="not a study folder"):
        merge_folders([tmp_path / "missing"], tmp_path / "out")


# ---------------------------------------------------------------- scales and plans
def test_every_scale_loads_for_every_study():
    assert {"smoke", "cpu", "paper"} <= set(list_scales())
    for scale in ("smoke", "cpu", "paper"):
        for study in STUDIES:
            s = load_scale(study, scale)
            assert s.preset in ("smoke", "cpu", "paper")
            if study != "generalize":
                cfg = base_config(s)  # the preset plus the scale's overrides validate
                assert cfg.progress is False and cfg.baseline is False
    paper = load_scale("ablation", "paper")
    assert len(paper.configs) == 8 and paper.seeds == list(range(10))
    mc = load_scale("montecarlo", "paper")
    assert mc.runs == 60 and mc.fraction == 0.8 and mc.configs == ["Student", "KD", "KD_IG", "KD_IG_AT"]
    assert load_scale("sweep", "paper").models[0] == "mobilenetv2_cifar_L3"
    with pytest.raises(ToolkitError, match="unknown scale"):
        load_scale("ablation", "huge")
    with pytest.raises(ToolkitError, match="unknown study"):
        load_scale("nope", "cpu")


def test_plans_pair_runs_by_seed_and_subset():
    s = load_scale("ablation", "paper")
    keys = [r.key for r in ablation.plan(s)]
    assert len(keys) == 80 and keys[:2] == ["Student-s0", "KD-s0"]
    mc = montecarlo.plan(load_scale("montecarlo", "paper"))
    assert len(mc) == 240 and {r.params["subset_seed"] for r in mc if r.params["run"] == 7} == {7}
    sw_settings = load_scale("sweep", "cpu")
    sw = sweep.plan(sw_settings)
    assert len(sw_settings.models) == 4  # the issue asks for at least 4 compression factors at CPU scale
    assert len(sw) == len(sw_settings.models) * len(sw_settings.configs) * len(sw_settings.seeds)
    assert len({r.key for r in sw}) == len(sw)
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds("4,7") == [4, 7] and parse_seeds("2") == [0, 1]
    for bad in (0, "1,1", "x"):
        with pytest.raises(ToolkitError):
            parse_seeds(bad)


def test_cli_errors_are_one_line(capsys):
    assert main(["experiment", "nonsense"]) == 2
    assert "unknown study" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--scale", "giant"]) == 2
    assert "unknown scale" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--scale", "smoke", "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["experiment", "ablation", "--scale", "smoke", "--configs", "KD,XYZ"]) == 2
    assert "unknown configuration" in capsys.readouterr().err


def test_report_only_without_results_fails_cleanly(tmp_path, capsys):
    assert main(["experiment", "ablation", "--scale", "smoke", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "not a study folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the four commands end to end (smoke scale)
def _run(*argv: str) -> None:
    assert main(["experiment", *argv]) == 0


@pytest.fixture(scope="module")
def smoke_ablation(tmp_path_factory):
    """The ablation at smoke scale run as two shards on 'two machines' sharing one prepared teacher, then merged."""
    if not (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10").is_dir():
        pytest.skip("../shared not present")
    root = tmp_path_factory.mktemp("studies")
    a, b, merged = root / "abl-a", root / "abl-b", root / "ablation"
    _run("ablation", "--scale", "smoke", "--out", str(a), "--prepare-only")
    assert (a / "shared" / "teacher.pt").is_file() and not (a / "results.jsonl").exists()
    shutil.copytree(a / "shared", b / "shared")
    _run("ablation", "--scale", "smoke", "--out", str(a), "--shard", "0/2")
    _run("ablation", "--scale", "smoke", "--out", str(b), "--shard", "1/2")
    assert "incomplete: 2 of 4" in (a / "report.md").read_text()
    _run("merge", str(a), str(b), "--out", str(merged))
    return root, merged


@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
@pytest.mark.slow
def test_ablation_end_to_end(smoke_ablation, capsys):
    _, folder = smoke_ablation
    report = (folder / "report.md").read_text()
    for text in ("CIFAR-10 (JPEG q75 copy)", "--scale smoke", "Hardware", "Time taken", "4 of 4 (complete)",
                 "Paired t-tests against Student", "Holm", "d_z", "KD_IG − Student"):
        assert text in report
    result = json.loads((folder / "results.json").read_text())
    analysis = result["analysis"]
    assert analysis["configs"] == ["Student", "KD_IG"] and analysis["summary"]["Student"]["n"] == 2
    (row,) = analysis["vs_student"]
    assert row["seeds"] == [0, 1] and len(result["records"]) == 4
    acc = {r["key"]: r["test_acc"] for r in result["records"]}
    assert row["mean_diff"] == pytest.approx((acc["KD_IG-s0"] - acc["Student-s0"] + acc["KD_IG-s1"] - acc["Student-s1"]) / 2)
    for png in ("ablation_accuracy.png", "ablation_vs_student.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    assert all((folder / "runs" / k / "student.pt").is_file() for k in acc)
    # a rerun trains nothing; --report-only rebuilds the report from results.jsonl
    lines = (folder / "results.jsonl").read_text()
    capsys.readouterr()
    _run("ablation", "--scale", "smoke", "--out", str(folder))
    assert "already recorded" in capsys.readouterr().out and (folder / "results.jsonl").read_text() == lines
    (folder / "report.md").unlink()
    _run("ablation", "--scale", "smoke", "--out", str(folder), "--report-only")
    assert "4 of 4 (complete)" in (folder / "report.md").read_text()
    # the same folder with other settings: refused in one line naming the change, nothing touched
    study_before = (folder / "study.json").read_text()
    assert main(["experiment", "ablation", "--scale", "smoke", "--out", str(folder), "student.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "student.epochs 1 -> 3" in err and "--rerun-stale" in err
    assert (folder / "study.json").read_text() == study_before and (folder / "results.jsonl").read_text() == lines


@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
@pytest.mark.slow
def test_montecarlo_end_to_end(smoke_ablation):
    root, ablation_folder = smoke_ablation
    folder = root / "montecarlo"
    shutil.copytree(ablation_folder / "shared", folder / "shared")  # same teacher and IG maps, reused
    _run("montecarlo", "--scale", "smoke", "--out", str(folder))
    result = json.loads((folder / "results.json").read_text())["analysis"]
    assert result["train_images"] == [240]  # 80% of the 300-image smoke train split, stratified
    from scipy import stats as sps

    kd_ig, student = list(result["per_run"]["KD_IG"].values()), list(result["per_run"]["Student"].values())
    assert result["summary"]["KD_IG"]["n"] == 3
    assert result["summary"]["KD_IG"]["normality"]["shapiro_p"] == pytest.approx(sps.shapiro(kd_ig).pvalue)
    (pair,) = result["pairs"]
    assert pair["welch_p"] == pytest.approx(sps.ttest_ind(student, kd_ig, equal_var=False).pvalue, nan_ok=True)
    assert pair["student_p"] == pytest.approx(sps.ttest_ind(student, kd_ig, equal_var=True).pvalue, nan_ok=True)
    report = (folder / "report.md").read_text()
    assert "Lilliefors" in report and "Welch" in report and "equal-var" in report
    assert (folder / "montecarlo_histograms.png").is_file()


@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
@pytest.mark.slow
def test_sweep_end_to_end(smoke_ablation):
    root, ablation_folder = smoke_ablation
    folder = root / "sweep"
    shutil.copytree(ablation_folder / "shared", folder / "shared")
    _run("sweep", "--scale", "smoke", "--out", str(folder))
    rows = json.loads((folder / "results.json").read_text())["analysis"]["rows"]
    assert [r["model"] for r in rows] == ["resnet8", "resnet14"]
    assert rows[0]["compression_factor"] > rows[1]["compression_factor"] > 1
    assert all("batch 1, 1 thread" in r["latency"]["method"] for r in rows)
    # ResNet-14 has more than 2x the MFLOPs of ResNet-8: its batch-1 latency is higher in the same run
    assert rows[1]["latency"]["median_ms"] > rows[0]["latency"]["median_ms"]
    assert all(r["accuracy"]["KD_IG"]["n"] == 1 for r in rows)
    assert (folder / "sweep_accuracy_vs_cf.png").is_file() and (folder / "sweep_accuracy_vs_latency.png").is_file()
    assert json.loads((folder / "latency.json").read_text()).keys() == {"resnet8", "resnet14"}


@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
@pytest.mark.slow
def test_generalize_end_to_end(smoke_ablation, pretrained_run, tmp_path):
    from toolkit.data import load_imagenet_aligned
    from toolkit.evaluate import predict_logits
    from toolkit.models import load_model

    _, ablation_folder = smoke_ablation
    out = tmp_path / "gen"
    _run("generalize", "--scale", "smoke", "--run", str(pretrained_run), "--study", str(ablation_folder), "--out", str(out))
    result = json.loads((out / "results.json").read_text())
    assert result["classes_present"] == [1, 2, 3, 4, 5, 6, 8, 9] and result["images"] == 1450
    models = result["models"]
    assert len(models) == 1 + 4 and models[0]["label"] == "student" and models[0]["model"] == "resnet8"
    # recompute the fixture teacher's teacher-correct subset and the student's scores independently
    data = load_imagenet_aligned("val")
    y = data.labels.numpy()
    t = predict_logits(load_model("resnet20", pretrained_run / "teacher.pt"), data.images).argmax(1).numpy()
    s = predict_logits(load_model("resnet8", pretrained_run / "student.pt"), data.images).argmax(1).numpy()
    assert result["teachers"][0]["all"]["accuracy"] == pytest.approx(100 * (t == y).mean())
    keep = t == y
    tc = models[0]["teacher_correct"]
    assert tc["n"] == int(keep.sum())
    yk, sk = y[keep], s[keep]
    recalls = [(sk[yk == c] == c).mean() for c in (1, 2, 3, 4, 5, 6, 8, 9) if (yk == c).any()]
    assert tc["balanced_accuracy"] == pytest.approx(100 * sum(recalls) / len(recalls))
    observed = (yk == sk).mean()
    chance = sum((yk == c).mean() * (sk == c).mean() for c in range(10))
    assert tc["kappa"] == pytest.approx((observed - chance) / (1 - chance))
    report = (out / "report.md").read_text()
    assert "balanced" in report.lower() and "kappa" in report and "Teacher-correct" in report
    assert (out / "generalize.png").is_file()


def test_generalize_bad_input(tmp_path, capsys):
    assert main(["experiment", "generalize", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "g")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["experiment", "generalize", "--study", str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    assert "not a study folder" in capsys.readouterr().err


@pytest.mark.parametrize("study", ["ablation", "montecarlo", "sweep"])
def test_committed_studies_keep_their_settings_fingerprint(study):
    """Settings added since a study was recorded (image folders, QAT, ig.steps=auto, ...) leave its fingerprint
    alone while unused (toolkit.config.ADDED_SETTINGS): the committed cpu studies are still recognised as current."""
    from toolkit.experiments.common import run_settings, settings_fingerprint

    path = Path(__file__).resolve().parents[1] / "reports" / f"{study}-cpu" / "study.json"
    if not path.is_file():
        pytest.skip(f"{path} not committed")
    recorded = json.loads(path.read_text())
    flat = run_settings(load_scale(study, "cpu"))
    assert sorted(set(flat) ^ set(recorded["run_settings"])) == []
    assert settings_fingerprint(flat) == recorded["settings_fingerprint"]
