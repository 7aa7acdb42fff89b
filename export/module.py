"""The deployed module: a trained model wrapped to the contract's call signature (CONTRACT.md §2)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ekd.models import Ensemble, Potential
from ekd.models.potential import has_uncertainty


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
    recomputing them for a ghost shell of `receptive_field`."""

    @torch.jit.export
    def edge_features(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """What the layers read of the edges (HIP-NN: distance sensitivities), computed once per step."""
        return self.model.edge_features(edge_vectors)

    @torch.jit.export
    def layer(self, t: int, z: torch.Tensor, edge_features: torch.Tensor, receivers: torch.Tensor,
              senders: torch.Tensor, species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features z^{t+1} of nodes [0, n_local), their layer-t energy terms in float64, reference
        energies included in layer 0); differentiable in `z` and `edge_features`."""
        z_next, energy = self.model.layer(t, z, edge_features, receivers, senders, species, n_local)
        energy = energy.to(torch.float64)
        if t == 0:
            energy = energy + self.reference[species[:n_local]]
        return z_next, energy


class DeployedUncertainty(DeployedPotential):
    """A model with its own per-atom uncertainty (CONTRACT.md §2c): `forward_with_uncertainty`
    gives forward's outputs and the uncertainty of every local node (eV/Å, float64; the model's
    calibration scale included)."""

    @torch.jit.export
    def forward_with_uncertainty(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
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
    def atom_uncertainty(self, z_last: torch.Tensor) -> torch.Tensor:
        """The uncertainty (eV/Å, float64) from the features the last `layer` call returned."""
        return self.model.atom_uncertainty(z_last).detach().to(torch.float64)


def chain_layers(module: nn.Module, n_layers: int, edge_vectors: torch.Tensor, receivers: torch.Tensor,
                 senders: torch.Tensor, species: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """A graph whose nodes are all local, evaluated through `layer` as the pair style chains the
    layers (here nothing needs exchanging): (float64 atom energies, edge_grad), and the atom
    uncertainty from the last layer's features when the module has one. For checks."""
    vectors = edge_vectors.detach().requires_grad_(True)
    n = int(species.shape[0])
    z = vectors.new_zeros(n, 0)
    energy = torch.zeros(n, dtype=torch.float64)
    features = module.edge_features(vectors)
    for t in range(n_layers):
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


def deploy(model: Potential) -> DeployedPotential:
    """The contract wrapper for `model` (ensembles get the extra `members` method, models with an
    uncertainty head `forward_with_uncertainty`)."""
    model = model.eval()
    if isinstance(model, Ensemble):
        return DeployedEnsemble(model)
    if has_uncertainty(model):
        return DeployedLayersUncertainty(model) if exchange_features(model) else DeployedUncertainty(model)
    return DeployedLayers(model) if exchange_features(model) else DeployedPotential(model)


def exchange_features(model: Potential) -> List[int]:
    """Widths of the features a layer-by-layer evaluation exchanges between ranks ([]: the model
    has no `layer` method, or one layer, which needs no exchange)."""
    widths = getattr(model, "exchange_features", None)
    return list(widths()) if callable(widths) and hasattr(model, "layer") else []
