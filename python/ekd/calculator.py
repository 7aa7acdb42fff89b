"""An ASE calculator for exported ekd models: the same file and the same numbers as in LAMMPS.

    from ekd.calculator import EKDCalculator
    atoms.calc = EKDCalculator("student.pt")          # device="cpu" | "cuda"
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()  # stress if periodic

Energies in eV, forces in eV/Å, stress in eV/Å³ (ASE units). Files with a per-atom
uncertainty also give `atom_uncertainty` (eV/Å, per atom): a student's own (its uncertainty
head, with the scale fitted after training) or, for an exported ensemble, the deviation of its
members' forces sqrt(mean_k |F_k − mean F|²) — the same number as `forces_std`, which ensembles
give with `energy_std` (spread of member energies), `member_energies` and `member_forces`.
As in LAMMPS, only the calls that ask pay for them (15 % of a student's call, every member's
call for an ensemble): `calc.get_property("atom_uncertainty", atoms)`, or
`EKDCalculator(..., uncertainty=True)` to have them in `calc.results` after every call.
Two atoms at the same position (closer than 1e-4 Å) are an error naming both; a non-finite
energy or force is NonFiniteOutput (which stability runs count as a failed trajectory).

Neighbour pairs come from `ekd.data.neighbors.VerletNeighbors`: kept between calls and rebuilt
only when an atom moved more than half of `skin` (Å, default 1; 0 rebuilds every call), so MD
pays for a neighbour search every few steps; the results are those of a fresh search.

As `pair_style ekd` by default (`heap keep`), the calculator sets the process's C library to
keep freed memory (`ekd.heap`): each call reuses the previous call's pages instead of faulting
its tables in again (the demo student on 14,625 ethanol atoms, neighbour search included: a
call took 442-592 ms kept against 712-1358 ms, three alternated processes, 2026-12-02).
`keep_memory=False` leaves the C library's defaults.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .data.neighbors import VerletNeighbors
from .errors import ModelFileError, NonFiniteOutput
from .export import force_deviation
from .heap import keep_freed_memory


# What a file with a per-atom uncertainty (or an ensemble) gives beside energy and forces.
UNCERTAINTY = ("atom_uncertainty", "energy_std", "forces_std", "member_energies", "member_forces")


class EKDCalculator(Calculator):
    """ASE calculator backed by an exported ekd TorchScript file (see export/CONTRACT.md)."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", *UNCERTAINTY]

    def __init__(self, model_path: str, device: str = "cpu", skin: float = 1.0, uncertainty: bool = False,
                 keep_memory: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ekd.export import load_exported

        if keep_memory:
            keep_freed_memory()

        self.model = load_exported(model_path, device)
        self.metadata = self.model.metadata
        self.model_path = str(model_path)
        self.device = self.model.device
        self.cutoff = self.metadata.cutoff
        self.elements: List[str] = self.model.elements
        self.is_ensemble = self.metadata.is_ensemble
        self._warned_close_contact = False
        self._neighbors = VerletNeighbors(self.cutoff, skin)
        self.uncertainty = uncertainty

    def check_state(self, atoms: Any, tol: float = 1e-15) -> List[str]:
        """What changed since the last call, among what the model depends on (positions, numbers,
        cell, pbc), compared exactly. ASE's general check compares a dozen arrays with `isclose`
        three times per MD step: 20 % of a small molecule's step (profiled, 9 atoms)."""
        if self.atoms is None:
            return list(all_changes)
        return [name for name, mine, theirs in (
            ("positions", self.atoms.positions, atoms.positions), ("numbers", self.atoms.numbers, atoms.numbers),
            ("cell", self.atoms.cell.array, atoms.cell.array), ("pbc", self.atoms.pbc, atoms.pbc))
            if not np.array_equal(mine, theirs)]

    def _graph(self, atoms: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cell = np.asarray(atoms.cell)
        pbc = np.asarray(atoms.pbc)
        if pbc.any() and np.linalg.matrix_rank(cell) < 3:
            raise ModelFileError("a periodic structure needs a cell with three lattice vectors")
        i, j, shift = self._neighbors(atoms.positions, cell, pbc)
        vectors = atoms.positions[j] - atoms.positions[i] + shift @ cell
        return i, j, vectors

    def _warn_close_contacts(self, vectors: np.ndarray) -> None:
        limit = self.metadata.min_distance
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
        species = self.model.species_index(atoms.get_chemical_symbols())
        i, j, vectors = self._graph(atoms)
        graph = (torch.as_tensor(vectors), torch.as_tensor(i, dtype=torch.long, device=self.device),
                 torch.as_tensor(j, dtype=torch.long, device=self.device), species, len(atoms))
        wanted = self.uncertainty or any(name in UNCERTAINTY for name in properties or [])
        out = self.model.evaluate(*graph, uncertainty=wanted and self.metadata.atom_uncertainty)
        if not (np.isfinite(out.energy) and bool(torch.isfinite(out.forces).all())):
            raise NonFiniteOutput(f"{self.model_path}: a non-finite energy or forces for these {len(atoms)} atoms "
                                  "(damaged weights, or a structure far outside the training data)")
        self._warn_close_contacts(vectors)
        results: Dict[str, Any] = {"energy": out.energy, "free_energy": out.energy,
                                   "energies": out.atom_energy.numpy(), "forces": out.forces.numpy()}
        if out.atom_uncertainty is not None:
            results["atom_uncertainty"] = out.atom_uncertainty.numpy()
        if atoms.pbc.all():
            stress = -out.virial.numpy() / atoms.get_volume()
            results["stress"] = stress.reshape(9)[[0, 4, 8, 5, 2, 1]]
        if self.is_ensemble and wanted:
            results.update(self._spread(*graph))
        self.results = results

    def _spread(self, *graph: Any) -> Dict[str, Any]:
        members = self.model.evaluate_members(*graph)
        deviation = force_deviation(members.forces).numpy()
        return {"energy_std": float(members.energies.std(unbiased=False)), "forces_std": deviation,
                "atom_uncertainty": deviation, "member_energies": members.energies.numpy(),
                "member_forces": members.forces.numpy()}
