"""Roots of exponential sums, which locate where biased router scores cross."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moelab.analysis._expsum import exp_sum_roots


def f(c, a, lam, t):
    return np.sum(np.asarray(c)[:, None] * np.exp(np.asarray(a)[:, None] + np.outer(lam, t)), 0)


def test_two_terms_root_is_exact():
    # 2 e^{t} - 3 e^{-t} = 0  <=>  t = log(3/2) / 2
    roots = exp_sum_roots(np.array([2.0, -3.0]), np.zeros(2), np.array([1.0, -1.0]), -5, 5)
    assert roots == pytest.approx([math.log(1.5) / 2], abs=1e-15)


def test_finds_every_root_of_a_polynomial_in_e_t():
    # (e^t - 1)(e^t - 2)(e^t - 3) = e^{3t} - 6 e^{2t} + 11 e^t - 6: roots 0, log 2, log 3.
    c, lam = np.array([1.0, -6.0, 11.0, -6.0]), np.array([3.0, 2.0, 1.0, 0.0])
    roots = exp_sum_roots(c, np.zeros(4), lam, -1.0, 2.0)
    assert roots == pytest.approx([0.0, math.log(2), math.log(3)], abs=1e-12)
    assert exp_sum_roots(c, np.zeros(4), lam, 0.2, 0.9) == pytest.approx([math.log(2)], abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_roots_match_sign_changes_on_a_fine_grid(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 6))
    c, a, lam = rng.normal(size=m), rng.normal(size=m) * 3, rng.normal(size=m) * 4
    roots = exp_sum_roots(c, a, lam, 0.0, 1.0)
    t = np.linspace(0.0, 1.0, 100001)
    s = np.sign(f(c, a, lam, t))
    assert len(roots) == int(np.sum(s[1:] * s[:-1] < 0)) <= m - 1
    for r in roots:
        scale = np.sum(np.abs(c) * np.exp(a + lam * r))
        assert abs(f(c, a, lam, np.array([r]))[0]) <= 1e-12 * scale


def test_equal_rates_are_merged_and_huge_exponents_do_not_overflow():
    # e^{800 + t} - e^{800} * 2 e^{0 * t} ... written with repeated rates; root at log 2.
    c, a, lam = np.array([1.0, -1.0, -1.0]), np.array([800.0, 800.0, 800.0]), np.array([1.0, 0.0, 0.0])
    assert exp_sum_roots(c, a, lam, 0.0, 1.0) == pytest.approx([math.log(2)], abs=1e-12)
    assert exp_sum_roots(np.array([1.0, -1.0]), np.zeros(2), np.ones(2), 0.0, 1.0) == []
