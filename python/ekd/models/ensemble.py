"""An ensemble of potentials as one module: the mean energy, and every member's energies."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from .potential import Potential


class Ensemble(Potential):
    """Mean of its members. Members must know the same elements; the ensemble's cutoff and
    depth are the largest of its members' (a member ignores edges beyond its own cutoff)."""

    def __init__(self, members: List[Potential]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        elements = members[0].elements
        for i, m in enumerate(members):
            if m.elements != elements:
                raise ValueError(f"ensemble member {i} knows elements {m.elements}, member 0 knows {elements}")
        super().__init__("ensemble", elements, max(m.cutoff for m in members),
                         max(m.num_interactions for m in members))
        self.members = nn.ModuleList(members)
        n = float(len(members))
        self.reference_energies = [sum(m.reference_energies[k] for m in members) / n
                                   for k in range(len(elements))]

    def hyperparameters(self) -> Dict[str, Any]:
        return {"members": [{"kind": m.kind, **m.hyperparameters()} for m in self.members]}

    def member_energies(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                        species: torch.Tensor, n_energy: int = -1) -> torch.Tensor:
        """(M, N) network energy of every atom under every member."""
        out: List[torch.Tensor] = []
        for member in self.members:
            out.append(member(edge_vectors, receivers, senders, species, n_energy).sum(dim=1))
        return torch.stack(out, dim=0)

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_energy: int = -1) -> torch.Tensor:
        return self.member_energies(edge_vectors, receivers, senders, species, n_energy).mean(dim=0).unsqueeze(1)
