"""Accuracy-latency Pareto view of bench-edge: which artifact to ship for a latency budget.

Pure functions (no I/O): :func:`pareto_frontier` marks the points no other point beats on both axes; :func:`pareto`
builds the report's block from the latency rows and accuracies (batch-1, fewest-threads p50 against test top-1);
:func:`budget_lines` says, per frontier point, from which latency budget it is the artifact to ship.
"""

from __future__ import annotations

from typing import Any


def dominates(a: dict, b: dict) -> bool:
    """``a`` is at least as fast and as accurate as ``b``, and strictly better on one of the two."""
    return (a["latency_ms"] <= b["latency_ms"] and a["top1"] >= b["top1"]
            and (a["latency_ms"] < b["latency_ms"] or a["top1"] > b["top1"]))


def pareto_frontier(points: list[dict]) -> list[str]:
    """Keys of the points (``{"key", "latency_ms", "top1"}``) that no other point dominates, fastest first (ties by
    higher top-1, then key). Exact ties (same latency and top-1) are all on the frontier."""
    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p["key"] for p in sorted(front, key=lambda p: (p["latency_ms"], -p["top1"], p["key"]))]


def budget_lines(points: list[dict], frontier: list[str]) -> list[dict]:
    """Per frontier point (exact ties merged): from ``budget_ms`` on, ship ``ship`` (the most accurate artifact
    within the budget; the faster ones before it in the list are less accurate)."""
    by_key = {p["key"]: p for p in points}
    out: list[dict] = []
    for key in frontier:
        p = by_key[key]
        if out and out[-1]["budget_ms"] == p["latency_ms"] and out[-1]["top1"] == p["top1"]:
            out[-1]["ship"].append(key)
            continue
        out.append({"budget_ms": p["latency_ms"], "ship": [key], "top1": p["top1"]})
    return out


def budget_text(line: dict) -> str:
    return (f"budget >= {line['budget_ms']:.3f} ms: ship {' or '.join(line['ship'])} ({line['top1']:.2f}% top-1"
            + (", same figures" if len(line["ship"]) > 1 else "") + ")")


def common_accuracy(logits: dict[str, "np.ndarray"], labels: "np.ndarray") -> dict[str, dict]:
    """Top-1 of every model on the same images: the first ``n`` test images, ``n`` the fewest any model was scored on
    (fixed-batch artifacts may be scored on a prefix), so the frontier never compares different image sets.
    ``logits`` (N_k, C) per key, on a prefix of ``labels`` (N,)."""
    if not logits:
        return {}
    n = min(len(v) for v in logits.values())
    return {k: {"top1": float((v[:n].argmax(1) == labels[:n]).mean() * 100), "n": int(n)} for k, v in logits.items()}


def pareto(latency: list[dict], accuracy: dict[str, dict], labels: dict[str, dict] | None = None) -> dict[str, Any]:
    """The report's ``pareto`` block: one point per model row that has batch-1 latency at the fewest threads
    measured and a test top-1 (``accuracy[key]["top1"]``, on ``accuracy[key]["n"]`` images)."""
    labels = labels or {}
    ones = [r for r in latency if r["batch"] == 1]
    if not ones:
        return {"basis": "no batch-1 latency measured", "points": [], "frontier": [], "ship_for_budget": []}
    threads = min(r["threads"] for r in ones)
    points = []
    for r in ones:
        acc = accuracy.get(r["model"])
        if r["threads"] != threads or not acc or acc.get("top1") is None:
            continue
        info = labels.get(r["model"], {})
        points.append({"key": r["model"], "latency_ms": r["p50_ms"], "top1": acc["top1"], "n": acc.get("n"),
                       "runtime": r.get("runtime", info.get("runtime")), "precision": r.get("precision", info.get("precision")),
                       "format": r.get("format", info.get("format"))})
    frontier = pareto_frontier(points)
    for p in points:
        p["on_frontier"] = p["key"] in frontier
    lines = budget_lines(points, frontier)
    return {"basis": f"test top-1 vs p50 latency at batch 1, {threads} thread(s)", "threads": threads,
            "points": sorted(points, key=lambda p: (p["latency_ms"], p["key"])), "frontier": frontier,
            "ship_for_budget": [{**ln, "text": budget_text(ln)} for ln in lines]}
