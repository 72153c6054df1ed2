"""Statistics shared by simulations and reports: confidence intervals over seeds, fairness."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 97.5% quantiles of Student's t, by degrees of freedom (for 95% intervals).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    if df <= 0:
        return float("nan")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    for k in keys:
        if k > df:
            return _T975[k]
    return 1.960


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t over the values)."""
    xs = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if xs.size == 0:
        return float("nan"), float("nan")
    if xs.size == 1:
        return float(xs[0]), float("nan")
    half = t975(xs.size - 1) * xs.std(ddof=1) / math.sqrt(xs.size)
    return float(xs.mean()), float(half)


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    xs = np.asarray(values, dtype=float)
    if xs.size == 0 or not np.any(xs):
        return float("nan")
    return float(xs.sum() ** 2 / (xs.size * (xs**2).sum()))
