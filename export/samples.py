"""Sample structures for checking an export: molecules of the model's elements and a periodic
box, built deterministically, with their graphs as the contract expects them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch


@dataclass
class SampleGraph:
    edge_vectors: torch.Tensor
    receivers: torch.Tensor
    senders: torch.Tensor
    species: torch.Tensor
    n_local: int


def graph_of(species: np.ndarray, positions: np.ndarray, cutoff: float, cell: np.ndarray | None = None
             ) -> SampleGraph:
    """The contract graph of one structure (periodic when `cell` is given); every atom local."""
    from ekd.data.neighbors import neighbor_list

    pbc = np.array([cell is not None] * 3)
    box = np.asarray(cell, dtype=np.float64) if cell is not None else np.zeros((3, 3))
    i, j, shift = neighbor_list(positions, box, pbc, cutoff)
    vectors = positions[j] - positions[i] + shift @ box
    return SampleGraph(torch.as_tensor(vectors), torch.as_tensor(i, dtype=torch.long),
                       torch.as_tensor(j, dtype=torch.long), torch.as_tensor(species, dtype=torch.long),
                       len(species))


def sample_graphs(n_species: int, cutoff: float, seed: int = 0) -> List[SampleGraph]:
    """Two molecules and a small periodic box with every species present."""
    rng = np.random.default_rng(seed)
    graphs = []
    for n_atoms in (5, 12):
        positions = _no_close_contacts(rng, n_atoms, box=3.5)
        graphs.append(graph_of(np.arange(n_atoms) % n_species, positions, cutoff))
    cell = np.diag([6.0, 6.5, 7.0])
    positions = _no_close_contacts(rng, 16, box=6.0)
    graphs.append(graph_of(rng.permutation(np.arange(16) % n_species), positions, cutoff, cell))
    return graphs


def _no_close_contacts(rng: np.random.Generator, n_atoms: int, box: float, min_distance: float = 1.0
                       ) -> np.ndarray:
    points: List[np.ndarray] = []
    while len(points) < n_atoms:
        trial = rng.uniform(0.0, box, size=3)
        if all(np.linalg.norm(trial - p) >= min_distance for p in points):
            points.append(trial)
    return np.array(points)
