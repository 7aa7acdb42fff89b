"""Periodic boxes of a data set's molecules at a chosen density, for MD in LAMMPS (the benchmark,
the stability study's boxes, examples/lammps/run_md.py).

A base box holds one copy of each molecule (its lowest-energy conformation) per lattice site,
randomly oriented, at a chosen mass density; larger systems replicate the base box, so every
model and size sees the same local structure.
"""

from __future__ import annotations

from typing import List

import numpy as np
from ase import Atoms

from ..data import AtomsData

AMU_PER_CM3_FROM_A3 = 1.66053906660  # 1 amu / Å³ = 1.6605 g/cm³


def representative_molecules(data: AtomsData) -> List[Atoms]:
    """The lowest-energy conformation of every molecule (group) in the data."""
    molecules = []
    offsets = data.offsets
    for g in range(len(data.group_names)):
        members = np.flatnonzero(data.group == g)
        if not len(members):
            continue
        best = members[np.argmin(data.energy[members] / data.n_atoms[members])]
        sl = slice(offsets[best], offsets[best + 1])
        molecules.append(Atoms(numbers=data.species[sl], positions=data.positions[sl]))
    return molecules


def base_box(molecules: List[Atoms], copies: int, density: float, seed: int = 0) -> Atoms:
    """`copies` of each molecule on a cubic lattice at `density` g/cm³, randomly rotated."""
    rng = np.random.default_rng(seed)
    items = [m for m in molecules for _ in range(copies)]
    order = rng.permutation(len(items))
    mass = sum(m.get_masses().sum() for m in items)
    length = (mass * AMU_PER_CM3_FROM_A3 / density) ** (1.0 / 3.0)
    per_side = int(np.ceil(len(items) ** (1.0 / 3.0)))
    spacing = length / per_side
    symbols, positions = [], []
    for slot, index in zip(np.ndindex(per_side, per_side, per_side), order):
        molecule = items[index]
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        centred = molecule.positions - molecule.get_center_of_mass()
        positions.append(centred @ rotation.T + (np.array(slot) + 0.5) * spacing)
        symbols += molecule.get_chemical_symbols()
    return Atoms(symbols, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


def box_of_size(base: Atoms, n_atoms: int) -> Atoms:
    """The base box replicated k×k×k with k chosen so the atom count is closest to `n_atoms`."""
    k = max(1, int(round((n_atoms / len(base)) ** (1.0 / 3.0))))
    return base.repeat((k, k, k))
