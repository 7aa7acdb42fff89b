"""The interface every ekd model implements, and evaluation of energies and forces on a batch.

A `Potential` maps a graph (edge vectors, receivers, senders, species) to per-atom energy
terms of shape (N, T) in the model dtype, *without* the per-element reference energies: the
network learns the small remainder left after the composition fit, which keeps float32
training precise. The terms sum to the atom's network energy (HIP-NN uses T = 1 + layers for
its hierarchical energies; other models T = 1). Reference energies (eV, float64) travel with
the model and are added in float64 wherever full energies are needed. A model may also carry a
repulsive floor below its training data's shortest distances (`repulsion.py`), part of its
first energy term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .graph import scatter_sum
from .repulsion import CoreRepulsion


class Potential(nn.Module):
    """Base class: element list, cutoff, number of message-passing layers, reference energies."""

    def __init__(self, kind: str, elements: List[int], cutoff: float, num_interactions: int) -> None:
        super().__init__()
        self.kind = kind
        self.elements: List[int] = list(elements)
        self.n_species = len(elements)
        self.cutoff = float(cutoff)
        self.num_interactions = int(num_interactions)
        self.reference_energies: List[float] = [0.0] * len(elements)
        self.core_repulsion = CoreRepulsion(list(elements))  # off until given onsets (`repulsion.py`)

    def hyperparameters(self) -> Dict[str, Any]:  # pragma: no cover - every model overrides
        raise NotImplementedError

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_energy: int = -1) -> torch.Tensor:  # pragma: no cover
        """(N, terms) per-atom energy terms. Only nodes [0, n_energy) need theirs (-1: every node):
        a model may then skip work for the other nodes, whose later terms are 0 (`graph.rows_per_layer`).
        Those are the pair style's ghost atoms on several MPI ranks: their energies count elsewhere."""
        raise NotImplementedError

    def with_distances(self, features: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """A layer-by-layer model's `edge_features` for the pair style (CONTRACT.md §2b): the
        network's edge features, with the edge lengths as a last column when the core repulsion
        is on (layer 0 reads them there)."""
        return torch.cat([features, r.unsqueeze(1)], dim=1) if self.core_repulsion.enabled else features

    def split_distances(self, features: torch.Tensor, distances: Optional[torch.Tensor]
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the network's edge features, the edge lengths) for `layer`: from `edge_features`
        (distances None) or from the network's features and the lengths given apart (the
        deployed file's blocks, which so copy no table)."""
        if distances is not None:
            return features, distances
        if self.core_repulsion.enabled:
            return features[:, :-1].contiguous(), features[:, -1]
        return features, features.new_zeros(0)

    def reference_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.reference_energies, dtype=torch.float64, device=device)


@dataclass
class Prediction:
    """Network (residual) energies per conformation and atom, forces, and the energy terms."""

    energy: torch.Tensor
    atom_energy: torch.Tensor
    forces: Optional[torch.Tensor]
    terms: torch.Tensor
    uncertainty: Optional[torch.Tensor] = None   # per atom (eV/Å), from a model's uncertainty head


def edge_vectors(positions: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                 shifts: Optional[torch.Tensor]) -> torch.Tensor:
    """x(sender image) − x(receiver)."""
    # index_select, not [ ]: its backward is an index_add, not an accumulating index_put (a training
    # step of the demo student differentiates this three times; 129 → 89 µs forward and backward)
    vectors = positions.index_select(0, senders) - positions.index_select(0, receivers)
    return vectors if shifts is None else vectors + shifts


def has_uncertainty(model: nn.Module) -> bool:
    """Whether a model has its own per-atom uncertainty output (a HIP-NN uncertainty head)."""
    return bool(getattr(model, "has_uncertainty", False))


class WithUncertainty(nn.Module):
    """A model whose `forward` is its `forward_with_uncertainty`, for wrappers that hook
    `forward` only (DistributedDataParallel); `predict` takes its (terms, uncertainty) output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_uncertainty(edge_vectors, receivers, senders, species)


def predict(model: nn.Module, batch: Any, forces: bool = True, create_graph: bool = False,
            uncertainty: bool = False) -> Prediction:
    """Energies (without references) and forces −dE/dR of a `ekd.data.Batch`, and the per-atom
    uncertainty of a model that has one when `uncertainty` is set.

    create_graph=True keeps the graph of the forces, as training on forces needs.
    """
    positions = batch.positions.detach().requires_grad_(forces)
    vectors = edge_vectors(positions, batch.receivers, batch.senders, batch.shifts)
    if uncertainty and has_uncertainty(model):
        output = model.forward_with_uncertainty(vectors, batch.receivers, batch.senders, batch.species)
    else:
        output = model(vectors, batch.receivers, batch.senders, batch.species)
    terms, atom_uncertainty = output if isinstance(output, tuple) else (output, None)
    atom_energy = terms.sum(dim=1)
    energy = scatter_sum(atom_energy, batch.conformation, batch.n_conformations)
    force = None
    if forces:
        (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
        force = -gradient
    return Prediction(energy=energy, atom_energy=atom_energy, forces=force, terms=terms, uncertainty=atom_uncertainty)
