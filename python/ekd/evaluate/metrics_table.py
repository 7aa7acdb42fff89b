"""Per-model, per-split error metrics against the reference data: the content of summary.json."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..data import AtomsData
from ..training import Predictions, errors

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
    """The ensemble mean of members' predictions on the same conformations."""
    return Predictions(
        ids=members[0].ids,
        energy=np.mean([m.energy for m in members], axis=0),
        atom_energy=np.mean([m.atom_energy for m in members], axis=0),
        forces=None if members[0].forces is None else np.mean([m.forces for m in members], axis=0),
    )
