"""Error and uncertainty metrics on flat arrays (eV, eV/Å): energies per conformation, per atom and
relative within a molecule; force components, angles and per-element errors; spread-vs-error
rank correlation and binned calibration for ensembles."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from ..training.metrics import errors

MIN_FORCE_FOR_ANGLE = 0.05      # eV/Å: below this the direction of the true force is mostly noise
CALIBRATION_BINS = 5            # equal-count bins of the spread


# ---- ----------------------------------------------------------------------------------

def error_stats(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, Any]:
    """MAE, RMSE and count over the finite reference entries."""
    return errors(np.asarray(prediction), np.asarray(reference))


def relative_to_group_mean(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """`values` minus the mean of their group (molecule): conformer energies on one scale."""
    values = np.asarray(values, dtype=np.float64)
    group = np.asarray(group)
    _, index = np.unique(group, return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index)
    return values - (sums / counts)[index]


def relative_energy_errors(prediction: np.ndarray, reference: np.ndarray, group: np.ndarray) -> Dict[str, Any]:
    """Errors of conformer energies relative to each molecule's mean, prediction and reference
    each relative to their own mean. A molecule with one conformation has no relative energy
    and is left out."""
    group = np.asarray(group)
    _, index, counts = np.unique(group, return_inverse=True, return_counts=True)
    keep = counts[index] > 1
    if not keep.any():
        return {"mae": None, "rmse": None, "count": 0, "molecules": 0}
    out = error_stats(relative_to_group_mean(np.asarray(prediction)[keep], group[keep]),
                      relative_to_group_mean(np.asarray(reference)[keep], group[keep]))
    out["molecules"] = int(len(np.unique(group[keep])))
    return out


def force_angles(prediction: np.ndarray, reference: np.ndarray,
                 min_force: float = MIN_FORCE_FOR_ANGLE) -> np.ndarray:
    """Angle (degrees) between predicted and true force vectors, one per atom whose true force
    is finite and at least `min_force` long. A zero predicted force counts as 90°."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    true_norm = np.linalg.norm(reference, axis=1)
    keep = np.isfinite(reference).all(axis=1) & (true_norm >= min_force)
    p, r = prediction[keep], reference[keep]
    norms = np.linalg.norm(p, axis=1) * true_norm[keep]
    cosine = np.divide(np.sum(p * r, axis=1), norms, out=np.zeros(len(p)), where=norms > 0)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def force_cosine(prediction: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """Cosine between all predicted and all true force components as two long vectors (atoms
    with finite true forces): +1 same directions, −1 every force reversed."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    keep = np.isfinite(reference).all(axis=1)
    p, r = prediction[keep].ravel(), reference[keep].ravel()
    norm = float(np.linalg.norm(p) * np.linalg.norm(r))
    return float(p @ r / norm) if norm > 0 else None


def per_element_force_errors(prediction: np.ndarray, reference: np.ndarray, species: np.ndarray
                             ) -> Dict[str, Dict[str, Any]]:
    """Force component MAE / RMSE of the atoms of each element (symbol → stats, `count` in atoms)."""
    from ase.data import chemical_symbols

    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(reference).all(axis=1)
    out: Dict[str, Dict[str, Any]] = {}
    for z in np.unique(species):
        mask = (species == z) & finite
        if mask.any():
            stats = error_stats(prediction[mask], reference[mask])
            stats["count"] = int(mask.sum())
            out[chemical_symbols[int(z)]] = stats
    return out


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they occupy (as Spearman's ρ needs)."""
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Spearman rank correlation over the pairs where both are finite (None: fewer than 3
    pairs, or one side constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return None
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / norm) if norm > 0 else None


def calibration_bins(spread: np.ndarray, error: np.ndarray, n_bins: int = CALIBRATION_BINS
                     ) -> List[Dict[str, Any]]:
    """Equal-count bins of increasing spread; in each, the spread range, RMS spread, RMSE and
    MAE of the (absolute) errors. A calibrated ensemble has RMSE ≈ RMS spread in every bin."""
    spread, error = np.asarray(spread, dtype=np.float64), np.abs(np.asarray(error, dtype=np.float64))
    keep = np.isfinite(spread) & np.isfinite(error)
    spread, error = spread[keep], error[keep]
    order = np.argsort(spread, kind="stable")
    bins = []
    for chunk in np.array_split(order, min(n_bins, len(order))) if len(order) else []:
        s, e = spread[chunk], error[chunk]
        bins.append({"spread_min": float(s.min()), "spread_max": float(s.max()),
                     "rms_spread": float(np.sqrt(np.mean(s ** 2))), "rmse": float(np.sqrt(np.mean(e ** 2))),
                     "mae": float(np.mean(e)), "count": int(len(chunk))})
    return bins


def roc_auc(score: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of `score` for telling `positive` entries from the others: the
    probability that a random positive scores above a random negative (ties count half), from
    the rank-sum (Mann–Whitney) statistic. None without both classes."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# The atoms an uncertainty should flag: the 10 % with the largest true error (ROC AUC of that flag).
FLAG_FRACTION = 0.1


def uncertainty_metrics(spread: np.ndarray, error: np.ndarray, n_bins: int = CALIBRATION_BINS) -> Dict[str, Any]:
    """Does the spread (or any uncertainty) rank and size the error: Spearman ρ, bins, overall
    RMSE / RMS spread, and the ROC AUC of flagging the FLAG_FRACTION of entries with the largest
    error by the largest spread."""
    spread, error = np.asarray(spread, dtype=np.float64), np.abs(np.asarray(error, dtype=np.float64))
    keep = np.isfinite(spread) & np.isfinite(error)
    rms_spread = float(np.sqrt(np.mean(spread[keep] ** 2))) if keep.any() else None
    rmse = float(np.sqrt(np.mean(error[keep] ** 2))) if keep.any() else None
    worst = error[keep] >= np.quantile(error[keep], 1.0 - FLAG_FRACTION) if keep.any() else np.zeros(0, bool)
    return {"spearman": spearman(spread[keep], error[keep]), "count": int(keep.sum()),
            "rms_spread": rms_spread, "rmse": rmse,
            "rmse_over_rms_spread": rmse / rms_spread if rms_spread else None,
            "auc_worst_10pct": roc_auc(spread[keep], worst),
            "bins": calibration_bins(spread[keep], error[keep], n_bins)}
