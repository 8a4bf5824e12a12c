"""Paired model-comparison statistics on hand-computed cases, and bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from skinr1_pipeline.evaluation.paired_tests import (
    binomial_two_sided_p,
    clopper_pearson_interval,
    compare_paired,
    holm_adjust,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)


def _enumerated_binomial_p(k: int, n: int, p: Fraction) -> float:
    """Two-sided exact binomial p-value by brute-force enumeration in exact arithmetic."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return float(min(Fraction(1), sum(q for q in pmf if q <= pmf[k])))


def _binomial_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed term by term (small n only)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _paper_example() -> tuple[list[int], list[int]]:
    """50/96 vs 38/96 correct: 34 both right, 16 only A, 4 only B, 42 both wrong."""
    a = [1] * 34 + [1] * 16 + [0] * 4 + [0] * 42
    b = [1] * 34 + [0] * 16 + [1] * 4 + [0] * 42
    return a, b


# --- single-proportion intervals -------------------------------------------------------------------------------


def test_wilson_known_values():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    assert wilson_interval(5, 10) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    # 99% widens it: z = 2.5758
    lo99, hi99 = wilson_interval(5, 10, alpha=0.01)
    assert lo99 < 0.23659 and hi99 > 0.76341


def test_wilson_empty_is_nan():
    lo, hi = wilson_interval(0, 0)
    assert math.isnan(lo) and math.isnan(hi)


def test_clopper_pearson_closed_forms_and_symmetric_case():
    assert clopper_pearson_interval(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12))
    assert clopper_pearson_interval(0, 10)[1] == pytest.approx(0.3085, abs=1e-4)
    assert clopper_pearson_interval(10, 10) == (pytest.approx(0.025 ** (1 / 10), abs=1e-12), 1.0)
    lo, hi = clopper_pearson_interval(5, 10)
    assert lo == pytest.approx(0.187086, abs=1e-6) and hi == pytest.approx(0.812914, abs=1e-6)
    assert lo == pytest.approx(1 - hi, abs=1e-12)


def test_clopper_pearson_bounds_solve_the_binomial_tails():
    n, k = 20, 7
    lo, hi = clopper_pearson_interval(k, n)
    assert _binomial_tail_ge(k, n, lo) == pytest.approx(0.025, abs=1e-12)  # P(X >= 7 | lo) = alpha/2
    assert 1 - _binomial_tail_ge(k + 1, n, hi) == pytest.approx(0.025, abs=1e-12)  # P(X <= 7 | hi) = alpha/2


