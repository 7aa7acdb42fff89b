"""HIP-NN physics: invariances, forces as finite differences, smoothness at the cutoff, the
TorchScript version, graph edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ekd.models import HIPNN, HIPNNConfig
from ekd.models.graph import neighbor_slots
from ekd.models.neighbour_sum import PaddedSum
from tests.conftest import TOLERANCE, random_molecule

ELEMENTS = [1, 6, 7, 8]


def make_model(dtype: torch.dtype, **overrides) -> HIPNN:
    torch.manual_seed(0)
    config = HIPNNConfig(**{"n_features": 16, "n_sensitivities": 8, "n_interactions": 2, "n_atom_layers": 2,
                            "cutoff": 4.0, "soft_max": 3.5, **overrides})
    model = HIPNN(ELEMENTS, config).to(dtype)
    # Larger head weights than the training initialisation, so every layer matters in the tests.
    with torch.no_grad():
        for block in model.blocks:
            block.energy_head.weight.normal_(0.0, 1.0)
    return model


def all_edges(positions: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = positions.shape[0]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & (torch.cdist(positions, positions) < cutoff)
    return i[keep], j[keep]


def energy(model: HIPNN, species: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    receivers, senders = all_edges(positions.detach(), model.cutoff)
    vectors = positions[senders] - positions[receivers]
    return model(vectors, receivers, senders, species).sum()


def molecule(dtype: torch.dtype, n: int = 9, seed: int = 1):
    z, x = random_molecule(n, seed)
    species = torch.as_tensor([ELEMENTS.index(v) for v in z])
    return species, torch.as_tensor(x, dtype=dtype)


def random_rotation(seed: int, dtype: torch.dtype) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.as_tensor(q, dtype=dtype)


def test_rotation_translation_reflection_invariance(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    species, x = molecule(dtype)
    e0 = energy(model, species, x)
    moved = x @ random_rotation(3, dtype).T + torch.tensor([1.5, -2.0, 0.7], dtype=dtype)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=dtype)
    tol = TOLERANCE[dtype] * max(1.0, abs(e0.item()))
    assert abs(energy(model, species, moved) - e0) < tol
    assert abs(energy(model, species, mirrored) - e0) < tol


def test_permutation_invariance(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    species, x = molecule(dtype)
    perm = torch.randperm(len(species), generator=torch.Generator().manual_seed(5))
    e0 = energy(model, species, x)
    assert abs(energy(model, species[perm], x[perm]) - e0) < TOLERANCE[dtype] * max(1.0, abs(e0.item()))


def test_forces_equal_central_finite_differences() -> None:
    model = make_model(torch.float64)
    species, x = molecule(torch.float64)
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(model, species, x), x)
    h = 1e-5
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for a in range(x.shape[0]):
            for k in range(3):
                plus, minus = x.detach().clone(), x.detach().clone()
                plus[a, k] += h
                minus[a, k] -= h
                numeric[a, k] = (energy(model, species, plus) - energy(model, species, minus)) / (2 * h)
    assert grad.abs().max() > 1e-3, "forces must not be trivially zero"
    assert torch.allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_energy_and_force_continuous_at_cutoff() -> None:
    model = make_model(torch.float64, n_interactions=1)
    species = torch.tensor([1, 3])
    eps = 1e-7

    def pair(r: float) -> tuple[float, float]:
        x = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
        e = energy(model, species, x)
        (g,) = torch.autograd.grad(e, x)
        return e.item(), g[1, 0].item()

    e_in, f_in = pair(model.cutoff - eps)
    e_out, f_out = pair(model.cutoff + eps)
    assert abs(e_in - e_out) < 1e-10
    assert abs(f_in) < 1e-8 and f_out == 0.0


def test_torchscript_equals_eager(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    scripted = torch.jit.script(model)
    species, x = molecule(dtype, n=12, seed=4)
    receivers, senders = all_edges(x, model.cutoff)
    vectors = x[senders] - x[receivers]
    eager = model(vectors, receivers, senders, species)
    assert torch.equal(scripted(vectors, receivers, senders, species), eager)


def test_hierarchical_terms_shape() -> None:
    model = make_model(torch.float64, n_interactions=3)
    species, x = molecule(torch.float64, n=5)
    receivers, senders = all_edges(x, model.cutoff)
    terms = model(x[senders] - x[receivers], receivers, senders, species)
    assert terms.shape == (5, 4)  # one-hot level + three interaction levels


def test_isolated_atoms_and_no_edges() -> None:
    model = make_model(torch.float64)
    species = torch.tensor([0, 1, 3])
    empty = torch.zeros(0, dtype=torch.long)
    terms = model(torch.zeros(0, 3, dtype=torch.float64), empty, empty, species)
    assert terms.shape == (3, 3) and torch.isfinite(terms).all()
    far = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(energy(model, species, far), terms.sum())


def test_edge_order_does_not_matter() -> None:
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, n=10, seed=7)
    receivers, senders = all_edges(x, model.cutoff)
    perm = torch.randperm(len(receivers), generator=torch.Generator().manual_seed(2))
    vectors = x[senders] - x[receivers]
    sorted_out = model(vectors, receivers, senders, species)
    shuffled_out = model(vectors[perm], receivers[perm], senders[perm], species)
    assert torch.allclose(sorted_out, shuffled_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_interactions", [2, 3])
def test_blocks_by_degree_give_the_same_energies_and_gradients(n_interactions: int) -> None:
    """The padded layout cut into blocks of rows sorted by degree (large systems) sums the same
    terms as one block: energies and edge gradients agree in float64, with and without pruning."""
    model = make_model(torch.float64, n_interactions=n_interactions)
    model.neighbour_sum = PaddedSum()  # the layout in blocks is the stock path's
    species, x = molecule(torch.float64, n=30, seed=3)
    receivers, senders = all_edges(x, model.cutoff)
    assert len(set(torch.bincount(receivers).tolist())) > 3, "degrees must differ for the sorting to matter"

    def energy_and_gradient(block_rows: int, n_energy: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.block_rows = block_rows
        vectors = (x[senders] - x[receivers]).requires_grad_(True)
        wanted = n_energy if n_energy >= 0 else len(species)
        total = model(vectors, receivers, senders, species, n_energy).sum(dim=1)[:wanted].sum()
        return total.detach(), torch.autograd.grad(total, vectors)[0]

    for n_energy in (-1, 12):
        one_block = energy_and_gradient(1024, n_energy)
        for block_rows in (1, 4, 7):
            blocks = energy_and_gradient(block_rows, n_energy)
            assert torch.allclose(blocks[0], one_block[0], rtol=1e-13, atol=0)
            assert torch.allclose(blocks[1], one_block[1], rtol=0, atol=1e-12)


def energy_on_two_ranks(model, species: torch.Tensor, x: torch.Tensor, first: int) -> torch.Tensor:
    """The total energy as the pair style computes it on two MPI ranks owning atoms [0, first)
    and [first, N): each rank runs `layer` for its own atoms from the features of its own atoms
    and of the other rank's neighbours, which are exchanged after every layer. Differentiable in x."""
    receivers, senders = all_edges(x.detach(), model.cutoff)
    owned = [torch.arange(0, first), torch.arange(first, len(species))]
    ranks = []  # per rank: node -> atom (own atoms first, then the other rank's), edges by node
    for atoms in owned:
        keep = torch.isin(receivers, atoms)
        others = torch.unique(senders[keep])
        node_atom = torch.cat([atoms, others[~torch.isin(others, atoms)]])
        atom_node = torch.full((len(species),), -1, dtype=torch.long)
        atom_node[node_atom] = torch.arange(len(node_atom))
        ranks.append((node_atom, atom_node[receivers[keep]], atom_node[senders[keep]],
                      x[senders[keep]] - x[receivers[keep]]))
    z_of_atom = x.new_zeros(len(species), 0)
    total = x.new_zeros(())
    for t in range(model.num_interactions):
        outputs = []
        for atoms, (node_atom, recv, send, vectors) in zip(owned, ranks):
            z, terms = model.layer(t, z_of_atom[node_atom], model.edge_features(vectors), recv, send,
                                   species[node_atom], len(atoms))
            outputs.append(z)
            total = total + terms.sum()
        z_of_atom = torch.cat(outputs)  # the exchange: each atom's features from its owner
    return total


