"""Error metrics. NaN targets mean "no label" and are left out."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def errors(prediction: np.ndarray, target: np.ndarray) -> Dict[str, Optional[float]]:
    """MAE and RMSE over every finite target entry (None when there is none)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mask = np.isfinite(target)
    if not mask.any():
        return {"mae": None, "rmse": None, "count": 0}
    diff = prediction[mask] - target[mask]
    return {"mae": float(np.abs(diff).mean()), "rmse": float(np.sqrt(np.mean(diff ** 2))), "count": int(mask.sum())}
