"""Periodic boxes of a data set's molecules at a chosen density, for MD in LAMMPS (the benchmark,
the stability study's boxes, examples/lammps/run_md.py).

A base box holds copies of each molecule (its lowest-energy conformation), randomly placed and
oriented without close contacts, at a chosen mass density; larger systems replicate the base
box, so every model and size sees the same local structure.
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


# Placements (position and rotation) tried per molecule, and the closest approach (Å) to the
# atoms already placed that ends the search: intermolecular H···H contacts in molecular liquids
# are 2.2-2.5 Å.
PLACEMENT_TRIES = 300
CLEAR_GAP = 2.0


def base_box(molecules: List[Atoms], copies: int, density: float, seed: int = 0) -> Atoms:
    """`copies` of each molecule in a cubic periodic box at `density` g/cm³.

    Each molecule, in random order, takes the first of up to PLACEMENT_TRIES random positions and
    rotations that keeps it CLEAR_GAP from the atoms placed before it (periodic images included),
    else the one that keeps it farthest. (Random rotations on a lattice, as before 2026-12-02,
    left atoms of neighbouring molecules 0.3 Å apart at liquid density.)"""
    rng = np.random.default_rng(seed)
    items = [m for m in molecules for _ in range(copies)]
    order = rng.permutation(len(items))
    mass = sum(m.get_masses().sum() for m in items)
    length = (mass * AMU_PER_CM3_FROM_A3 / density) ** (1.0 / 3.0)
    symbols: List[str] = []
    placed = np.zeros((0, 3))
    for index in order:
        molecule = items[index]
        centred = molecule.positions - molecule.get_center_of_mass()
        best, best_gap = centred, -1.0
        for _ in range(PLACEMENT_TRIES):
            rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            candidate = centred @ rotation.T + rng.uniform(0.0, length, size=3)
            gap = closest_approach(candidate, placed, length)
            if gap > best_gap:
                best, best_gap = candidate, gap
            if gap >= CLEAR_GAP:
                break
        placed = np.concatenate([placed, best])
        symbols += molecule.get_chemical_symbols()
    return Atoms(symbols, positions=placed, cell=[length] * 3, pbc=True)


def closest_approach(atoms: np.ndarray, others: np.ndarray, length: float) -> float:
    """The shortest distance (Å) between `atoms` and `others` in a cubic periodic box (inf: none)."""
    if not len(others):
        return float("inf")
    difference = atoms[:, None, :] - others[None, :, :]
    difference -= length * np.round(difference / length)
    return float(np.sqrt((difference ** 2).sum(-1).min()))


def box_of_size(base: Atoms, n_atoms: int) -> Atoms:
    """The base box replicated k×k×k with k chosen so the atom count is closest to `n_atoms`."""
    k = max(1, int(round((n_atoms / len(base)) ** (1.0 / 3.0))))
    return base.repeat((k, k, k))
