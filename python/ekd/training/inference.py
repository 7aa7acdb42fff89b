"""Run a model over many conformations and collect its predictions as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..data import GraphData
from ..models import Potential, predict


@dataclass
class Predictions:
    """Full energies (eV, references included), per conformation and atom, in data order of `ids`.

    energy (C,), atom_energy (A,), forces (A, 3) or None; atoms are those of `ids`, in order;
    uncertainty (A,) eV/Å: a model's own per-atom uncertainty, or an ensemble's force deviation.
    """

    ids: np.ndarray
    energy: np.ndarray
    atom_energy: np.ndarray
    forces: Optional[np.ndarray]
    uncertainty: Optional[np.ndarray] = None


def predict_all(model: Potential, graph: GraphData, ids: np.ndarray, batch_size: int = 512,
                forces: bool = True) -> Predictions:
    """Evaluate `model` on conformations `ids` of `graph`, in batches, without parameter gradients
    (with the model's own per-atom uncertainty when it has one)."""
    model.eval()
    reference = model.reference_tensor(graph.device)
    energies, atom_energies, all_forces, uncertainties = [], [], [], []
    for batch in graph.batches(np.asarray(ids), batch_size):
        with torch.set_grad_enabled(forces):
            result = predict(model, batch, forces=forces, create_graph=False, uncertainty=True)
        if result.uncertainty is not None:
            uncertainties.append(result.uncertainty.detach().double().cpu().numpy())
        ref_atoms = reference[batch.species]
        ref_conf = torch.zeros(batch.n_conformations, dtype=torch.float64,
                               device=graph.device).index_add(0, batch.conformation, ref_atoms)
        energies.append((result.energy.detach().double() + ref_conf).cpu().numpy())
        atom_energies.append((result.atom_energy.detach().double() + ref_atoms).cpu().numpy())
        if forces and result.forces is not None:
            all_forces.append(result.forces.detach().double().cpu().numpy())
    return Predictions(
        ids=np.asarray(ids),
        energy=np.concatenate(energies) if energies else np.zeros(0),
        atom_energy=np.concatenate(atom_energies) if atom_energies else np.zeros(0),
        forces=(np.concatenate(all_forces) if all_forces else np.zeros((0, 3))) if forces else None,
        uncertainty=np.concatenate(uncertainties) if uncertainties else None,
    )
