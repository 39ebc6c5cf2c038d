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


def _study(folder: Path, study: str = "ablation", scale: str = "smoke") -> None:
    atomic_write_json(folder / "study.json", {"study": study, "scale": scale, "invocations": []})


def test_runner_records_and_skips_on_rerun(tmp_path):
    runner, fn = Runner(tmp_path), CountingRun()
    specs = _specs()
    assert len(runner.run(specs, fn)) == 6 and fn.calls == [s.key for s in specs]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == fn.calls and rows[0]["spec"] == {"configuration": "C0", "seed": 0}
    again = CountingRun()
    assert runner.run(specs, again) == [] and again.calls == []


def test_runner_resumes_after_interruption(tmp_path):
    runner, specs = Runner(tmp_path), _specs()
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
        Runner(tmp_path).run(_specs(2), lambda spec, d: {"key": "x"})


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
        Runner(folder).run(specs, CountingRun(), shard=(i, 2))
    (a / "shared").mkdir()
    (a / "shared" / "teacher.pt").write_text("teacher")
    merge_folders([a, b], out)
    assert set(load_results(out)) == {s.key for s in specs}
    assert all((out / "runs" / s.key / "student.pt").read_text() == s.key for s in specs)
    assert (out / "shared" / "teacher.pt").is_file() and read_study(out)["merged_from"] == [str(a), str(b)]
    # nothing left to run once merged
    assert Runner(out).pending(specs) == []


def test_merge_refuses_mixed_studies_and_teachers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _study(a)
    _study(b, study="sweep")
    _study(c)
    Runner(a).run(_specs(2), CountingRun())
    Runner(b).run(_specs(2), CountingRun())
    with pytest.raises(ToolkitError, match="cannot merge"):
        merge_folders([a, b], tmp_path / "out")

    def other_teacher(spec, run_dir):
        return {"test_acc": 1.0, "teacher_sha256": "t1"}

    Runner(c).run([RunSpec("X-s9", {"seed": 9})], other_teacher)
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
    sw = sweep.plan(load_scale("sweep", "cpu"))
    assert len(sw) == 4 * 4 * 2 and len({r.key for r in sw}) == len(sw)
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
