"""Statistics for the studies: summaries, paired and two-sample t-tests, effect sizes, Holm correction, normality,
and the classification scores of the generalisation check (balanced accuracy, Cohen's kappa).

Every test is the scipy/statsmodels implementation; this module only arranges inputs and outputs. Accuracies are in
percent throughout; a difference ``a - b`` is positive when ``a`` scores higher.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

from toolkit import ToolkitError


def _array(values: Sequence[float], what: str = "values") -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1:
        raise ToolkitError(f"{what} must be a flat list of numbers")
    return x


def _clean(value: float) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def describe(values: Sequence[float]) -> dict:
    """n, mean, std (ddof 1; None for n < 2), min, max, and the 95% t confidence interval of the mean."""
    x = _array(values)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "ci95": [None, None]}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    if n > 1:
        half = float(sps.t.ppf(0.975, n - 1) * std / math.sqrt(n))
        ci = [mean - half, mean + half]
    else:
        ci = [float("nan"), float("nan")]
    return {"n": n, "mean": mean, "std": _clean(std), "min": float(x.min()), "max": float(x.max()),
            "ci95": [_clean(c) for c in ci]}


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired t-test of ``a`` against ``b`` (scipy.stats.ttest_rel), matched by position (same seed).

    Returns n, mean and std of the differences d = a - b, t, two-sided p, Cohen's d_z = mean(d) / std(d) (ddof 1),
    and the ``confidence`` t interval of mean(d). Values that are undefined (n < 2, zero spread) are None.
    """
    x, y = _array(a, "a"), _array(b, "b")
    if len(x) != len(y):
        raise ToolkitError(f"paired test needs equal lengths, got {len(x)} and {len(y)}")
    d = x - y
    n = len(d)
    out = {"n": n, "mean_diff": _clean(d.mean()) if n else None, "std_diff": None, "t": None, "p": None,
           "dz": None, "ci": [None, None]}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    out["std_diff"] = _clean(sd)
    if sd > 1e-12 * max(1.0, abs(float(d.mean()))):
        res = sps.ttest_rel(x, y)
        out["t"], out["p"] = _clean(res.statistic), _clean(res.pvalue)
        out["dz"] = _clean(d.mean() / sd)  # Cohen's d_z
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
        out["ci"] = [_clean(d.mean() - half), _clean(d.mean() + half)]
    else:
        out["ci"] = [_clean(d.mean()), _clean(d.mean())]
    return out


def two_sample_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Two-sample t-tests of ``a`` vs ``b``: Welch (unequal variances) and Student (equal variances, as the paper).

    Also the mean difference a - b with its Welch ``confidence`` interval (Welch-Satterthwaite df) and Cohen's d with
    the pooled standard deviation.
    """
    x, y = _array(a, "a"), _array(b, "b")
    nx, ny = len(x), len(y)
    out = {"n_a": nx, "n_b": ny, "mean_diff": None, "welch_t": None, "welch_p": None, "welch_df": None,
           "student_t": None, "student_p": None, "cohen_d": None, "ci": [None, None]}
    if nx < 2 or ny < 2:
        return out
    diff = float(x.mean() - y.mean())
    out["mean_diff"] = diff
    welch = sps.ttest_ind(x, y, equal_var=False)
    student = sps.ttest_ind(x, y, equal_var=True)
    out.update(welch_t=_clean(welch.statistic), welch_p=_clean(welch.pvalue),
               student_t=_clean(student.statistic), student_p=_clean(student.pvalue))
    vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
    if vx + vy > 0:
        df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
        half = float(sps.t.ppf(0.5 + confidence / 2, df) * math.sqrt(vx + vy))
        out["welch_df"] = _clean(df)
        out["ci"] = [diff - half, diff + half]
    pooled = math.sqrt(((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2))
    if pooled > 0:
        out["cohen_d"] = diff / pooled
    return out


def holm(pvalues: Sequence[float | None], alpha: float = 0.05) -> list[float | None]:
    """Holm-adjusted p values (statsmodels multipletests); None entries stay None and are not counted."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        _, adjusted, _, _ = multipletests([pvalues[i] for i in idx], alpha=alpha, method="holm")
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def normality(values: Sequence[float]) -> dict:
    """Lilliefors (statsmodels, normal with estimated mean/std) and Shapiro-Wilk (scipy) tests; None if n too small."""
    from statsmodels.stats.diagnostic import lilliefors

    x = _array(values)
    out = {"n": len(x), "lilliefors_D": None, "lilliefors_p": None, "shapiro_W": None, "shapiro_p": None}
    if len(x) >= 4 and x.std() > 0:
        d, p = lilliefors(x, dist="norm", pvalmethod="table")
        out["lilliefors_D"], out["lilliefors_p"] = _clean(d), _clean(p)
    if len(x) >= 3 and x.std() > 0:
        res = sps.shapiro(x)
        out["shapiro_W"], out["shapiro_p"] = _clean(res.statistic), _clean(res.pvalue)
    return out


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predicted classes."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ToolkitError(f"labels and predictions differ in shape: {t.shape} vs {p.shape}")
    if len(t) and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ToolkitError(f"class ids must lie in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]) -> float:
    """Mean per-class recall over ``classes`` (those present in ``y_true``), in percent."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    recalls = []
    for c in classes:
        members = t == c
        if members.any():
            recalls.append(float((p[members] == c).mean()))
    if not recalls:
        raise ToolkitError("balanced accuracy: none of the given classes occurs in the labels")
    return 100.0 * float(np.mean(recalls))


def cohens_kappa(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Cohen's kappa of predictions against labels over all ``num_classes`` (a prediction of a class absent from the
    labels counts as disagreement): (p_o - p_e) / (1 - p_e), p_e from the row and column marginals."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(float)
    n = cm.sum()
    if n == 0:
        raise ToolkitError("Cohen's kappa of zero samples")
    po = np.trace(cm) / n
    pe = float((cm.sum(1) * cm.sum(0)).sum() / n**2)
    return float("nan") if pe == 1 else float((po - pe) / (1 - pe))
