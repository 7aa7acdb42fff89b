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
