"""The failure criterion of a trajectory, checked step by step (docs/stability.md):

1. a non-finite energy or position;
2. the potential energy changing by more than `energy_jump` eV per atom in one step;
3. a covalent bond broken: pairs closer than `bond_factor` × the sum of their covalent radii at
   the start are bonds; a bond longer than `stretch_factor` × its initial length has broken,
   and one shorter than its initial length / `stretch_factor` has collapsed (an atom fallen
   into its neighbour, where a model has learnt no repulsion);
4. an atom flown off: farther than `isolation` Å from every other atom.

The time of the first failing step is the time to failure; a trajectory that survives is
censored at the run length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from ..errors import EkdError


@dataclass(frozen=True)
class FailureCriterion:
    """When a trajectory has failed (see the module docstring); lengths in Å, energies in eV."""

    bond_factor: float = 1.2
    stretch_factor: float = 1.6
    isolation: float = 4.0
    energy_jump: float = 0.1

    def check(self) -> "FailureCriterion":
        for name in ("bond_factor", "stretch_factor", "isolation", "energy_jump"):
            if not getattr(self, name) > 0:
                raise EkdError(f"failure criterion: {name} must be positive, got {getattr(self, name)}")
        return self


@dataclass
class Bonds:
    """Covalent bonds at the start: atom pairs (first < second) and their initial lengths (Å)."""

    first: np.ndarray
    second: np.ndarray
    length: np.ndarray


@dataclass
class Failure:
    """The first failing step of a trajectory and why."""

    step: int
    reason: str


def _differences(positions: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """(N, N, 3) x_j − x_i, by the minimum image in an orthorhombic `box` (edge lengths) if given."""
    d = positions[None] - positions[:, None]
    return d if box is None else d - box * np.round(d / box)


def covalent_bonds(species: np.ndarray, positions: np.ndarray, factor: float = 1.2,
                   box: Optional[np.ndarray] = None) -> Bonds:
    """Pairs closer than `factor` × the sum of their covalent radii."""
    from ase.data import covalent_radii

    species = np.asarray(species)
    positions = np.asarray(positions, dtype=np.float64)
    radii = covalent_radii[species]
    distance = np.linalg.norm(_differences(positions, box), axis=-1)
    i, j = np.nonzero(np.triu(distance < factor * (radii[:, None] + radii[None]), k=1))
    return Bonds(i, j, distance[i, j])


def _label(species: np.ndarray, atom: int) -> str:
    from ase.data import chemical_symbols

    return f"{chemical_symbols[int(species[atom])]}{atom}"


def energy_failure(energy: float, previous_energy: Optional[float], n_atoms: int,
                   criterion: FailureCriterion) -> Optional[str]:
    """Criteria 1 and 2: a non-finite energy, or too large a change since the previous step."""
    if not math.isfinite(energy):
        return f"energy is {energy}"
    if previous_energy is not None and abs(energy - previous_energy) / n_atoms > criterion.energy_jump:
        return (f"energy changed by {(energy - previous_energy) / n_atoms:+.3g} eV/atom in one step "
                f"(limit {criterion.energy_jump} eV/atom)")
    return None


def structure_failure(positions: np.ndarray, bonds: Bonds, species: np.ndarray, criterion: FailureCriterion,
                      box: Optional[np.ndarray] = None) -> Optional[str]:
    """Criteria 1, 3 and 4: non-finite positions, a broken bond, an atom flown off (distances
    by the minimum image when `box` gives the edges of an orthorhombic periodic cell)."""
    positions = np.asarray(positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        return "positions are not finite"
    n = len(species)
    if len(bonds.length):
        vectors = positions[bonds.second] - positions[bonds.first]
        if box is not None:
            vectors = vectors - box * np.round(vectors / box)
        current = np.linalg.norm(vectors, axis=1)
        ratio = current / bonds.length
        worst = int(np.argmax(ratio))
        if ratio[worst] > criterion.stretch_factor:
            a, b = int(bonds.first[worst]), int(bonds.second[worst])
            return (f"bond {_label(species, a)}-{_label(species, b)} stretched to {current[worst]:.2f} Å, "
                    f"{ratio[worst]:.2f} x its initial {bonds.length[worst]:.2f} Å")
        shortest = int(np.argmin(ratio))
        if ratio[shortest] < 1.0 / criterion.stretch_factor:
            a, b = int(bonds.first[shortest]), int(bonds.second[shortest])
            return (f"bond {_label(species, a)}-{_label(species, b)} collapsed to {current[shortest]:.2f} Å, "
                    f"{ratio[shortest]:.2f} x its initial {bonds.length[shortest]:.2f} Å")
    if n > 1:
        distance = np.linalg.norm(_differences(positions, box), axis=-1)
        np.fill_diagonal(distance, np.inf)
        nearest = distance.min(axis=1)
        worst = int(np.argmax(nearest))
        if nearest[worst] > criterion.isolation:
            return (f"atom {_label(species, worst)} is {nearest[worst]:.2f} Å from every other atom "
                    f"(limit {criterion.isolation} Å)")
    return None


def frame_failure(positions: np.ndarray, energy: float, previous_energy: Optional[float], bonds: Bonds,
                  species: np.ndarray, criterion: FailureCriterion,
                  box: Optional[np.ndarray] = None) -> Optional[str]:
    """Why this frame counts as failed (None if it does not): one step of the criterion."""
    return (energy_failure(energy, previous_energy, len(species), criterion)
            or structure_failure(positions, bonds, species, criterion, box))


def first_failure(positions: np.ndarray, energies: np.ndarray, species: np.ndarray,
                  criterion: FailureCriterion = FailureCriterion()) -> Optional[Failure]:
    """The first failing step of a whole trajectory (positions (T, N, 3) Å, energies (T,) eV),
    with bonds taken from step 0; None if every step passes."""
    positions = np.asarray(positions, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    bonds = covalent_bonds(species, positions[0], criterion.bond_factor)
    previous: Optional[float] = None
    for step, (frame, energy) in enumerate(zip(positions, energies)):
        reason = frame_failure(frame, float(energy), previous, bonds, species, criterion)
        if reason is not None:
            return Failure(step, reason)
        previous = float(energy)
    return None


def sampled_failure(energies: Dict[int, float], frames: Dict[int, np.ndarray], species: np.ndarray,
                    criterion: FailureCriterion, box: Optional[np.ndarray]) -> Optional[Failure]:
    """The criterion on a run with energies at every step and positions at some steps; bonds
    from the first frame."""
    failure: Optional[Failure] = None
    previous: Optional[float] = None
    for step in sorted(energies):
        reason = energy_failure(energies[step], previous, len(species), criterion)
        if reason:
            failure = Failure(step, reason)
            break
        previous = energies[step]
    if frames:
        first = min(frames)
        bonds = covalent_bonds(species, frames[first], criterion.bond_factor, box)
        for step in sorted(frames):
            if failure is not None and step >= failure.step:
                break
            reason = structure_failure(frames[step], bonds, species, criterion, box)
            if reason:
                failure = Failure(step, reason)
                break
    return failure
