"""fit_rate: slopes, t-based intervals and their coverage, display, validation; fit_slope,
max_over_min and loglog_crossing on measured sweeps."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from moelab.analysis import fit_rate
from moelab.analysis.rates import fit_slope, loglog_crossing, max_over_min


def test_recovers_a_noisy_power_law_and_its_interval_contains_the_slope():
    rng = np.random.default_rng(0)
    sizes = 2.0 ** np.arange(4, 11)
    errors = 3.0 * sizes**-1.5 * np.exp(rng.normal(0, 0.05, sizes.size))
    fit = fit_rate(sizes, errors, predicted=-1.5)
    assert abs(fit.slope + 1.5) < 0.05
    assert fit.contains(-1.5) and fit.ci_low < fit.slope < fit.ci_high
    assert fit.r2 > 0.99 and fit.num_points == 7
    assert fit.predict(64.0) == pytest.approx(3.0 * 64**-1.5, rel=0.1)


def test_exact_power_law():
    sizes = np.array([16.0, 32.0, 64.0, 128.0])
    fit = fit_rate(sizes, 5.0 * sizes**-2.0)
    assert fit.slope == pytest.approx(-2.0, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(5.0), abs=1e-12)
    assert fit.ci_high - fit.ci_low == pytest.approx(0.0, abs=1e-9) and fit.r2 == pytest.approx(1.0)


def test_interval_uses_student_t_and_has_its_nominal_coverage():
    # With 4 points (2 degrees of freedom) a normal quantile would cover only ~82% of the time.
    rng = np.random.default_rng(1)
    sizes = np.array([10.0, 20.0, 40.0, 80.0])
    hits = sum(
        fit_rate(sizes, sizes**-1.0 * np.exp(rng.normal(0, 0.2, 4))).contains(-1.0) for _ in range(2000)
    )
    assert 0.93 < hits / 2000 < 0.97


def test_str_reads_like_a_report_line():
    sizes = np.array([16.0, 32.0, 64.0, 128.0, 256.0])
    fit = fit_rate(sizes, sizes**-1.98 * np.array([1.0, 1.02, 0.99, 1.01, 1.0]), predicted=-2.0)
    assert re.fullmatch(r"slope -1\.98 \[95% CI -\d\.\d\d, -\d\.\d\d\] vs predicted -2\.00", str(fit))
    two = fit_rate([10, 100], [1.0, 0.1])
    assert two.slope == pytest.approx(-1.0) and math.isnan(two.ci_low) and math.isnan(two.stderr)
    assert str(two) == "slope -1.00 [95% CI n/a: 2 points]"
    assert "90% CI" in str(fit_rate(sizes, sizes**-1.0, confidence=0.9))


@pytest.mark.parametrize(
    "sizes, errors, kwargs, match",
    [
        ([10], [1.0], {}, "at least 2 points"),
        ([10, 20], [1.0], {}, "equal lengths"),
        ([10, -20], [1.0, 0.5], {}, "sizes must be finite and > 0"),
        ([10, 20], [1.0, 0.0], {}, "errors must be finite and > 0"),
        ([10, 10, 10], [1.0, 0.5, 0.2], {}, "distinct"),
        ([10, 20], [1.0, 0.5], {"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_input_raises(sizes, errors, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_rate(sizes, errors, **kwargs)


def test_interval_half_width_is_student_t_quantile_times_stderr():
    from scipy import stats

    x = np.array([16.0, 32.0, 64.0, 128.0, 256.0])
    y = x**-1.2 * np.array([1.1, 0.9, 1.05, 0.97, 1.02])
    fit = fit_rate(x, y, confidence=0.9)
    half = stats.t.ppf(0.95, df=3) * fit.stderr
    assert fit.ci_high - fit.slope == pytest.approx(half, rel=1e-12)
    assert fit.slope - fit.ci_low == pytest.approx(half, rel=1e-12)


def test_fit_slope_recovers_a_power_law_and_skips_bad_points():
    sizes = [16, 32, 64, 128, 16]
    errors = [3.0 * m**-1.5 for m in sizes[:4]] + [float("nan")]
    fit = fit_slope(sizes, errors)
    assert fit.slope == pytest.approx(-1.5) and fit.num_points == 4
    assert fit.predict(64) == pytest.approx(3.0 * 64**-1.5)
    assert fit.ci_high < 0
    assert fit_slope([16, 16], [1e-3, 2e-3]) is None


def test_loglog_crossing_interpolates_on_log_axes():
    sizes, values = [100, 1000, 10_000], [1e-2, 1e-3, 1e-4]
    hit = loglog_crossing(sizes, values, 10 ** -2.5)
    assert hit.bound == "=" and hit.size == pytest.approx(10**2.5)
    assert loglog_crossing(sizes, values, 1e-5).bound == ">"
    assert loglog_crossing(sizes, values, 1.0).bound == "<="


def test_max_over_min_is_the_spread_of_the_finite_positive_values():
    assert max_over_min([3.4e-4, 3.17e-4, 3.42e-4]) == pytest.approx(3.42 / 3.17)
    assert max_over_min([2.0, math.nan, 0.0, 4.0]) == 2.0 and math.isnan(max_over_min([]))
