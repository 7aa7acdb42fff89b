"""The deployed module: a trained model wrapped to the contract's call signature (CONTRACT.md §2)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ekd.models import Ensemble, Potential
from ekd.models.graph import rows_per_layer
from ekd.models.potential import has_uncertainty

from .blocks import BLOCK_EDGES, WHOLE_EDGES, receiver_order, row_blocks, subgraph


class DeployedPotential(nn.Module):
    """forward(edge_vectors, receivers, senders, species, n_local) -> (energy, atom_energy, edge_grad).

    The network runs in the model dtype; reference energies are added in float64 so total
    energies of large systems keep their precision in float32 models too.
    """

    def __init__(self, model: Potential) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("reference", torch.tensor(model.reference_energies, dtype=torch.float64))

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.whole(edge_vectors, receivers, senders, species, n_local)

    def whole(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
              species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward's outputs from one evaluation of the whole graph (autograd keeps every table)."""
        vectors = edge_vectors.detach().requires_grad_(True)
        terms = self.model(vectors, receivers, senders, species, n_local)
        return self.energies_and_gradient(terms, vectors, species, n_local)

    def energies_and_gradient(self, terms: torch.Tensor, vectors: torch.Tensor, species: torch.Tensor,
                              n_local: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(energy of the local atoms, atom energies with references in float64, edge_grad) from
        the network's energy terms of the graph whose edge vectors are `vectors`."""
        network = terms.sum(dim=1)
        edge_grad = _gradient(network[:n_local].sum(), vectors)
        atom_energy = network.detach().to(torch.float64) + self.reference[species]
        return atom_energy[:n_local].sum(), atom_energy, edge_grad


class DeployedEnsemble(DeployedPotential):
    """An ensemble: `forward` gives the mean; `members` gives every member's energy and edge gradients."""

    def __init__(self, model: Ensemble) -> None:
        super().__init__(model)
        # A float64 buffer, not torch.tensor(list) inside TorchScript, which rounds to float32.
        self.register_buffer("member_reference", torch.tensor(
            [m.reference_energies for m in model.members], dtype=torch.float64))

    @torch.jit.export
    def members(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M,) total energies of the local atoms and (M, E, 3) edge gradients, one row per member."""
        energies: List[torch.Tensor] = []
        grads: List[torch.Tensor] = []
        for k, member in enumerate(self.model.members):
            vectors = edge_vectors.detach().requires_grad_(True)
            network = member(vectors, receivers, senders, species, n_local).sum(dim=1)
            local = network[:n_local].sum()
            grads.append(_gradient(local, vectors))
            energies.append(local.detach().to(torch.float64) + self.member_reference[k][species[:n_local]].sum())
        return torch.stack(energies), torch.stack(grads)


class DeployedLayers(DeployedPotential):
    """A model that can also be evaluated one message-passing layer at a time (CONTRACT.md §2b):
    on several MPI ranks the pair style exchanges the layers' features between ranks instead of
    recomputing them for a ghost shell of `receptive_field`. The same layers evaluate graphs of
    more than `whole_edges` edges in blocks of about `block_edges` (`blocks.py`, CONTRACT.md §2d),
    so their memory grows with the atoms, not with every edge table autograd would keep; readers
    may set `whole_edges` (0: always in blocks)."""

    def __init__(self, model: Potential, whole_edges: int = WHOLE_EDGES, block_edges: int = BLOCK_EDGES) -> None:
        super().__init__(model)
        self.whole_edges = int(whole_edges)
        self.block_edges = int(block_edges)
        self.n_layers = int(model.num_interactions)

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if edge_vectors.shape[0] <= self.whole_edges:
            return self.whole(edge_vectors, receivers, senders, species, n_local)
        energy, atom_energy, edge_grad, _ = self.in_blocks(edge_vectors, receivers, senders, species, n_local,
                                                           self.block_edges)
        return energy, atom_energy, edge_grad

    @torch.jit.export
    def edge_features(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """What the layers read of the edges (HIP-NN: distance sensitivities), computed once per step."""
        return self.model.edge_features(edge_vectors)

    @torch.jit.export
    def layer(self, t: int, z: torch.Tensor, edge_features: torch.Tensor, receivers: torch.Tensor,
              senders: torch.Tensor, species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features z^{t+1} of nodes [0, n_local), their layer-t energy terms in float64, reference
        energies included in layer 0); differentiable in `z` and `edge_features`."""
        return self.layer_apart(t, z, edge_features, receivers, senders, species, n_local, None)

    @torch.jit.export
    def edge_features_apart(self, edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`edge_features` as two tables, the network's (E, K') and the edge lengths (E,), for
        `layer_apart`: no (E, K' + 1) table to assemble and split again in every layer."""
        return self.model.network_edge_features(edge_vectors)

    @torch.jit.export
    def layer_apart(self, t: int, z: torch.Tensor, features: torch.Tensor, receivers: torch.Tensor,
                    senders: torch.Tensor, species: torch.Tensor, n_local: int, distances: Optional[torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`layer`, given the network's edge features and the edge lengths apart, as
        `edge_features_apart` gives them (distances None: `features` as `edge_features` gives
        them). On several ranks a step so spends no time copying edge tables (CONTRACT.md §2b)."""
        z_next, energy = self.model.layer(t, z, features, receivers, senders, species, n_local, distances)
        energy = energy.to(torch.float64)
        if t == 0:
            energy = energy + self.reference[species[:n_local]]
        return z_next, energy

    @torch.jit.export
    def layer_values(self, t: int, z: torch.Tensor, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                     senders: torch.Tensor, species: torch.Tensor, n_rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """`layer` of nodes [0, n_rows) without gradients, from the edge vectors of the edges into
        them (receivers grouped in ascending order; edges into later nodes are ignored), in
        blocks: (z^{t+1}, energy) as `layer` gives them."""
        return self.values_in_blocks(t, z, edge_vectors, receivers, senders, species, n_rows, self.block_edges)

    @torch.jit.export
    def layer_gradients(self, t: int, z: torch.Tensor, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                        senders: torch.Tensor, species: torch.Tensor, n_rows: int, z_next_grad: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`layer` of nodes [0, n_rows) recomputed in blocks and differentiated at once:
        (z^{t+1}, energy, d/d edge_vectors and d/d z of Σ energy + <z^{t+1}, z_next_grad>);
        z_next_grad has no columns for the last layer."""
        return self.gradients_in_blocks(t, z, edge_vectors, receivers, senders, species, n_rows, z_next_grad,
                                        n_rows, self.block_edges, torch.zeros_like(edge_vectors))

    def values_in_blocks(self, t: int, z: torch.Tensor, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                         senders: torch.Tensor, species: torch.Tensor, n_rows: int, block_edges: int
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        features: List[torch.Tensor] = []
        energies: List[torch.Tensor] = []
        node_of = torch.empty_like(species)
        with torch.no_grad():
            for first, last, e_first, e_last in row_blocks(receivers, species.shape[0], n_rows, block_edges):
                nodes, block_receivers, block_senders = subgraph(receivers[e_first:e_last], senders[e_first:e_last],
                                                                 first, last, node_of)
                edge_part, lengths = self.model.network_edge_features(edge_vectors[e_first:e_last])
                z_next, energy = self.layer_apart(t, z.detach()[nodes], edge_part, block_receivers, block_senders,
                                                  species[nodes], last - first, lengths)
                features.append(z_next)
                energies.append(energy)
        return torch.cat(features), torch.cat(energies)

    def gradients_in_blocks(self, t: int, z: torch.Tensor, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                            senders: torch.Tensor, species: torch.Tensor, n_rows: int, z_next_grad: torch.Tensor,
                            n_energy: int, block_edges: int, edge_grad: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """layer_gradients, where only the energies of nodes [0, n_energy) count, its edge
        gradients added to `edge_grad` (one table for every layer: 12-24 bytes per edge less)."""
        features: List[torch.Tensor] = []
        energies: List[torch.Tensor] = []
        z_grad = torch.zeros_like(z)
        node_of = torch.empty_like(species)
        for first, last, e_first, e_last in row_blocks(receivers, species.shape[0], n_rows, block_edges):
            nodes, block_receivers, block_senders = subgraph(receivers[e_first:e_last], senders[e_first:e_last],
                                                             first, last, node_of)
            block_vectors = edge_vectors[e_first:e_last].detach().requires_grad_(True)
            block_z = z.detach()[nodes].requires_grad_(t > 0)
            edge_part, lengths = self.model.network_edge_features(block_vectors)
            z_next, energy = self.layer_apart(t, block_z, edge_part, block_receivers, block_senders, species[nodes],
                                              last - first, lengths)
            total = energy[: max(0, min(last, n_energy) - first)].sum()
            if z_next_grad.shape[1] > 0:
                total = total + (z_next * z_next_grad[first:last]).sum()
            grads = torch.autograd.grad([total], [block_vectors, block_z] if t > 0 else [block_vectors],
                                        allow_unused=True)
            edge_part = grads[0]
            if edge_part is not None:
                edge_grad[e_first:e_last] += edge_part
            if t > 0:
                z_part = grads[1]
                if z_part is not None:
                    z_grad.index_add_(0, nodes, z_part)
            features.append(z_next.detach())
            energies.append(energy.detach())
        return torch.cat(features), torch.cat(energies), edge_grad, z_grad

    def in_blocks(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                  species: torch.Tensor, n_local: int, block_edges: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward's outputs and the last layer's features of the nodes whose energy counts, the
        layers run in blocks of about `block_edges` edges: the features of every layer but the
        last without gradients, then backwards through the layers, each block recomputed and
        differentiated at once (as the pair style chains layer_values and layer_gradients on
        several ranks, exchanging features and their gradients in between)."""
        reorder, order = receiver_order(receivers)
        vectors = edge_vectors.detach()
        if reorder:
            vectors, receivers, senders = vectors[order], receivers[order], senders[order]
        n = species.shape[0]
        rows = rows_per_layer(receivers, senders, n, self.n_layers, n_local)
        zs = [vectors.new_zeros(n, 0)]  # z^t of the nodes layer t reads
        for t in range(self.n_layers - 1):
            zs.append(self.values_in_blocks(t, zs[t], vectors, receivers, senders, species, rows[t], block_edges)[0])
        atom_energy = torch.zeros(n, dtype=torch.float64, device=vectors.device)
        edge_grad = torch.zeros_like(vectors)
        g = vectors.new_zeros(0, 0)  # dE/dz^{t+1} of the rows layer t computes (none for the last)
        z_last = g
        for t in range(self.n_layers - 1, -1, -1):
            z_next, energy, edge_grad, g = self.gradients_in_blocks(t, zs[t], vectors, receivers, senders, species,
                                                                    rows[t], g, n_local, block_edges, edge_grad)
            atom_energy[: rows[t]] += energy
            if t == self.n_layers - 1:
                z_last = z_next
        if reorder:
            edge_grad = torch.zeros_like(edge_grad).index_copy_(0, order, edge_grad)
        return atom_energy[:n_local].sum(), atom_energy, edge_grad, z_last[:n_local]


class DeployedUncertainty(DeployedPotential):
    """A model with its own per-atom uncertainty (CONTRACT.md §2c): `forward_with_uncertainty`
    gives forward's outputs and the uncertainty of every local node (eV/Å, float64; the model's
    calibration scale included)."""

    @torch.jit.export
    def forward_with_uncertainty(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                                 species: torch.Tensor, n_local: int
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.whole_with_uncertainty(edge_vectors, receivers, senders, species, n_local)

    def whole_with_uncertainty(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                               species: torch.Tensor, n_local: int
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        vectors = edge_vectors.detach().requires_grad_(True)
        terms, uncertainty = self.model.forward_with_uncertainty(vectors, receivers, senders, species, n_local)
        energy, atom_energy, edge_grad = self.energies_and_gradient(terms, vectors, species, n_local)
        return energy, atom_energy, edge_grad, uncertainty[:n_local].detach().to(torch.float64)


class DeployedLayersUncertainty(DeployedLayers, DeployedUncertainty):
    """Layer by layer (§2b) and with its own uncertainty (§2c); on the layer path the pair style
    passes the last layer's features to `atom_uncertainty`."""

    @torch.jit.export
    def forward_with_uncertainty(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                                 species: torch.Tensor, n_local: int
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if edge_vectors.shape[0] <= self.whole_edges:
            return self.whole_with_uncertainty(edge_vectors, receivers, senders, species, n_local)
        energy, atom_energy, edge_grad, z_last = self.in_blocks(edge_vectors, receivers, senders, species, n_local,
                                                                self.block_edges)
        return energy, atom_energy, edge_grad, self.atom_uncertainty(z_last)

    @torch.jit.export
    def atom_uncertainty(self, z_last: torch.Tensor) -> torch.Tensor:
        """The uncertainty (eV/Å, float64) from the features the last `layer` call returned."""
        return self.model.atom_uncertainty(z_last).detach().to(torch.float64)


def chain_layers(module: nn.Module, n_layers: int, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                 senders: torch.Tensor, species: torch.Tensor, apart: bool = False) -> Tuple[torch.Tensor, ...]:
    """A graph whose nodes are all local, evaluated through `layer` (or, `apart`, through
    `edge_features_apart` and `layer_apart`) as the pair style chains the layers (here nothing
    needs exchanging): (float64 atom energies, edge_grad), and the atom uncertainty from the last
    layer's features when the module has one. For checks."""
    vectors = edge_vectors.detach().requires_grad_(True)
    n = int(species.shape[0])
    z = vectors.new_zeros(n, 0)
    energy = torch.zeros(n, dtype=torch.float64)
    if apart:
        features, distances = module.edge_features_apart(vectors)
    else:
        features, distances = module.edge_features(vectors), None
    for t in range(n_layers):
        if apart:
            z, terms = module.layer_apart(t, z, features, receivers, senders, species, n, distances)
        else:
            z, terms = module.layer(t, z, features, receivers, senders, species, n)
        energy = energy + terms
    gradient = _gradient(energy.sum(), vectors)
    if hasattr(module, "atom_uncertainty"):
        return energy.detach(), gradient, module.atom_uncertainty(z)
    return energy.detach(), gradient


def _gradient(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    grad: List[Optional[torch.Tensor]] = torch.autograd.grad([output], [inputs], allow_unused=True)
    result = grad[0]
    if result is None:  # no edges, or no edge reaches a local atom
        return torch.zeros_like(inputs)
    return result.detach()


def deploy(model: Potential, whole_edges: int = WHOLE_EDGES, block_edges: int = BLOCK_EDGES) -> DeployedPotential:
    """The contract wrapper for `model` (ensembles get the extra `members` method, models with an
    uncertainty head `forward_with_uncertainty`); a layered model evaluates graphs of more than
    `whole_edges` edges in blocks of about `block_edges` (`blocks.py`)."""
    model = model.eval()
    if isinstance(model, Ensemble):
        return DeployedEnsemble(model)
    if not exchange_features(model):
        return DeployedUncertainty(model) if has_uncertainty(model) else DeployedPotential(model)
    layered = DeployedLayersUncertainty if has_uncertainty(model) else DeployedLayers
    return layered(model, whole_edges, block_edges)


def exchange_features(model: Potential) -> List[int]:
    """Widths of the features a layer-by-layer evaluation exchanges between ranks ([]: the model
    has no `layer` method, or one layer, which needs no exchange)."""
    widths = getattr(model, "exchange_features", None)
    return list(widths()) if callable(widths) and hasattr(model, "layer") else []