@pytest.mark.parametrize("n_interactions, block_rows", [(2, 1024), (3, 1024), (3, 4)])
def test_layers_on_two_ranks_with_exchanged_features_equal_forward(n_interactions: int, block_rows: int) -> None:
    """`layer` as the pair style uses it on several MPI ranks: summed over two ranks, energies
    and forces equal one `forward` in float64 (blocks of 4 rows: the degree-sorted layout)."""
    model = make_model(torch.float64, n_interactions=n_interactions)
    model.block_rows = block_rows
    assert_two_ranks_equal_forward(model, smallest_force=1e-2)  # ekd's operators, if built
    model.neighbour_sum = PaddedSum()
    assert_two_ranks_equal_forward(model, smallest_force=1e-2)  # the stock path (blocks of 4 rows: by degree)


def assert_two_ranks_equal_forward(model, smallest_force: float) -> None:
    """A 30-atom molecule split 13 + 17 over two ranks: energy and forces equal `forward`'s in float64."""
    species, x = molecule(torch.float64, n=30, seed=3)
    x = x.clone().requires_grad_(True)
    total = energy_on_two_ranks(model, species, x, first=13)
    (force,) = torch.autograd.grad(-total, x)
    expected = energy(model, species, x)
    (expected_force,) = torch.autograd.grad(-expected, x)
    assert torch.allclose(total, expected, rtol=1e-13, atol=0)
    assert torch.allclose(force, expected_force, rtol=0, atol=1e-12)
    assert expected_force.abs().max() > smallest_force


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_sensitivities_are_the_inverse_distance_gaussians(dtype: torch.dtype, tolerance: float) -> None:
    """The sensitivities, computed as exp of one quadratic in 1/r plus log φ per ν, equal
    exp(-(1/r - μ)²/2σ²)·φ(r) written out term by term (in float64), and their slopes too; up to
    the cutoff, where φ(r) = cos²(π r / 2 r_c) and its slope vanish."""
    from ekd.models.radial import InverseGaussianSensitivity

    torch.manual_seed(2)
    module = InverseGaussianSensitivity(16, 0.75, 4.5, 5.0).to(dtype)
    with torch.no_grad():
        module.inverse_centres.add_(0.02 * torch.randn_like(module.inverse_centres))
        module.inverse_widths.mul_(1.0 + 0.2 * torch.rand_like(module.inverse_widths))
    r = torch.linspace(0.5, 4.999, 2000, dtype=torch.float64)

    def written_out(r: torch.Tensor) -> torch.Tensor:
        mu, sigma = module.inverse_centres.double(), module.inverse_widths.double()
        phi = torch.cos(0.5 * math.pi * r / 5.0) ** 2
        return torch.exp(-((1.0 / r[:, None] - mu) ** 2) / (2 * sigma ** 2)) * phi[:, None]

    x = r.to(dtype).requires_grad_(True)
    got = module(x)
    (slope,) = torch.autograd.grad(got.sum(), x)
    reference_x = r.clone().requires_grad_(True)
    want = written_out(reference_x)
    (want_slope,) = torch.autograd.grad(want.sum(), reference_x)
    assert (got.double() - want).abs().max() <= tolerance * want.abs().max()
    assert (slope.double() - want_slope).abs().max() <= tolerance * want_slope.abs().max()


