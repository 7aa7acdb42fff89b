"""`n_energy`: a model asked for the energies of nodes [0, k) only skips its last layer for the
other nodes; the energy of those k nodes and its gradient must not change (float64, 1e-14)."""

from __future__ import annotations

import pytest
import torch

from ekd.models import build_model
from ekd.models.graph import rows_per_layer

HYPER = {
    "hipnn": {"n_features": 8, "n_sensitivities": 6, "n_interactions": 3, "cutoff": 4.0, "soft_max": 3.5},
    "equivariant": {"n_features": 8, "n_interactions": 2, "cutoff": 4.0},
}


def local_energy_and_gradient(model: torch.nn.Module, vectors: torch.Tensor, receivers: torch.Tensor,
                              senders: torch.Tensor, species: torch.Tensor, k: int, n_energy: int):
    vectors = vectors.clone().requires_grad_(True)
    energy = model(vectors, receivers, senders, species, n_energy).sum(dim=1)[:k].sum()
    (grad,) = torch.autograd.grad(energy, vectors, allow_unused=True)
    return energy.detach(), torch.zeros_like(vectors) if grad is None else grad


@pytest.mark.parametrize("kind", sorted(HYPER))
def test_last_layer_for_the_wanted_nodes_only(kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    positions = torch.rand(40, 3, generator=generator, dtype=torch.float64) * torch.tensor([16.0, 6.0, 6.0])
    # nodes sorted along x, as the pair style sorts them by graph distance: the nodes an energy of
    # nodes [0, k) depends on are a prefix, so every layer (not only the last) does less
    positions = positions[torch.argsort(positions[:, 0])]
    distances = (positions[None] - positions[:, None]).norm(dim=-1)  # (cdist is not exactly 0 on its diagonal)
    receivers, senders = torch.nonzero((distances < 4.0) & (distances > 0), as_tuple=True)
    order = torch.randperm(len(receivers), generator=generator)  # any edge order is allowed
    receivers, senders = receivers[order], senders[order]
    species = torch.randint(0, 3, (40,), generator=generator)
    torch.manual_seed(0)
    model = build_model(kind, [1, 6, 8], HYPER[kind]).double()
    vectors = positions[senders] - positions[receivers]
    assert rows_per_layer(receivers, senders, 40, 3, 7) == sorted(rows_per_layer(receivers, senders, 40, 3, 7))[::-1]
    assert rows_per_layer(receivers, senders, 40, 3, 7)[0] < 40
    for k in (0, 7, 25, 40):
        full = local_energy_and_gradient(model, vectors, receivers, senders, species, k, -1)
        pruned = local_energy_and_gradient(model, vectors, receivers, senders, species, k, k)
        assert torch.allclose(pruned[0], full[0], rtol=0, atol=1e-14)
        assert torch.allclose(pruned[1], full[1], rtol=0, atol=1e-14)
