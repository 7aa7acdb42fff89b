"""HIP-NN: the Hierarchically Interacting Particle Neural Network (Lubbers, Smith, Barros,
J. Chem. Phys. 148, 241715 (2018)), written for ekd.

    z⁰_i      = one-hot(species_i)
    z^{l}_i   = f( Σ_j Σ_ν s_ν(r_ij) W^l_ν z^{l-1}_j + U^l z^{l-1}_i + b^l )   interaction layer
    z^{l}_i   ← f( A z^{l}_i + c )  (× n_atom_layers)                          atom layers
    E^{l}_i   = w^l · z^{l}_i                                                  hierarchical energy
    E_i       = Σ_l E^{l}_i                                                    (+ reference ε_species)

The neighbour sum Σ_j s_ν(r_ij) z_j is a batched matrix product in the padded neighbour
layout (see `graph.py`), so memory is O(edges × features), never edges × sensitivities × features;
in the first layer, where z_j is a one-hot species vector, it is one scatter-add of s_ν(r_ij)
by (receiver, species of the sender).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .activation import ACTIVATIONS
from .graph import rows_per_layer
from .neighbour_sum import neighbour_sum
from .potential import Potential
from .radial import InverseGaussianSensitivity, edge_lengths


@dataclass
class HIPNNConfig:
    """HIP-NN hyperparameters. Defaults: the published ANI-1ccx teacher setting.

    n_features:       width of every interaction and atom layer.
    n_sensitivities:  number of distance sensitivities ν.
    n_interactions:   message-passing (interaction) layers; receptive field = this × cutoff.
    n_atom_layers:    fully connected layers after each interaction layer.
    cutoff:           hard cutoff (Å); the sensitivities vanish smoothly there.
    soft_min, soft_max: range (Å) of the sensitivity centres.
    activation:       silu | softplus | tanh. SiLU with residual atom layers learned forces
                      from energies alone far better than the paper's softplus without them
                      (MD17 ethanol, 600 energies: force RMSE 425 vs 580-816 meV/Å; docs/results.md).
    resnet:           residual atom layers (z ← z + f(A z + c)).
    uncertainty_head: hidden width of the per-atom uncertainty head (0: none). The head reads the
                      last layer's features, detached, so it learns the teachers' force spread
                      without changing anything the energy and forces learn (`UncertaintyHead`).
    """

    n_features: int = 128
    n_sensitivities: int = 20
    n_interactions: int = 2
    n_atom_layers: int = 3
    cutoff: float = 6.5
    soft_min: float = 0.75
    soft_max: float = 5.5
    activation: str = "silu"
    resnet: bool = True
    uncertainty_head: int = 0

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")
        for name in ("n_features", "n_sensitivities", "n_interactions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_atom_layers < 0:
            raise ValueError(f"n_atom_layers must be >= 0, got {self.n_atom_layers}")
        if self.uncertainty_head < 0:
            raise ValueError(f"uncertainty_head must be >= 0 (0: no head), got {self.uncertainty_head}")


BLOCK_ROWS = 1024  # rows per block of the padded layout (a block's tensors stay in cache)


class InteractionLayer(nn.Module):
    """z_i ← f( Σ_ν W_ν e_iν + U z_i + b ) with the environment e_iν = Σ_j s_ν(r_ij) z_j."""

    def __init__(self, n_in: int, n_out: int, n_sensitivities: int, activation: nn.Module) -> None:
        super().__init__()
        self.n_in, self.n_sensitivities = n_in, n_sensitivities
        self.interaction = nn.Linear(n_sensitivities * n_in, n_out, bias=False)
        self.self_interaction = nn.Linear(n_in, n_out)
        self.activation = activation
        # Each Σ_j s_ν z_j adds up ~degree terms: scale the initial weights down accordingly.
        with torch.no_grad():
            self.interaction.weight.mul_(0.5)

    def forward(self, z: torch.Tensor, environment: torch.Tensor, position: Optional[torch.Tensor]) -> torch.Tensor:
        """New features of nodes [0, R) from their environment (R, ν, F_in), whose row of node i
        is position[i] (None: i)."""
        n_out = environment.shape[0]
        message = self.interaction(environment.reshape(n_out, self.n_sensitivities * self.n_in))
        if position is not None:
            message = message.index_select(0, position)
        return self.activation(message + self.self_interaction(z[:n_out]))


class AtomLayer(nn.Module):
    def __init__(self, n_features: int, activation: nn.Module, resnet: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_features)
        self.activation = activation
        self.resnet = resnet

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(z))
        return z + out if self.resnet else out


class HIPNNBlock(nn.Module):
    """One hierarchy level: an interaction layer, its atom layers and its energy head."""

    def __init__(self, n_in: int, config: HIPNNConfig) -> None:
        super().__init__()
        width, act = config.n_features, ACTIVATIONS[config.activation]
        self.interaction = InteractionLayer(n_in, width, config.n_sensitivities, act())
        self.atom_layers = nn.Sequential(*[AtomLayer(width, act(), config.resnet)
                                           for _ in range(config.n_atom_layers)])
        self.energy_head = nn.Linear(width, 1)
        with torch.no_grad():
            self.energy_head.weight.mul_(0.1)
            self.energy_head.bias.zero_()

    def forward(self, z: torch.Tensor, environment: torch.Tensor,
                position: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.atom_layers(self.interaction(z, environment, position))
        return z, self.energy_head(z).squeeze(-1)


class UncertaintyHead(nn.Module):
    """u_i = s · softplus(B f(A z_i + a) + b) > 0 (eV/Å): a per-atom uncertainty read from the
    last layer's features z_i. The features are detached: the head's loss trains only the head,
    so a student with a head learns exactly the energies and forces it learns without one (its
    parameters are also created after every other, leaving their initial values unchanged).
    s, the calibration scale, is 1 in training and set afterwards from validation errors."""

    def __init__(self, n_features: int, hidden: int, activation: nn.Module) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.activation = activation
        self.out = nn.Linear(hidden, 1)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = nn.functional.softplus(self.out(self.activation(self.hidden(z.detach())))).squeeze(-1)
        return raw * self.scale


class HIPNN(Potential):
    """HIP-NN energy model; `forward` returns the hierarchical per-atom energy terms (N, 1 + L)."""

    def __init__(self, elements: List[int], config: HIPNNConfig) -> None:
        config.check()
        super().__init__("hipnn", elements, config.cutoff, config.n_interactions)
        self.config = config
        self.lengths = edge_lengths()  # fused (ekd's operators) or stock; no parameters
        self.sensitivity = InverseGaussianSensitivity(config.n_sensitivities, config.soft_min,
                                                      config.soft_max, config.cutoff)
        self.species_energy = nn.Linear(len(elements), 1, bias=False)
        nn.init.zeros_(self.species_energy.weight)
        widths = [len(elements)] + [config.n_features] * config.n_interactions
        self.blocks = nn.ModuleList([HIPNNBlock(n_in, config) for n_in in widths[:-1]])
        self.block_rows = BLOCK_ROWS  # of the padded layout, where the fused operators are not used
        self.neighbour_sum = neighbour_sum()  # fused (ekd's operators) or padded; no parameters
        # last, so that the other parameters draw the same initial values with or without it
        self.has_uncertainty = config.uncertainty_head > 0
        self.uncertainty_head = (UncertaintyHead(config.n_features, config.uncertainty_head, ACTIVATIONS[config.activation]())
                                 if self.has_uncertainty else nn.Identity())

    def hyperparameters(self) -> Dict[str, Any]:
        return asdict(self.config)

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_energy: int = -1) -> torch.Tensor:
        return self.terms_and_features(edge_vectors, receivers, senders, species, n_energy)[0]

    def forward_with_uncertainty(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                                 species: torch.Tensor, n_energy: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, terms) energy terms and the uncertainty of the nodes whose energy counts (eV/Å)."""
        terms, z = self.terms_and_features(edge_vectors, receivers, senders, species, n_energy)
        return terms, self.atom_uncertainty(z)

    def atom_uncertainty(self, z: torch.Tensor) -> torch.Tensor:
        """The head's per-atom uncertainty from the last layer's features (eV/Å)."""
        if not self.has_uncertainty:
            raise RuntimeError("this HIP-NN has no uncertainty head (uncertainty_head = 0)")
        return self.uncertainty_head(z)

    def terms_and_features(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                           species: torch.Tensor, n_energy: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, terms) energy terms, and the last layer's features of the nodes it computes."""
        n_nodes = species.shape[0]
        z = self.initial_features(species, edge_vectors.dtype)
        r = self.lengths(edge_vectors)
        terms = [self.species_energy(z).squeeze(-1) + self.core_repulsion(r, receivers, senders, species, n_nodes)]
        # only nodes [0, rows[t]) are read later (all of them but on several MPI ranks)
        rows = rows_per_layer(receivers, senders, n_nodes, len(self.blocks), n_energy)
        sensitivity = self.sensitivity(r)  # (E, ν)
        environment = self.first_environment(sensitivity, receivers, senders, species, rows[0], n_nodes)
        position: Optional[torch.Tensor] = None
        # later layers: the neighbour layout of the nodes they compute (`neighbour_sum.py`), built
        # at the second layer and again only for a layer that computes fewer nodes or reads fewer
        built_for = (-1, -1)
        layout: List[torch.Tensor] = []
        for t, block in enumerate(self.blocks):
            if t > 0:
                if (rows[t], z.shape[0]) != built_for:
                    layout = self.neighbour_sum.layout(sensitivity, receivers, senders, rows[t], n_nodes, z.shape[0],
                                                       self.block_rows)
                    built_for = (rows[t], z.shape[0])
                environment, position = self.neighbour_sum.environment(z, layout)
            z, energy = block(z, environment, position)
            if rows[t] < n_nodes:  # no copy in training and on one rank, where every row is computed
                energy = torch.cat([energy, energy.new_zeros(n_nodes - rows[t])])
            terms.append(energy)
        return torch.stack(terms, dim=1), z

    def initial_features(self, species: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """z⁰: one-hot species."""
        return nn.functional.one_hot(species, self.n_species).to(dtype)

    def first_environment(self, sensitivity: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                          species: torch.Tensor, n_rows: int, n_receivers: int) -> torch.Tensor:
        """Σ_j s_ν(r_ij) z⁰_j of nodes [0, n_rows) as (n_rows, ν, species), the receivers in [0,
        n_receivers); z⁰_j is one-hot (`neighbour_sum.py`)."""
        return self.neighbour_sum.species_environment(sensitivity, receivers, senders, species, self.n_species, n_rows,
                                                      n_receivers)

    def exchange_features(self) -> List[int]:
        """Widths of z¹ … z^{L-1}: what `layer` evaluation passes between MPI ranks."""
        return [self.config.n_features for _ in range(len(self.blocks) - 1)]

    def edge_features(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """(E, ν) distance sensitivities of the edges, what `layer` reads of them (and the edge
        lengths as a last column for the core repulsion, when it is on)."""
        return self.with_distances(*self.network_edge_features(edge_vectors))

    def network_edge_features(self, edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (E, ν) sensitivities and (E,) lengths of the edges, apart."""
        r = self.lengths(edge_vectors)
        return self.sensitivity(r), r

    def layer(self, t: int, z: torch.Tensor, sensitivity: torch.Tensor, receivers: torch.Tensor,
              senders: torch.Tensor, species: torch.Tensor, n_rows: int,
              distances: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hierarchy level t alone, for nodes [0, n_rows) (every edge's receiver is one of them):
        their features z^{t+1} and energy terms, from the features z^t of every node (ignored for
        t = 0, where z⁰ is one-hot species and the species term is included) and the edges'
        `edge_features` (or the sensitivities of `network_edge_features` with the edge lengths as
        `distances`). Chaining the levels, with z^t of other ranks' atoms exchanged in between,
        gives `forward`'s energies; the pair style does so on several MPI ranks instead of
        recomputing a deep ghost shell."""
        position: Optional[torch.Tensor] = None
        sensitivity, r = self.split_distances(sensitivity, distances)
        # every receiver is one of nodes [0, n_rows): no edge needs dropping
        if t == 0:
            z = self.initial_features(species, sensitivity.dtype)
            environment = self.first_environment(sensitivity, receivers, senders, species, n_rows, n_rows)
        else:
            layout = self.neighbour_sum.layout(sensitivity, receivers, senders, n_rows, n_rows, z.shape[0],
                                               self.block_rows)
            environment, position = self.neighbour_sum.environment(z, layout)
        z_next, energy = z[:n_rows], z.new_zeros(n_rows)
        for k, block in enumerate(self.blocks):  # TorchScript indexes a ModuleList by constants only
            if k == t:
                z_next, energy = block(z, environment, position)
        if t == 0:
            energy = (energy + self.species_energy(z[:n_rows]).squeeze(-1)
                      + self.core_repulsion(r, receivers, senders, species, n_rows))
        return z_next, energy