def test_neighbor_slots_unsorted() -> None:
    receivers = torch.tensor([2, 0, 2, 1, 0, 2])
    slots, max_degree = neighbor_slots(receivers, 4)
    assert max_degree == 3
    for node in range(4):
        assert sorted(slots[receivers == node].tolist()) == list(range(int((receivers == node).sum())))


@pytest.mark.parametrize("bad", [{"n_features": 0}, {"activation": "relu6"}, {"soft_min": 5.0, "soft_max": 4.0}])
def test_bad_hyperparameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        HIPNN(ELEMENTS, HIPNNConfig(**bad))


def test_uncertainty_head_leaves_energies_and_their_gradients_alone(dtype: torch.dtype) -> None:
    """The head reads detached features and its parameters are drawn last: a model with a head has
    the same initial parameters, energies and forces as one without, and the head's loss puts no
    gradient on any other parameter."""
    def built(**overrides) -> HIPNN:  # as training builds it (make_model redraws the energy heads after)
        torch.manual_seed(0)
        config = HIPNNConfig(n_features=16, n_sensitivities=8, cutoff=4.0, soft_max=3.5, **overrides)
        return HIPNN(ELEMENTS, config).to(dtype)

    plain, headed = built(), built(uncertainty_head=8)
    shared = plain.state_dict()
    assert all(torch.equal(shared[k], headed.state_dict()[k]) for k in shared)
    species, positions = molecule(dtype)
    receivers, senders = all_edges(positions, headed.cutoff)
    vectors = positions[senders] - positions[receivers]
    terms, uncertainty = headed.forward_with_uncertainty(vectors, receivers, senders, species)
    assert torch.equal(terms, plain(vectors, receivers, senders, species))
    assert uncertainty.shape == (len(species),) and bool((uncertainty > 0).all())
    uncertainty.sum().backward()
    for name, parameter in headed.named_parameters():
        assert (parameter.grad is not None) == name.startswith("uncertainty_head."), name


def test_uncertainty_from_the_last_layer_equals_forward() -> None:
    """On the layer-by-layer path the head reads the last layer's features (CONTRACT.md §2c)."""
    model = make_model(torch.float64, uncertainty_head=8)
    species, positions = molecule(torch.float64)
    receivers, senders = all_edges(positions, model.cutoff)
    vectors = positions[senders] - positions[receivers]
    _, expected = model.forward_with_uncertainty(vectors, receivers, senders, species)
    features, z = model.edge_features(vectors), vectors.new_zeros(len(species), 0)
    for t in range(model.num_interactions):
        z, _ = model.layer(t, z, features, receivers, senders, species, len(species))
    assert torch.allclose(model.atom_uncertainty(z), expected, rtol=1e-12, atol=0)
