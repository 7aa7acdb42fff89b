"""An ASE calculator for exported ekd models: the same file and the same numbers as in LAMMPS.

    from ekd.calculator import EKDCalculator
    atoms.calc = EKDCalculator("student.pt")          # device="cpu" | "cuda"
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()  # stress if periodic

Energies in eV, forces in eV/Å, stress in eV/Å³ (ASE units). For an exported ensemble the
calculator also gives `energy_std` (spread of member energies) and `forces_std` (per-atom
spread of member forces) in `calc.results`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import primitive_neighbor_list

from .errors import ModelFileError


class EKDCalculator(Calculator):
    """ASE calculator backed by an exported ekd TorchScript file (see export/CONTRACT.md)."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model_path: str, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ekd.export import METADATA_NAME, parse_metadata

        extra = {METADATA_NAME: ""}
        try:
            self.module = torch.jit.load(str(model_path), map_location=device, _extra_files=extra)
        except Exception as err:
            if not os.path.exists(model_path):
                raise ModelFileError(f"model file not found: {model_path}") from None
            raise ModelFileError(f"{model_path}: not a TorchScript file ({type(err).__name__})") from None
        self.metadata = parse_metadata(extra[METADATA_NAME], model_path)
        self.model_path = str(model_path)
        self.device = torch.device(device)
        self.dtype = getattr(torch, self.metadata["dtype"])
        self.cutoff = float(self.metadata["cutoff"])
        self.elements: List[str] = list(self.metadata["elements"])
        self.is_ensemble = self.metadata["model_kind"] == "ensemble"
        self._warned_close_contact = False

    def _species(self, symbols: List[str]) -> torch.Tensor:
        unknown = sorted(set(symbols) - set(self.elements))
        if unknown:
            first = next(i for i, s in enumerate(symbols) if s in unknown)
            raise ModelFileError(f"atom {first} is {symbols[first]}, an element the model {self.model_path} "
                                 f"does not know (it knows {' '.join(self.elements)})")
        index = {s: k for k, s in enumerate(self.elements)}
        return torch.tensor([index[s] for s in symbols], dtype=torch.long, device=self.device)

    def _graph(self, atoms: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cell = np.asarray(atoms.cell)
        pbc = np.asarray(atoms.pbc)
        if pbc.any() and np.linalg.matrix_rank(cell) < 3:
            raise ModelFileError("a periodic structure needs a cell with three lattice vectors")
        i, j, shift = primitive_neighbor_list("ijS", pbc, cell if pbc.any() else np.eye(3), atoms.positions,
                                              self.cutoff, self_interaction=False)
        vectors = atoms.positions[j] - atoms.positions[i] + shift @ cell
        return i, j, vectors

    def _warn_close_contacts(self, vectors: np.ndarray) -> None:
        limit = float(self.metadata.get("min_distance", 0.0))
        if self._warned_close_contact or not limit or not len(vectors):
            return
        shortest = float(np.linalg.norm(vectors, axis=1).min())
        if shortest < limit:
            self._warned_close_contact = True
            warnings.warn(f"{self.model_path}: atoms {shortest:.3f} Å apart, closer than the shortest distance "
                          f"in the training data ({limit:.3f} Å); predictions there are extrapolation",
                          stacklevel=3)

    def calculate(self, atoms: Any = None, properties: Optional[List[str]] = None,
                  system_changes: List[str] = all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        atoms = self.atoms
        species = self._species(atoms.get_chemical_symbols())
        i, j, vectors = self._graph(atoms)
        self._warn_close_contacts(vectors)
        receivers = torch.as_tensor(i, dtype=torch.long, device=self.device)
        senders = torch.as_tensor(j, dtype=torch.long, device=self.device)
        edge_vectors = torch.as_tensor(vectors, dtype=self.dtype, device=self.device)
        n = len(atoms)
        energy, atom_energy, edge_grad = self.module(edge_vectors, receivers, senders, species, n)
        grad = edge_grad.detach().double().cpu().numpy()
        forces = np.zeros((n, 3))
        np.add.at(forces, i, grad)
        np.add.at(forces, j, -grad)
        results: Dict[str, Any] = {"energy": float(energy), "free_energy": float(energy),
                                   "energies": atom_energy.detach().cpu().numpy()[:n], "forces": forces}
        if atoms.pbc.all():
            virial = -np.einsum("ea,eb->ab", vectors, grad)
            stress = -virial / atoms.get_volume()
            results["stress"] = stress.reshape(9)[[0, 4, 8, 5, 2, 1]]
        if self.is_ensemble:
            results.update(self._spread(edge_vectors, receivers, senders, species, n, i, j))
        self.results = results

    def _spread(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n: int, i: np.ndarray, j: np.ndarray) -> Dict[str, Any]:
        energies, grads = self.module.members(edge_vectors, receivers, senders, species, n)
        grads = grads.detach().double().cpu().numpy()
        member_forces = np.zeros((grads.shape[0], n, 3))
        for m in range(grads.shape[0]):
            np.add.at(member_forces[m], i, grads[m])
            np.add.at(member_forces[m], j, -grads[m])
        mean = member_forces.mean(axis=0)
        return {"energy_std": float(energies.detach().std(unbiased=False)),
                "forces_std": np.sqrt(np.mean(np.sum((member_forces - mean) ** 2, axis=-1), axis=0)),
                "member_energies": energies.detach().cpu().numpy(), "member_forces": member_forces}
