"""Paired statistics for comparing two models scored on the same items, and honest intervals for one proportion.

Why this exists: two models evaluated on one suite are *paired*, and comparing their separate 95% intervals throws
the pairing away. Overlapping intervals do not mean "no difference": 50/96 vs 38/96 correct, with 16 items only A gets
right and 4 only B gets right, have overlapping intervals (about [0.42, 0.62] vs [0.29, 0.49]) while the exact McNemar
test on the 20 discordant items gives p = 0.012. So a comparison is tested on the per-item differences:
  * `mcnemar_exact`: exact two-sided binomial test on the discordant pairs, for 0/1 correctness;
  * `paired_bootstrap`: percentile interval and bootstrap p-value for mean(a) - mean(b), for any per-item score
    (partial credit included), resampling whole clusters when given. On real HAM10000 several images share one
    lesion (and one patient), so items are not independent; resampling images as if they were understates the
    uncertainty, and resampling must be by lesion/patient cluster;
  * `holm_adjust`: family-wise correction when several comparisons (suites, variants) are reported together.
For a single proportion, `wilson_interval` and `clopper_pearson_interval` are used instead of a percentile bootstrap,
which collapses to a zero-width interval at 0/n or n/n (every resample is all-wrong or all-right) while Wilson and
Clopper-Pearson still say how little a perfect score on few items proves.

Pure numpy + standard library; no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

#: Relative tolerance under which an outcome counts as "as likely as the observed" in the exact binomial test.
_REL_TOL = 1e-7
#: Upper bound on the number of int64 indices drawn at once by the bootstrap (about 16 MB).
_DRAW_BUDGET = 2_000_000


def _nan() -> float:
    return float("nan")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _as_count(value: Any, name: str) -> int:
    try:
        as_int = int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an integer, got {value!r}") from err
    if as_int != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return as_int


def _check_counts(successes: Any, n: Any) -> tuple[int, int]:
    k, total = _as_count(successes, "successes"), _as_count(n, "n")
    if total < 0:
        raise ValueError(f"n must be >= 0, got {total}")
    if not 0 <= k <= total:
        raise ValueError(f"successes must be between 0 and n = {total}, got {k}")
    return k, total


def wilson_interval(successes: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion; (nan, nan) when n == 0.

    Unlike the Wald interval it stays inside [0, 1] and keeps a non-zero width at 0/n and n/n. The bound at the
    observed edge is exactly 0 (k = 0) or 1 (k = n). `successes` may be fractional: an expected count, such as a
    guesser's hits when it splits ties between options.
    """
    total = _as_count(n, "n")
    try:
        k = float(successes)
    except (TypeError, ValueError) as err:
        raise ValueError(f"successes must be a number, got {successes!r}") from err
    if total < 0:
        raise ValueError(f"n must be >= 0, got {total}")
    if not 0.0 <= k <= total:
        raise ValueError(f"successes must be between 0 and n = {total}, got {successes!r}")
    _check_alpha(alpha)
    if total == 0:
        return _nan(), _nan()
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    z2 = z * z
    phat = k / total
    denom = 1.0 + z2 / total
    center = (phat + z2 / (2.0 * total)) / denom
    half = z / denom * math.sqrt(phat * (1.0 - phat) / total + z2 / (4.0 * total * total))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == total else min(1.0, center + half)
    return lo, hi


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _incbeta_fraction(a: float, b: float, x: float) -> float:
    """Continued-fraction part of I_x(a, b), evaluated with the modified Lentz recurrence.

    Converges fast for x < (a + 1) / (a + b + 2); the caller uses the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    otherwise. The number of terms grows like sqrt(max(a, b)), so n = 100000 needs a few hundred.
    """
    floor = 1e-300
    num = 1.0  # Lentz "C"
    den = 1.0 - (a + b) * x / (a + 1.0)  # Lentz "D" before inversion
    den = 1.0 / (den if abs(den) > floor else floor)
    result = den
    for m in range(1, 100_000):
        # even term d_{2m}, then odd term d_{2m+1} of the continued fraction
        for coef in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            den = 1.0 + coef * den
            den = 1.0 / (den if abs(den) > floor else floor)
            num = 1.0 + coef / num
            num = num if abs(num) > floor else floor
            step = den * num
            result *= step
        if abs(step - 1.0) < 1e-15:
            return result
    raise RuntimeError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _regularized_incbeta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (the beta CDF), for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x < (a + 1.0) / (a + b + 2.0):
        log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
        return math.exp(log_front) * _incbeta_fraction(a, b, x) / a
    log_front = b * math.log1p(-x) + a * math.log(x) - _log_beta(a, b)
    return 1.0 - math.exp(log_front) * _incbeta_fraction(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    """x with I_x(a, b) = q, by bisection (the CDF is increasing); relative precision ~1e-15 in x."""
    lo, hi = 0.0, 1.0
    for _ in range(2_000):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi or hi - lo <= 1e-15 * hi:
            break
        if _regularized_incbeta(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval: the p at which each binomial tail of the observed count equals alpha/2.

    lo solves P(X >= k | n, lo) = alpha/2 and hi solves P(X <= k | n, hi) = alpha/2, through the identity
    P(X >= k | n, p) = I_p(k, n - k + 1). Conservative (coverage >= 1 - alpha); lo = 0 at k = 0, hi = 1 at k = n,
    with closed forms for the other bound there. (nan, nan) when n == 0.
    """
    k, total = _check_counts(successes, n)
    _check_alpha(alpha)
    if total == 0:
        return _nan(), _nan()
    tail = alpha / 2.0
    if k == 0:
        lo = 0.0
    elif k == total:
        lo = math.exp(math.log(tail) / total)
    else:
        lo = _beta_quantile(tail, k, total - k + 1)
    if k == total:
        hi = 1.0
    elif k == 0:
        hi = -math.expm1(math.log(tail) / total)
    else:
        hi = _beta_quantile(1.0 - tail, k + 1, total - k)
    return lo, hi


def binomial_two_sided_p(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: total probability of the outcomes no more likely than the observed k.

    "No more likely" allows a relative tolerance of 1e-7 so that outcomes tied with k in exact arithmetic are not
    lost to rounding (the rule R's binom.test uses). Capped at 1.0.
    """
    k, total = _check_counts(k, n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if total == 0:
        return 1.0
    if p == 0.0 or p == 1.0:
        certain = 0 if p == 0.0 else total
        return 1.0 if k == certain else 0.0
    outcomes = np.arange(total + 1, dtype=float)
    log_fact = np.array([math.lgamma(i + 1.0) for i in range(total + 1)])
    log_pmf = log_fact[-1] - log_fact - log_fact[::-1] + outcomes * math.log(p) + (total - outcomes) * math.log1p(-p)
    rel = np.exp(log_pmf - log_pmf[k])  # probability of each outcome relative to the observed one
    counted = rel <= 1.0 + _REL_TOL
    if counted.all():  # every outcome counts: exactly 1, not a sum that rounds to 0.99999...
        return 1.0
    return min(1.0, math.exp(log_pmf[k]) * float(rel[counted].sum()))


def _as_scores(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of numbers") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _paired_scores(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _as_scores(a, "a"), _as_scores(b, "b")
    if len(a_arr) != len(b_arr):
        raise ValueError(f"paired inputs differ in length: a has {len(a_arr)} items, b has {len(b_arr)}")
    return a_arr, b_arr


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.all((arr == 0.0) | (arr == 1.0)))


def mcnemar_exact(a_correct: Sequence[Any], b_correct: Sequence[Any]) -> dict[str, Any]:
    """Exact McNemar test of two models' 0/1 correctness on the same items.

    Only discordant items carry information about which model is better: under H0 each is equally likely to
    favour A or B, so p_value is the exact two-sided binomial test of a_only out of a_only + b_only at p = 0.5
    (1.0 when there are no discordant items). difference = a_accuracy - b_accuracy.
    """
    a_arr, b_arr = _paired_scores(a_correct, b_correct)
    for name, arr in (("a_correct", a_arr), ("b_correct", b_arr)):
        if not _is_binary(arr):
            bad = arr[(arr != 0.0) & (arr != 1.0)][0]
            raise ValueError(f"{name} must contain only 0/1 (or bool) values, found {float(bad):g}")
    n = len(a_arr)
    a_only = int(np.sum((a_arr == 1.0) & (b_arr == 0.0)))
    b_only = int(np.sum((a_arr == 0.0) & (b_arr == 1.0)))
    a_acc = float(a_arr.mean()) if n else _nan()
    b_acc = float(b_arr.mean()) if n else _nan()
    discordant = a_only + b_only
    return {
        "n": n,
        "a_accuracy": a_acc,
        "b_accuracy": b_acc,
        "difference": a_acc - b_acc,
        "a_only": a_only,
        "b_only": b_only,
        "p_value": binomial_two_sided_p(a_only, discordant, 0.5) if discordant else 1.0,
    }


def _is_missing(cluster: Any) -> bool:
    return cluster is None or (isinstance(cluster, float) and math.isnan(cluster))


def _cluster_codes(clusters: Sequence[Hashable | None], n: int) -> np.ndarray:
    ids = list(clusters)
    if len(ids) != n:
        raise ValueError(f"clusters has {len(ids)} entries but a and b have {n} items")
    codes: dict[Any, int] = {}
    out = np.empty(n, dtype=np.int64)
    next_code = 0
    for i, cluster in enumerate(ids):
        if _is_missing(cluster):  # an unknown cluster is its own singleton
            out[i] = next_code
            next_code += 1
            continue
        code = codes.get(cluster)
        if code is None:
            code = codes[cluster] = next_code
            next_code += 1
        out[i] = code
    return out


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    clusters: Sequence[Hashable | None] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired (optionally cluster) bootstrap of mean(a) - mean(b) over per-item scores.

    Resampling the per-item differences keeps the pairing. With `clusters` (one hashable id per item; None or NaN
    is a singleton cluster), whole clusters are drawn with replacement and each replicate's difference is the sum
    of the drawn clusters' summed differences over the number of items drawn. ci_low/ci_high are percentile bounds
    at alpha/2 and 1 - alpha/2. p_value = min(1, 2 * min(share of replicates <= 0, share of replicates >= 0)): the
    two-sided percentile-bootstrap p-value for H0 "no difference", at resolution 1/n_boot (0 means < 1/n_boot).
    Deterministic for a given seed. Empty input gives n = 0 and NaN everywhere else.
    """
    a_arr, b_arr = _paired_scores(a, b)
    _check_alpha(alpha)
    n_boot = _as_count(n_boot, "n_boot")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = len(a_arr)
    codes = np.arange(n, dtype=np.int64) if clusters is None else _cluster_codes(clusters, n)
    if n == 0:
        return {"n": 0, "n_clusters": 0, "difference": _nan(), "ci_low": _nan(), "ci_high": _nan(), "p_value": _nan()}
    n_clusters = int(codes.max()) + 1
    diff_sums = np.bincount(codes, weights=a_arr - b_arr, minlength=n_clusters)
    sizes = np.bincount(codes, minlength=n_clusters).astype(float)
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    chunk = max(1, _DRAW_BUDGET // n_clusters)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        draws = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        replicates[start:stop] = diff_sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    p_value = min(1.0, 2.0 * min(float(np.mean(replicates <= 0.0)), float(np.mean(replicates >= 0.0))))
    return {
        "n": n,
        "n_clusters": n_clusters,
        "difference": float(diff_sums.sum() / n),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in input order.

    The i-th smallest of m p-values is multiplied by (m - i + 1), made non-decreasing along the sorted order and
    capped at 1; it controls the family-wise error rate without independence assumptions. NaN entries stay NaN
    and do not count towards m.
    """
    ps = _as_scores_allow_nan(p_values)
    out = np.full(len(ps), np.nan)
    valid = np.flatnonzero(~np.isnan(ps))
    m = len(valid)
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(ps[valid], kind="stable")]
    scaled = ps[order] * (m - np.arange(m))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


def _as_scores_allow_nan(p_values: Sequence[float]) -> np.ndarray:
    try:
        ps = np.asarray(p_values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError("p_values must be a sequence of numbers") from err
    if ps.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {ps.shape}")
    if np.any((ps < 0.0) | (ps > 1.0)):
        raise ValueError("p_values must lie in [0, 1] (NaN allowed)")
    return ps


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    clusters: Sequence[Hashable | None] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """One row of a model comparison: exact McNemar (when both score vectors are 0/1) plus the paired bootstrap.

    Keys: n, a_accuracy, b_accuracy, difference, a_only, b_only, mcnemar_p, ci_low, ci_high, bootstrap_p,
    n_clusters. difference is mean(a) - mean(b) either way; for non-binary scores (partial credit) the McNemar
    fields are NaN (a_accuracy, b_accuracy, mcnemar_p) or None (a_only, b_only). McNemar ignores clusters, so with
    clustered items trust the bootstrap interval and p-value.
    """
    a_arr, b_arr = _paired_scores(a, b)
    boot = paired_bootstrap(a_arr, b_arr, clusters=clusters, n_boot=n_boot, alpha=alpha, seed=seed)
    if _is_binary(a_arr) and _is_binary(b_arr):
        mc = mcnemar_exact(a_arr, b_arr)
        mc_fields = {
            "a_accuracy": mc["a_accuracy"],
            "b_accuracy": mc["b_accuracy"],
            "a_only": mc["a_only"],
            "b_only": mc["b_only"],
            "mcnemar_p": mc["p_value"],
        }
    else:
        mc_fields = {"a_accuracy": _nan(), "b_accuracy": _nan(), "a_only": None, "b_only": None, "mcnemar_p": _nan()}
    return {
        "n": boot["n"],
        "a_accuracy": mc_fields["a_accuracy"],
        "b_accuracy": mc_fields["b_accuracy"],
        "difference": boot["difference"],
        "a_only": mc_fields["a_only"],
        "b_only": mc_fields["b_only"],
        "mcnemar_p": mc_fields["mcnemar_p"],
        "ci_low": boot["ci_low"],
        "ci_high": boot["ci_high"],
        "bootstrap_p": boot["p_value"],
        "n_clusters": boot["n_clusters"],
    }
