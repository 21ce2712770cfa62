"""How moelab writes the numbers of its verdicts, tables and report: three significant digits
throughout, ``n/a`` for a missing value, each metric in its own format; and which combination of
labels a verdict, table or figure is of (:func:`where_text`). Pure: no matplotlib."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moelab.analysis import RateFit
    from moelab.experiments.grid import Key, Spread


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sci(x: float | None) -> str:
    """``3.40e-04``; ``n/a`` for None or NaN."""
    return "n/a" if _missing(x) else f"{x:.2e}"


def num(x: float | None) -> str:
    """Three significant digits in plain notation where short (``1.12``, ``12``, ``0.981``)."""
    return "n/a" if _missing(x) else f"{x:.3g}"


def ratio(x: float | None) -> str:
    """A ratio to three significant digits, trailing zeros kept (``1.00``, ``0.379``, ``22.6``);
    large ones as whole numbers (``545``, ``2.50e+03``)."""
    if _missing(x):
        return "n/a"
    return f"{x:.0f}" if 100 <= abs(x) < 1000 else f"{x:#.3g}"


def count(x: float | None) -> str:
    """A (median) count such as a parameter number, rounded: ``2,304``."""
    return "n/a" if _missing(x) else f"{round(x):,}"


def metric_format(name: str) -> Callable[[float | None], str]:
    """The number format of a metric: scientific for errors, counts for parameters, else plain."""
    if name in ("test_mse", "test_sup", "bound"):
        return sci
    return count if "parameters" in name else num


def metric_header(name: str) -> str:
    """How a metric is named in the report."""
    return {"test_mse": "test MSE", "test_sup": "sup error"}.get(name, name.replace("_", " "))


def cell(s: Spread, fmt: Callable[[float], str] = sci) -> str:
    """``median [min, max]`` over seeds; a bare median for one seed; notes diverged runs."""
    if not s.ok:
        text = "n/a"
    elif s.n == 1:
        text = fmt(s.median)
    else:
        text = f"{fmt(s.median)} [{fmt(s.low)}, {fmt(s.high)}]"
    if s.ok and s.missing:
        text += f" ({s.missing} run{'s' if s.missing > 1 else ''} without a finite value)"
    return text


def slope_text(slope: RateFit | None, *, predicted: float | None = None) -> str:
    """``-1.52 [-1.70, -1.34]`` (the fitted log-log slope and its 95% interval) or ``n/a``."""
    if slope is None:
        return "n/a"
    text = f"{slope.slope:+.2f}"
    if not math.isnan(slope.ci_low):
        text += f" [{slope.ci_low:+.2f}, {slope.ci_high:+.2f}]"
    if predicted is not None:
        text += f" (paper {predicted:+.2f})"
    return text


def duration(seconds: float) -> str:
    """``45 s``, ``12.3 min`` or ``2.05 h``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, each other character than a letter or digit a dash."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def where_text(keys: Sequence[Key], combo: Sequence[str]) -> str:
    """`` (D 16, recipe best)``: which combination of ``keys`` a verdict, table or figure is of."""
    parts = [f"{k} {v}" if isinstance(k, str) else v for k, v in zip(keys, combo, strict=False)]
    return f" ({', '.join(parts)})" if parts else ""
