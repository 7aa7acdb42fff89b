"""Per-element reference energies: E ≈ Σ_atoms ε[element], fitted by least squares.

The fit removes the large, composition-only part of the energy before training (the model
learns the small remainder) and is added back inside the model, so exported models predict
full energies. With a single composition the fit is underdetermined; numpy's minimum-norm
solution is then used and a warning says so (fix the values in the config to choose them).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import DataError
from .dataset import AtomsData


def composition_matrix(data: AtomsData, elements: list[int]) -> np.ndarray:
    """(C, n_elements) number of atoms of each element in each conformation."""
    index = element_index(data.species, elements, data.source)
    flat = data.conformation_of_atom * len(elements) + index
    counts = np.bincount(flat, minlength=len(data) * len(elements))
    return counts.reshape(len(data), len(elements)).astype(np.float64)


def element_index(species: np.ndarray, elements: list[int], source: str = "") -> np.ndarray:
    """Map atomic numbers to positions in `elements`; a clear error for unknown ones."""
    lookup = np.full(max(max(elements), int(species.max(initial=0))) + 1, -1, dtype=np.int64)
    lookup[np.asarray(elements)] = np.arange(len(elements))
    index = lookup[species]
    if np.any(index < 0):
        from ase.data import chemical_symbols

        bad = int(species[np.flatnonzero(index < 0)[0]])
        known = " ".join(chemical_symbols[z] for z in elements)
        raise DataError(f"{source}: element {chemical_symbols[bad]} (Z={bad}) is not one the model "
                        f"knows ({known})")
    return index


def fit_reference_energies(data: AtomsData, elements: list[int]) -> np.ndarray:
    """Least-squares ε (eV per element) such that Σ ε over a conformation's atoms ≈ its energy."""
    counts = composition_matrix(data, elements)
    solution, _, rank, _ = np.linalg.lstsq(counts, data.energy, rcond=None)
    if rank < len(elements):
        warnings.warn(
            f"{data.source}: only {rank} independent compositions for {len(elements)} elements; "
            "per-element reference energies are underdetermined (minimum-norm solution used). "
            "Set [references] values in the config to fix them, e.g. from isolated-atom energies.",
            stacklevel=2,
        )
    return solution


def residual_energy(data: AtomsData, elements: list[int], references: np.ndarray) -> np.ndarray:
    """Energies minus the composition part: what the network learns."""
    return data.energy - composition_matrix(data, elements) @ references
