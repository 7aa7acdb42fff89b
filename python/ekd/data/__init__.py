"""Data: readers for every supported layout, one in-memory representation (eV, Å), reference
energies, splits, neighbour pairs and batching."""

from .batching import Batch, GraphData
from .dataset import AtomsData, concatenate
from .neighbors import Pairs, neighbor_pairs
from .readers import DataSpec, ReadReport, describe, read_data
from .references import composition_matrix, element_index, fit_reference_energies, residual_energy
from .split import SplitSpec, load_split, make_split, save_split

__all__ = [
    "Batch", "GraphData", "AtomsData", "concatenate", "Pairs", "neighbor_pairs", "DataSpec", "ReadReport",
    "describe", "read_data", "composition_matrix", "element_index", "fit_reference_energies",
    "residual_energy", "SplitSpec", "load_split", "make_split", "save_split",
]
