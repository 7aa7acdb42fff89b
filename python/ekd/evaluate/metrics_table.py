"""Per-model, per-split error metrics against the reference data: the content of summary.json."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ..data import AtomsData
from ..training import Predictions, errors
from ..distill.labels import member_force_deviation
from .error_metrics import uncertainty_metrics

METRIC_KEYS = ("energy_mae", "energy_rmse", "energy_mae_per_atom", "energy_rmse_per_atom",
               "force_mae", "force_rmse")


def split_metrics(prediction: Predictions, data: AtomsData) -> Dict[str, Optional[float]]:
    """Energy errors (per conformation and per atom, eV) and force errors (eV/Å, where the data
    have true forces) of `prediction` on the conformations `prediction.ids` of `data`."""
    ids = prediction.ids
    sub = data.subset(ids)
    energy = errors(prediction.energy, sub.energy)
    per_atom = errors(prediction.energy / sub.n_atoms, sub.energy / sub.n_atoms)
    out: Dict[str, Optional[float]] = {
        "energy_mae": energy["mae"], "energy_rmse": energy["rmse"],
        "energy_mae_per_atom": per_atom["mae"], "energy_rmse_per_atom": per_atom["rmse"],
        "force_mae": None, "force_rmse": None, "conformations": int(len(ids)),
        "conformations_with_forces": int(sub.has_forces.sum()),
    }
    if sub.forces is not None and prediction.forces is not None and sub.has_forces.any():
        force = errors(prediction.forces, sub.forces)
        out["force_mae"], out["force_rmse"] = force["mae"], force["rmse"]
    return out


def mean_prediction(members: list[Predictions]) -> Predictions:
    """The ensemble mean of members' predictions on the same conformations, with the per-atom
    deviation of their forces sqrt(mean_k |F_k − mean F|²) as its uncertainty."""
    forces = None if members[0].forces is None else np.stack([m.forces for m in members])
    deviation = member_force_deviation(forces) if forces is not None and len(members) > 1 else None
    return Predictions(
        ids=members[0].ids,
        energy=np.mean([m.energy for m in members], axis=0),
        atom_energy=np.mean([m.atom_energy for m in members], axis=0),
        forces=None if forces is None else forces.mean(axis=0),
        uncertainty=deviation,
    )


def uncertainty_calibration(prediction: Predictions, data: AtomsData) -> Optional[Dict[str, Any]]:
    """How the per-atom uncertainty ranks and sizes the true force error |F − F_true| on the
    atoms of `prediction.ids` with true forces (Spearman ρ, RMSE / RMS uncertainty, ROC AUC of
    flagging the worst 10 %, binned table); None without an uncertainty or true forces."""
    error = _force_error_norms(prediction, data)
    if error is None or prediction.uncertainty is None:
        return None
    keep = np.isfinite(error)
    return uncertainty_metrics(prediction.uncertainty[keep], error[keep])


def fit_uncertainty_scale(prediction: Predictions, data: AtomsData) -> Optional[float]:
    """The factor s that makes the RMS of s·u equal the RMS true force error on these atoms
    (thresholds then mean eV/Å of error); None without true forces or with u = 0."""
    error = _force_error_norms(prediction, data)
    if error is None or prediction.uncertainty is None:
        return None
    keep = np.isfinite(error)
    rms_u = float(np.sqrt(np.mean(prediction.uncertainty[keep] ** 2))) if keep.any() else 0.0
    return float(np.sqrt(np.mean(error[keep] ** 2))) / rms_u if rms_u > 0 else None


def _force_error_norms(prediction: Predictions, data: AtomsData) -> Optional[np.ndarray]:
    """|F − F_true| per atom of `prediction.ids` (NaN where the data have no true forces)."""
    sub = data.subset(prediction.ids)
    if sub.forces is None or prediction.forces is None or not sub.has_forces.any():
        return None
    return np.linalg.norm(prediction.forces - sub.forces, axis=1)
