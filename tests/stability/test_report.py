"""Kaplan–Meier survival and its median, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ekd.stability import kaplan_meier, median_survival


def test_kaplan_meier_by_hand() -> None:
    times = [1.0, 2.0, 2.0, 3.0, 5.0]
    failed = [True, True, False, True, False]
    t, s = kaplan_meier(times, failed)
    # t = 1: 5 at risk, 1 fails → 0.8; t = 2: 4 at risk, 1 fails → 0.6; t = 3: 2 at risk, 1 fails → 0.3
    assert np.allclose(t, [0.0, 1.0, 2.0, 3.0])
    assert np.allclose(s, [1.0, 0.8, 0.6, 0.3])
    assert median_survival(times, failed) == pytest.approx(3.0)
    assert median_survival([5.0, 5.0], [False, False]) is None
    assert np.allclose(kaplan_meier([5.0, 5.0], [False, False])[1], [1.0])


def test_uncertainty_warning_by_hand() -> None:
    """Three survivors peak at 0.2, 0.3, 0.5 eV/Å; of two failures one climbs past 0.5 two
    windows (20 fs) before failing, the other never leaves 0.25."""
    from ekd.stability.report import uncertainty_warning
    from ekd.stability.trajectories import TrajectoryResult

    def row(survived: bool, time_ps: float, trace: list) -> TrajectoryResult:
        return TrajectoryResult("m", "water", 0, survived, time_ps, int(time_ps * 4000), "", 0.0, trace)

    rows = [row(True, 1.0, [0.1, 0.2]), row(True, 1.0, [0.3, 0.1]), row(True, 1.0, [0.5]),
            row(False, 0.05, [0.1, 0.2, 0.6, 0.9, 1.0]), row(False, 0.03, [0.25, 0.1, 0.2])]
    w = uncertainty_warning(rows)
    assert w["trajectories"] == 5 and w["failed"] == 2
    # failure peaks 1.0 (above all 3 survivors) and 0.25 (above 1 of 3): AUC (1 + 1/3) / 2
    assert w["auc"] == pytest.approx((1.0 + 1.0 / 3.0) / 2.0)
    strict = w["thresholds"][0]
    assert strict["eV_per_A"] == 0.5 and strict["failures_flagged"] == 1
    assert strict["median_lead_ps"] == pytest.approx(0.05 - 0.020)   # first over 0.5 in window 2 (20-30 fs)
    assert uncertainty_warning([row(True, 1.0, [])]) == {}           # a model without its own uncertainty