def test_clopper_pearson_large_n_is_accurate_and_symmetric():
    n = 100_000
    assert clopper_pearson_interval(0, n)[1] == pytest.approx(-math.expm1(math.log(0.025) / n), rel=1e-12)
    lo, hi = clopper_pearson_interval(n // 2, n)
    assert lo == pytest.approx(1 - hi, abs=1e-12)
    wlo, whi = wilson_interval(n // 2, n)
    assert abs(lo - wlo) < 1e-4 and abs(hi - whi) < 1e-4 and lo < wlo  # exact interval is (slightly) wider
    lo1, hi1 = clopper_pearson_interval(1, n)  # P(X >= 1 | lo) = 1 - (1 - lo)^n = 0.025
    assert -math.expm1(n * math.log1p(-lo1)) == pytest.approx(0.025, rel=1e-9)


def test_exact_intervals_keep_width_where_percentile_bootstrap_collapses():
    # every resample of 10/10 correct is 10/10: the percentile interval is [1, 1]
    boot = paired_bootstrap([1.0] * 10, [0.0] * 10, n_boot=200)
    assert boot["ci_low"] == boot["ci_high"] == 1.0
    assert wilson_interval(10, 10)[0] < 0.75 and clopper_pearson_interval(10, 10)[0] < 0.7


@pytest.mark.parametrize("successes, n", [(11, 10), (-1, 10), (1, -1), (2.5, 10), (float("nan"), 10), (1, 2.5)])
def test_interval_bad_counts_raise(successes, n):
    funcs = (clopper_pearson_interval,) if successes == 2.5 else (wilson_interval, clopper_pearson_interval)
    for func in funcs:
        with pytest.raises(ValueError, match="successes|n must"):
            func(successes, n)


def test_wilson_takes_expected_counts():
    """A guesser that splits a tie between two options scores half a hit: the interval is defined for 2.5 of 10 and
    lies between those of 2 and 3."""
    lo, hi = wilson_interval(2.5, 10)
    assert wilson_interval(2, 10)[0] < lo < wilson_interval(3, 10)[0]
    assert wilson_interval(2, 10)[1] < hi < wilson_interval(3, 10)[1]
    assert wilson_interval(2.0, 10) == wilson_interval(2, 10)


def test_successes_above_n_names_the_problem():
    with pytest.raises(ValueError, match="successes must be between 0 and n = 10, got 11"):
        wilson_interval(11, 10)


# --- exact binomial / McNemar ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, n, p",
    [
        (3, 10, Fraction(1, 2)),
        (0, 5, Fraction(1, 2)),
        (5, 10, Fraction(1, 2)),
        (2, 10, Fraction(3, 10)),
        (7, 12, Fraction(1, 5)),
        (9, 9, Fraction(1, 3)),
    ],
)
def test_binomial_p_matches_enumeration(k, n, p):
    assert binomial_two_sided_p(k, n, float(p)) == pytest.approx(_enumerated_binomial_p(k, n, p), rel=1e-10)


def test_binomial_p_small_hand_values():
    assert binomial_two_sided_p(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided_p(5, 10) == 1.0
    assert binomial_two_sided_p(0, 0) == 1.0
    assert binomial_two_sided_p(4, 20) == pytest.approx(2 * 6196 / 2**20, rel=1e-12)  # 2 * P(X <= 4)


def test_mcnemar_paper_example_differs_although_intervals_overlap():
    a, b = _paper_example()
    result = mcnemar_exact(a, b)
    assert result["n"] == 96 and result["a_only"] == 16 and result["b_only"] == 4
    assert result["a_accuracy"] == pytest.approx(50 / 96) and result["b_accuracy"] == pytest.approx(38 / 96)
    assert result["difference"] == pytest.approx(12 / 96)
    assert result["p_value"] == pytest.approx(0.011818, abs=1e-6)
    assert wilson_interval(50, 96)[0] < wilson_interval(38, 96)[1]  # the independent intervals overlap


def test_mcnemar_identical_vectors():
    result = mcnemar_exact([True, False, True], [True, False, True])
    assert result["p_value"] == 1.0 and result["difference"] == 0.0 and result["a_only"] == result["b_only"] == 0


def test_mcnemar_bad_input():
    with pytest.raises(ValueError, match="a has 3 items, b has 2"):
        mcnemar_exact([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="b_correct must contain only 0/1.*found 2"):
        mcnemar_exact([1, 0, 1], [1, 2, 0])


# --- paired bootstrap ------------------------------------------------------------------------------------------


def test_bootstrap_constant_difference_is_degenerate():
    a = [1.0, 0.5, 1.0, 0.75, 0.5, 1.0]
    b = [x - 0.25 for x in a]
    result = paired_bootstrap(a, b, clusters=["p1", "p1", "p2", "p3", "p3", "p3"], n_boot=500)
    assert result["difference"] == result["ci_low"] == result["ci_high"] == 0.25
    assert result["n"] == 6 and result["n_clusters"] == 3 and result["p_value"] == 0.0


def test_bootstrap_identical_vectors():
    result = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1], n_boot=300)
    assert result["difference"] == result["ci_low"] == result["ci_high"] == 0.0 and result["p_value"] == 1.0


def test_cluster_replicate_is_ratio_of_sums():
    # cluster X: 1 item, d = 1; cluster Y: 3 items, d = 0. Replicates: XX -> 1, XY -> 1/4, YY -> 0 (probabilities
    # 1/4, 1/2, 1/4); a mean of cluster means would give 1/2 for XY instead. The 30%..70% band sits inside 1/4.
    result = paired_bootstrap([1, 0, 0, 0], [0, 0, 0, 0], clusters=["x", "y", "y", "y"], n_boot=4000, alpha=0.6)
    assert result["ci_low"] == result["ci_high"] == 0.25 and result["difference"] == 0.25
    wide = paired_bootstrap([1, 0, 0, 0], [0, 0, 0, 0], clusters=["x", "y", "y", "y"], n_boot=4000)
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == 1.0
    assert 0.4 < wide["p_value"] < 0.6  # 2 * P(replicate <= 0) = 2 * 1/4


def test_clustered_interval_wider_when_items_within_cluster_are_perfectly_correlated():
    pattern = [1, 0, 0, 1, -1, 0, 1, 0, 1, 0]  # per-cluster difference, shared by its 10 items
    d = np.repeat(pattern, 10).astype(float)
    a, b = np.where(d > 0, 1.0, 0.0), np.where(d < 0, 1.0, 0.0)
    clusters = np.repeat([f"lesion{i}" for i in range(10)], 10).tolist()
    items = paired_bootstrap(a, b, n_boot=2000, seed=1)
    lesions = paired_bootstrap(a, b, clusters=clusters, n_boot=2000, seed=1)
    assert items["difference"] == lesions["difference"] == pytest.approx(0.3)
    assert items["n_clusters"] == 100 and lesions["n_clusters"] == 10
    # 10 independent units instead of 100: the interval is about sqrt(10) times wider
    assert lesions["ci_high"] - lesions["ci_low"] > 2 * (items["ci_high"] - items["ci_low"])
    assert items["p_value"] < lesions["p_value"]


def test_bootstrap_none_cluster_is_singleton_and_seed_is_deterministic():
    a, b = [1, 0, 1, 0, 1], [0, 0, 1, 1, 0]
    clusters = ["x", "x", None, None, "y"]
    first = paired_bootstrap(a, b, clusters=clusters, n_boot=500, seed=7)
    assert first["n_clusters"] == 4
    assert first == paired_bootstrap(a, b, clusters=clusters, n_boot=500, seed=7)


def test_bootstrap_empty_and_bad_input():
    empty = paired_bootstrap([], [])
    assert empty["n"] == 0 and all(math.isnan(empty[key]) for key in ("difference", "ci_low", "ci_high", "p_value"))
    with pytest.raises(ValueError, match="a has 2 items, b has 3"):
        paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="clusters has 1 entries but a and b have 2 items"):
        paired_bootstrap([1, 0], [1, 0], clusters=["x"])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1, float("nan")], [1, 0])


