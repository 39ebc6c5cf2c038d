"""What the end of ``make distill`` says: the summary's student-vs-teacher comparison and the printed table."""

from __future__ import annotations


SMOKE_NOTE = "smoke preset: figures are not meaningful, the run only proves the chain works"
"""Said wherever a smoke run's figures are shown (the table below, summary.json, the bench report)."""
LOSS_NOTE = ("training losses are not comparable across configurations: the KD term is multiplied by T^2 "
             "(T = {T:g}: x{T2:g}), so a distilled student's total loss (often 5-15) sits far above an undistilled "
             "one's cross-entropy (about 0.5-2.5) while it learns as well; compare accuracies instead")


def compare_roles(summary: dict) -> dict:
    """What the figures mean: the student against its teacher and against its undistilled baseline (test top-1).

    Returns ``{"meaningful", "student_minus_teacher_points", "student_minus_baseline_points", "notes", "warnings"}``
    (written to summary.json as ``comparison`` and printed under the table)."""
    teacher, student, baseline = summary.get("teacher"), summary.get("student"), summary.get("baseline")
    smoke = summary.get("preset") == "smoke"
    out: dict = {"meaningful": not smoke, "student_minus_teacher_points": None, "student_minus_baseline_points": None,
                 "notes": [SMOKE_NOTE] if smoke else [], "warnings": []}
    if not (teacher and student):
        return out
    gap = student["test_acc"] - teacher["test_acc"]
    out["student_minus_teacher_points"] = round(gap, 2)
    cf = teacher["params"] / student["params"] if student.get("params") else None
    out["notes"].append(f"student vs teacher: {gap:+.2f} points of test top-1 ({student['test_acc']:.2f}% vs "
                        f"{teacher['test_acc']:.2f}%)" + (f" at {cf:.2f}x fewer parameters" if cf else ""))
    if baseline:
        gain = student["test_acc"] - baseline["test_acc"]
        out["student_minus_baseline_points"] = round(gain, 2)
        out["notes"].append(f"distillation gain over the baseline student (same split, seed and init): {gain:+.2f} points")
        if gain < 0:
            out["warnings"].append(
                f"WARNING: the distilled student is {-gain:.2f} points BELOW its undistilled baseline "
                f"({student['test_acc']:.2f}% vs {baseline['test_acc']:.2f}%): distillation did not help in this run"
                + (" (expected noise at smoke scale)" if smoke else "; one seed, so check the ablation's spread "
                   "before concluding, and try more epochs or another loss.alpha / loss.temperature"))
    return out


def print_table(summary: dict) -> None:
    rows = [("teacher", summary["teacher"])] + [(r, summary[r]) for r in ("student", "baseline") if r in summary]
    print(f"\nrun {summary['run']}  preset {summary['preset']}  configuration {summary['configuration']}  ({summary['data']})")
    comparison = summary.get("comparison") or compare_roles(summary)
    if not comparison["meaningful"]:
        print(f"** {SMOKE_NOTE} **")
    width = max(22, *(len(r["name"]) for _, r in rows))
    print(f"{'role':<10} {'model':<{width}} {'params':>11} {'CF vs teacher':>13} {'val %':>7} {'test %':>7}")
    for role, r in rows:
        cf = summary["teacher"]["params"] / r["params"]
        val = f"{r['val_acc']:.2f}" if r.get("val_acc") is not None else "-"
        print(f"{role:<10} {r['name']:<{width}} {r['params']:>11,} {cf:>12.2f}x {val:>7} {r['test_acc']:>7.2f}")
    print("(CF: compression factor, the teacher's parameter count over the model's; val: the held-out validation "
          "split; test: top-1 on the test set after the last epoch)")
    for line in comparison["notes"]:
        if line != SMOKE_NOTE:
            print(line)
    for line in comparison["warnings"]:
        print(line)
    if summary.get("loss_note"):
        print(f"note: {summary['loss_note']}")
    timing = summary.get("timing")
    if timing:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in timing["stage_seconds"].items())
        load = timing.get("load_average_start"), timing.get("load_average_end")
        print(f"wall time: {summary['seconds'] / 60:.1f} min ({stages}; minutes) on {timing['cpu']}, "
              f"{timing['torch_threads']} threads x {timing['world_size']} process(es); load average (1 min) "
              f"{load[0][0] if load[0] else '?'} at start, {load[1][0] if load[1] else '?'} at end")
    print(f"written: {summary['run_dir']}/summary.json")
