"""Statistics of the studies against hand-computed values and the scipy/statsmodels functions they wrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from toolkit import ToolkitError
from toolkit.experiments import stats


def test_describe_hand_values():
    d = stats.describe([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4 and d["mean"] == pytest.approx(2.5)
    assert d["std"] == pytest.approx(math.sqrt(5 / 3))
    half = sps.t.ppf(0.975, 3) * math.sqrt(5 / 3) / 2
    assert d["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
    one = stats.describe([7.0])
    assert one["mean"] == 7.0 and one["std"] is None and one["ci95"] == [None, None]
    assert stats.describe([])["n"] == 0


def test_paired_test_hand_example():
    # d = [1, 2, 2, 3]: mean 2, sd sqrt(2/3), t = 2 / (sd / 2) = 4.899, d_z = 2 / sd = 2.449
    r = stats.paired_test([1, 2, 3, 4], [0, 0, 1, 1])
    sd = math.sqrt(2 / 3)
    assert r["n"] == 4 and r["mean_diff"] == pytest.approx(2.0) and r["std_diff"] == pytest.approx(sd)
    assert r["t"] == pytest.approx(2 / (sd / 2)) and r["t"] == pytest.approx(4.898979485566356)
    assert r["t"] == pytest.approx(sps.ttest_rel([1, 2, 3, 4], [0, 0, 1, 1]).statistic)
    assert r["dz"] == pytest.approx(2 / sd) and r["dz"] == pytest.approx(2.449489742783178)  # d_z = mean(d) / sd(d)
    assert r["p"] == pytest.approx(sps.ttest_rel([1, 2, 3, 4], [0, 0, 1, 1]).pvalue)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3}
    assert r["ci"] == pytest.approx([2 - half, 2 + half])


def test_paired_test_edge_cases():
    with pytest.raises(ToolkitError, match="equal lengths"):
        stats.paired_test([1, 2], [1])
    r = stats.paired_test([1.0], [0.5])
    assert r["mean_diff"] == 0.5 and r["p"] is None and r["dz"] is None
    same = stats.paired_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # constant difference: no spread
    assert same["dz"] is None and same["ci"] == [1.0, 1.0]


def test_two_sample_test_matches_scipy_and_hand_formulas():
    rng = np.random.default_rng(0)
    a, b = rng.normal(91.5, 0.3, 12), rng.normal(91.0, 0.6, 9)
    r = stats.two_sample_test(a, b)
    welch, student = sps.ttest_ind(a, b, equal_var=False), sps.ttest_ind(a, b, equal_var=True)
    assert r["welch_p"] == pytest.approx(welch.pvalue) and r["student_p"] == pytest.approx(student.pvalue)
    assert r["welch_t"] == pytest.approx(welch.statistic) and r["student_t"] == pytest.approx(student.statistic)
    va, vb = a.var(ddof=1) / 12, b.var(ddof=1) / 9
    df = (va + vb) ** 2 / (va**2 / 11 + vb**2 / 8)
    assert r["welch_df"] == pytest.approx(df)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert r["ci"] == pytest.approx([a.mean() - b.mean() - half, a.mean() - b.mean() + half])
    pooled = math.sqrt((11 * a.var(ddof=1) + 8 * b.var(ddof=1)) / 19)
    assert r["cohen_d"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert stats.two_sample_test([1.0], [2.0, 3.0])["welch_p"] is None


def test_holm_hand_example_and_none_passthrough():
    # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.02, None, 0.04])
    assert out[1] is None and out[0] == pytest.approx(0.04) and out[2] == pytest.approx(0.04)
    assert stats.holm([]) == []
    # five tests, hand-worked: sorted p * (5, 4, 3, 2, 1) = 0.025, 0.04, 0.06, 0.06, 0.04 -> running max
    # 0.025, 0.04, 0.06, 0.06, 0.06, back in the given order
    assert stats.holm([0.010, 0.020, 0.030, 0.040, 0.005]) == pytest.approx([0.04, 0.06, 0.06, 0.06, 0.025])
    # adjusted values are capped at 1: 2 * 0.6 = 1.2 -> 1, and the larger p keeps the running max
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])


def test_normality_matches_libraries():
    from statsmodels.stats.diagnostic import lilliefors

    x = np.random.default_rng(1).normal(size=30)
    r = stats.normality(x)
    d, p = lilliefors(x, dist="norm", pvalmethod="table")
    assert r["lilliefors_D"] == pytest.approx(d) and r["lilliefors_p"] == pytest.approx(p)
    assert r["shapiro_p"] == pytest.approx(sps.shapiro(x).pvalue)
    skewed = stats.normality(np.exp(np.random.default_rng(2).normal(0, 1.5, 60)))
    assert skewed["shapiro_p"] < 0.01 and skewed["lilliefors_p"] < 0.01
    small = stats.normality([1.0, 2.0])
    assert small["lilliefors_p"] is None and small["shapiro_p"] is None


def test_confusion_balanced_accuracy_and_kappa_hand_example():
    from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 2, 0]
    cm = stats.confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert stats.balanced_accuracy(y, p, [0, 1, 2]) == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    # p_o = 4/6, p_e = (2*2 + 2*3 + 2*1) / 36 = 1/3 -> kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert stats.cohens_kappa(y, p, 3) == pytest.approx(0.5)
    assert stats.cohens_kappa(y, p, 3) == pytest.approx(sm_kappa(cm).kappa)
    # a class absent from the labels (here 3) still counts in the table: predicting it is a disagreement.
    # p_o = 4/6; label counts (2, 2, 2, 0), prediction counts (2, 2, 1, 1): p_e = (4 + 4 + 2 + 0) / 36 = 10/36
    # -> kappa = (24/36 - 10/36) / (26/36) = 7/13
    assert stats.cohens_kappa(y, [0, 3, 1, 1, 2, 0], 4) == pytest.approx(7 / 13)
    table = np.zeros((4, 4))
    np.add.at(table, (y, [0, 3, 1, 1, 2, 0]), 1)  # the table built here, not by the function under test
    assert stats.cohens_kappa(y, [0, 3, 1, 1, 2, 0], 4) == pytest.approx(sm_kappa(table).kappa)
    with pytest.raises(ToolkitError):
        stats.confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ToolkitError):
        stats.balanced_accuracy([0, 1], [0, 1], [7])
