"""The one in-memory representation of a data set: flat arrays over all atoms.

Conformations are stored back to back: atom arrays (`species`, `positions`, `forces`) have
one row per atom of every conformation, conformation arrays (`energy`, `n_atoms`, ...) one
row per conformation. Flat arrays make reading, selecting and batching vectorised numpy
work instead of Python loops over conformations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ..errors import DataError


@dataclass
class AtomsData:
    """Conformations with energies (eV), positions (Å) and optional forces (eV/Å).

    species:    (A,) atomic numbers.
    positions:  (A, 3) Å.
    n_atoms:    (C,) atoms per conformation.
    energy:     (C,) total energy, eV.
    forces:     (A, 3) eV/Å or None; rows of conformations without forces are NaN.
    cell:       (C, 3, 3) Å lattice vectors (rows) or None for molecules.
    pbc:        (C, 3) periodicity flags or None.
    group:      (C,) index into `group_names` (the molecule / formula a conformation belongs to).
    round:      (C,) the active-learning round that added each conformation (0: the original
                data; `python -m ekd.learn`), or None when the file does not say.
    source:     where the data came from (for messages and provenance).
    """

    species: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    energy: np.ndarray
    forces: Optional[np.ndarray] = None
    cell: Optional[np.ndarray] = None
    pbc: Optional[np.ndarray] = None
    group: Optional[np.ndarray] = None
    group_names: list[str] = field(default_factory=list)
    round: Optional[np.ndarray] = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.species = np.ascontiguousarray(self.species, dtype=np.int64)
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float64)
        self.n_atoms = np.ascontiguousarray(self.n_atoms, dtype=np.int64)
        self.energy = np.ascontiguousarray(self.energy, dtype=np.float64)
        if self.round is not None:
            self.round = np.ascontiguousarray(self.round, dtype=np.int64)
        if self.group is None:
            self.group = np.zeros(len(self.n_atoms), dtype=np.int64)
            self.group_names = self.group_names or ["all"]
        self._check_shapes()

    # ---- structure -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_total_atoms(self) -> int:
        return int(self.species.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """(C + 1,) index of each conformation's first atom, and the total at the end."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)])

    @property
    def conformation_of_atom(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), self.n_atoms)

    @property
    def has_forces(self) -> np.ndarray:
        """(C,) True where the conformation has finite forces on every atom."""
        if self.forces is None:
            return np.zeros(len(self), dtype=bool)
        finite_atom = np.isfinite(self.forces).all(axis=1)
        bad_per_conf = np.bincount(self.conformation_of_atom, weights=~finite_atom, minlength=len(self))
        return bad_per_conf == 0

    @property
    def is_periodic(self) -> bool:
        return self.pbc is not None and bool(np.any(self.pbc))

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present in the data."""
        return sorted(int(z) for z in np.unique(self.species))

    # ---- selection -------------------------------------------------------------------------
    def atom_indices(self, conformations: np.ndarray) -> np.ndarray:
        """Indices of the atoms of `conformations`, in order, without a Python loop."""
        conformations = np.asarray(conformations, dtype=np.int64)
        counts = self.n_atoms[conformations]
        starts = self.offsets[conformations]
        first_of_block = np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(starts, counts) + np.arange(int(counts.sum())) - first_of_block

    def subset(self, conformations: np.ndarray) -> "AtomsData":
        """A new data set with the given conformations (any order, repeats allowed)."""
        conformations = np.asarray(conformations, dtype=np.int64)
        atoms = self.atom_indices(conformations)
        return replace(
            self,
            species=self.species[atoms],
            positions=self.positions[atoms],
            n_atoms=self.n_atoms[conformations],
            energy=self.energy[conformations],
            forces=None if self.forces is None else self.forces[atoms],
            cell=None if self.cell is None else self.cell[conformations],
            pbc=None if self.pbc is None else self.pbc[conformations],
            group=self.group[conformations],
            round=None if self.round is None else self.round[conformations],
        )

    # ---- validation ------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        n_conf, n_at = len(self.n_atoms), int(self.n_atoms.sum())
        where = f"{self.source}: "
        if self.species.shape != (n_at,):
            raise DataError(f"{where}species has shape {self.species.shape}, expected ({n_at},)")
        if self.positions.shape != (n_at, 3):
            raise DataError(f"{where}positions have shape {self.positions.shape}, expected ({n_at}, 3)")
        if self.energy.shape != (n_conf,):
            raise DataError(f"{where}energy has shape {self.energy.shape}, expected ({n_conf},)")
        if self.forces is not None and self.forces.shape != (n_at, 3):
            raise DataError(f"{where}forces have shape {self.forces.shape}, expected ({n_at}, 3)")
        if self.cell is not None and self.cell.shape != (n_conf, 3, 3):
            raise DataError(f"{where}cell has shape {self.cell.shape}, expected ({n_conf}, 3, 3)")
        if self.group is not None and self.group.shape != (n_conf,):
            raise DataError(f"{where}group has shape {self.group.shape}, expected ({n_conf},)")
        if self.round is not None and self.round.shape != (n_conf,):
            raise DataError(f"{where}round has shape {self.round.shape}, expected ({n_conf},)")

    def validate(self) -> "AtomsData":
        """Refuse empty data and non-finite required values, naming the first bad conformation."""
        where = f"{self.source}: "
        if len(self) == 0:
            raise DataError(f"{where}the data set is empty (no conformations)")
        if np.any(self.n_atoms <= 0):
            bad = int(np.flatnonzero(self.n_atoms <= 0)[0])
            raise DataError(f"{where}conformation {bad} has no atoms")
        bad_e = np.flatnonzero(~np.isfinite(self.energy))
        if bad_e.size:
            raise DataError(f"{where}energy of conformation {int(bad_e[0])} is {self.energy[bad_e[0]]} "
                            f"({bad_e.size} non-finite energies in all)")
        bad_x = np.flatnonzero(~np.isfinite(self.positions).all(axis=1))
        if bad_x.size:
            conf = int(self.conformation_of_atom[bad_x[0]])
            atom = int(bad_x[0] - self.offsets[conf])
            raise DataError(f"{where}position of atom {atom} in conformation {conf} is not finite")
        if np.any(self.species <= 0) or np.any(self.species > 118):
            bad = int(np.flatnonzero((self.species <= 0) | (self.species > 118))[0])
            conf = int(self.conformation_of_atom[bad])
            raise DataError(f"{where}atom {bad - int(self.offsets[conf])} of conformation {conf} has "
                            f"atomic number {int(self.species[bad])}")
        return self


def concatenate(parts: list[AtomsData], source: str) -> AtomsData:
    """Join data sets (e.g. the groups of an HDF5 file) into one; groups of the same name merge."""
    if not parts:
        raise DataError(f"{source}: no conformations found")
    with_forces = any(p.forces is not None for p in parts)
    periodic = any(p.cell is not None for p in parts)
    names: list[str] = []   # one group per name: the same molecule in two parts stays one group
    groups = []
    for p in parts:
        for name in p.group_names:
            if name not in names:
                names.append(name)
        where = np.array([names.index(name) for name in p.group_names], dtype=np.int64)
        groups.append(where[p.group] if len(where) else p.group)

    def forces_of(p: AtomsData) -> np.ndarray:
        return p.forces if p.forces is not None else np.full((p.n_total_atoms, 3), np.nan)

    def cell_of(p: AtomsData) -> np.ndarray:
        return p.cell if p.cell is not None else np.zeros((len(p), 3, 3))

    def pbc_of(p: AtomsData) -> np.ndarray:
        return p.pbc if p.pbc is not None else np.zeros((len(p), 3), dtype=bool)

    def round_of(p: AtomsData) -> np.ndarray:  # a part that does not say is original data
        return p.round if p.round is not None else np.zeros(len(p), dtype=np.int64)

    return AtomsData(
        species=np.concatenate([p.species for p in parts]),
        positions=np.concatenate([p.positions for p in parts]),
        n_atoms=np.concatenate([p.n_atoms for p in parts]),
        energy=np.concatenate([p.energy for p in parts]),
        forces=np.concatenate([forces_of(p) for p in parts]) if with_forces else None,
        cell=np.concatenate([cell_of(p) for p in parts]) if periodic else None,
        pbc=np.concatenate([pbc_of(p) for p in parts]) if periodic else None,
        group=np.concatenate(groups),
        group_names=names,
        round=np.concatenate([round_of(p) for p in parts]) if any(p.round is not None for p in parts) else None,
        source=source,
    )
