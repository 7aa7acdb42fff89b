"""Where the training data end: the shortest distance of each pair of elements in the training
conformations, recorded in the checkpoint (deployed models warn below the overall shortest) and
made into the onsets of the models' core repulsion (`ekd.models.repulsion`), a little below them."""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from ase.data import covalent_radii

from ..data import GraphData
from ..models import edge_vectors

# The onset sits this fraction below the data's shortest distance: molecules vibrating a little
# beyond the data's extremes meet the network, not the wall (at the shortest distance itself the
# wall made 300 K NVE fluctuate 5-10x more in the tests); a collapse still goes through it (O–H:
# the embedded data's shortest 0.86 Å, onset 0.73 Å, full repulsion below 0.51 Å).
ONSET_FRACTION = 0.85
# A pair of elements the training data never bring within the cutoff gets its onset from the
# elements' covalent radii: this fraction of their sum (O–H: 0.73 Å).
ABSENT_PAIR_FRACTION = 0.75
CHUNK = 4096  # conformations per batch while measuring


def shortest_pair_distances(graph: GraphData, ids: np.ndarray, n_species: int) -> np.ndarray:
    """(species, species) shortest distances (Å) between atoms of each pair of species (indices
    into the model's elements) among the conformations `ids`, symmetric; inf for a pair never
    within the graph's cutoff."""
    shortest = torch.full((n_species * n_species,), np.inf, dtype=torch.float64)
    for start in range(0, len(ids), CHUNK):
        batch = graph.batch(ids[start:start + CHUNK])
        if not batch.receivers.numel():
            continue
        r = torch.linalg.vector_norm(edge_vectors(batch.positions, batch.receivers, batch.senders, batch.shifts),
                                     dim=-1).to(torch.float64).cpu()
        pair = (batch.species[batch.receivers] * n_species + batch.species[batch.senders]).cpu()
        shortest = shortest.scatter_reduce(0, pair, r, reduce="amin")
    table = shortest.view(n_species, n_species)
    return torch.minimum(table, table.T).numpy()


def repulsion_onsets(shortest: np.ndarray, elements: List[int]) -> List[List[float]]:
    """Core-repulsion onsets (Å) per pair of species: ONSET_FRACTION of the data's shortest
    distance, or for a pair the data lack, ABSENT_PAIR_FRACTION of the sum of covalent radii."""
    radii = np.array([covalent_radii[z] for z in elements])
    fallback = ABSENT_PAIR_FRACTION * (radii[:, None] + radii[None, :])
    return np.where(np.isfinite(shortest), ONSET_FRACTION * shortest, fallback).tolist()