# --- Holm and the combined comparison --------------------------------------------------------------------------


def test_holm_hand_values():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # monotone: 2 * 0.4, then max(0.8, 0.5)
    assert holm_adjust([0.9, 0.6]) == [1.0, 1.0]
    assert holm_adjust([]) == []


def test_holm_skips_nan():
    adjusted = holm_adjust([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.2, 1.5])


def test_compare_paired_binary_and_partial_credit():
    a, b = _paper_example()
    row = compare_paired(a, b, n_boot=1000)
    assert set(row) == {
        "n",
        "a_accuracy",
        "b_accuracy",
        "difference",
        "a_only",
        "b_only",
        "mcnemar_p",
        "ci_low",
        "ci_high",
        "bootstrap_p",
        "n_clusters",
    }
    assert row["mcnemar_p"] == pytest.approx(0.011818, abs=1e-6) and row["a_only"] == 16
    assert row["ci_low"] > 0 and row["ci_high"] > row["difference"] == pytest.approx(12 / 96)
    assert row["bootstrap_p"] < 0.05 and row["n_clusters"] == 96

    credit = compare_paired([1.0, 0.5, 0.25], [0.5, 0.5, 0.0], n_boot=200)
    assert credit["difference"] == pytest.approx(0.25) and credit["a_only"] is None
    assert math.isnan(credit["mcnemar_p"]) and math.isnan(credit["a_accuracy"])
