"""ekd's own operators (models/neighbour_sum.cpp, species_sum.cpp, sensitivity.cpp,
edge_length.cpp, activation.cpp) against the stock PyTorch path they replace: the same
energies, forces and force-loss gradients (second derivatives) of whole HIP-NN models, in float64 to 1e-12 and float32 to 1e-5 relative; their derivatives by
finite differences; and their refusal of malformed graphs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ekd.models.activation import FusedSiLU
from ekd.models.neighbour_sum import FusedSum, PaddedSum
from ekd.models.operators import fused_available
from ekd.models.radial import FusedExponentials, FusedLengths, StockExponentials, StockLengths
from tests.models.test_hipnn import all_edges, make_model, molecule

pytestmark = pytest.mark.skipif(not fused_available(), reason="ekd's operators are not built (python -m ekd.plugin build)")


def stock_copy(model):
    """The same model (same weights) on stock PyTorch operators."""
    stock = copy.deepcopy(model)
    stock.neighbour_sum = PaddedSum()
    stock.sensitivity.exponentials = StockExponentials()
    stock.lengths = StockLengths()
    for module in stock.modules():
        if isinstance(getattr(module, "activation", None), FusedSiLU):
            module.activation = nn.SiLU()
    return stock


def energy_forces_and_training_gradient(model, species, x, receivers, senders, n_energy):
    """Energy, forces, and the gradient of a force loss with respect to every parameter."""
    x = x.clone().requires_grad_(True)
    vectors = x[senders] - x[receivers]
    wanted = n_energy if n_energy >= 0 else len(species)
    total = model(vectors, receivers, senders, species, n_energy).sum(dim=1)[:wanted].sum()
    (forces,) = torch.autograd.grad(-total, x, create_graph=True)
    loss = (forces ** 2).sum() + total
    parameters = [p for p in model.parameters() if p.requires_grad]
    return total.detach(), forces.detach(), torch.autograd.grad(loss, parameters)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n_interactions, n_energy, shuffle", [(2, -1, False), (3, 12, True), (3, -1, True)])
def test_fused_model_equals_stock(dtype: torch.dtype, tolerance: float, n_interactions: int, n_energy: int,
                                  shuffle: bool) -> None:
    """Shuffled edges (not in receiver order) and pruned rows (only 12 energies wanted) included."""
    model = make_model(dtype, n_interactions=n_interactions)
    assert isinstance(model.neighbour_sum, FusedSum) and isinstance(model.sensitivity.exponentials, FusedExponentials)
    assert isinstance(model.lengths, FusedLengths) and model.training
    assert isinstance(model.blocks[0].atom_layers[0].activation, FusedSiLU)
    species, x = molecule(dtype, n=30, seed=3)
    receivers, senders = all_edges(x, model.cutoff)
    if shuffle:
        order = torch.randperm(len(receivers), generator=torch.Generator().manual_seed(5))
        receivers, senders = receivers[order], senders[order]
    fused = energy_forces_and_training_gradient(model, species, x, receivers, senders, n_energy)
    stock = energy_forces_and_training_gradient(stock_copy(model), species, x, receivers, senders, n_energy)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() <= tolerance * b.abs().max())

    assert close(fused[0], stock[0]) and close(fused[1], stock[1])
    assert fused[1].abs().max() > 1e-2
    for a, b in zip(fused[2], stock[2]):
        assert close(a, b)


def random_graph(n_nodes: int, n_edges: int, n_rows: int, seed: int):
    """Edges in receiver order into rows [0, n_rows), as `edge_layout` gives them."""
    g = torch.Generator().manual_seed(seed)
    receivers = torch.randint(0, n_nodes, (n_edges,), generator=g)
    senders = torch.randint(0, n_nodes, (n_edges,), generator=g)
    order, row_ptr, sorted_senders = torch.ops.ekd.edge_layout(receivers, senders, n_rows, n_nodes)
    assert torch.equal(sorted_senders, senders[order])
    assert torch.equal(receivers[order], torch.sort(receivers[receivers < n_rows], stable=True).values)
    return row_ptr, sorted_senders, receivers[order]


@pytest.mark.parametrize("features, sensitivities", [(5, 3), (16, 4), (8, 20)])
def test_neighbour_sums_by_hand_and_by_finite_differences(features: int, sensitivities: int) -> None:
    """environment against its definition; every operator's first and second derivatives against
    finite differences (gradcheck, gradgradcheck, float64), for widths the vector loops take
    (16 doubles: 4 vectors) and the plain loops (5 features; 20 sensitivities)."""
    n_nodes, n_rows = 12, 9
    row_ptr, senders, receivers = random_graph(n_nodes, 60, n_rows, seed=features)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(len(senders), sensitivities, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.randn(n_nodes, features, dtype=torch.float64, generator=g, requires_grad=True)
    env_grad = torch.randn(n_rows, sensitivities, features, dtype=torch.float64, generator=g, requires_grad=True)
    graph = (row_ptr, senders, n_nodes)
    by_hand = torch.zeros(n_rows, sensitivities, features, dtype=torch.float64).index_add(
        0, receivers, s.unsqueeze(2) * z[senders].unsqueeze(1))
    assert torch.allclose(torch.ops.ekd.environment(s, z, *graph), by_hand, rtol=1e-14, atol=1e-14)
    for op, inputs in ((torch.ops.ekd.environment, (s, z)), (torch.ops.ekd.edge_contraction, (env_grad, z)),
                       (torch.ops.ekd.sender_sum, (s, env_grad))):
        def call(a: torch.Tensor, b: torch.Tensor, op=op) -> torch.Tensor:
            return op(a, b, *graph)
        assert torch.autograd.gradcheck(call, inputs)
        assert torch.autograd.gradgradcheck(call, inputs)


@pytest.mark.parametrize("n_species, sensitivities", [(4, 16), (3, 5)])
def test_species_sums_by_hand_and_by_finite_differences(n_species: int, sensitivities: int) -> None:
    """species_sum against its definition (the environment of one-hot features), species_gather
    against indexing, both derivatives of each by finite differences, and sender species out of
    range refused by name."""
    n_nodes, n_rows = 12, 9
    row_ptr, senders, receivers = random_graph(n_nodes, 60, n_rows, seed=n_species)
    g = torch.Generator().manual_seed(3)
    species = torch.randint(0, n_species, (n_nodes,), generator=g)
    sender_species = species[senders]
    s = torch.randn(len(senders), sensitivities, dtype=torch.float64, generator=g, requires_grad=True)
    grad = torch.randn(n_rows, sensitivities, n_species, dtype=torch.float64, generator=g, requires_grad=True)
    onehot = torch.nn.functional.one_hot(species, n_species).to(torch.float64)
    by_hand = torch.ops.ekd.environment(s, onehot, row_ptr, senders, n_nodes)
    graph = (sender_species, row_ptr, n_species)
    assert torch.allclose(torch.ops.ekd.species_sum(s, *graph), by_hand, rtol=1e-14, atol=1e-14)
    assert torch.equal(torch.ops.ekd.species_gather(grad, *graph), grad[receivers, :, sender_species])
    for op, a in ((torch.ops.ekd.species_sum, s), (torch.ops.ekd.species_gather, grad)):
        def call(a: torch.Tensor, op=op) -> torch.Tensor:
            return op(a, *graph)
        assert torch.autograd.gradcheck(call, (a,))
        assert torch.autograd.gradgradcheck(call, (a,))
    wrong = sender_species.clone()
    wrong[5] = n_species
    with pytest.raises(RuntimeError, match=f"ekd::species_sum: edge 5 has sender species {n_species}, outside"):
        torch.ops.ekd.species_sum(s, wrong, row_ptr, n_species)
    with pytest.raises(RuntimeError, match="ekd::species_gather: expects g \\(R, V, n_species\\)"):
        torch.ops.ekd.species_gather(grad[:, :, :1], *graph)
    with pytest.raises(RuntimeError, match="ekd::species_sum: .* edges but .* sender species"):
        torch.ops.ekd.species_sum(s, sender_species[1:], row_ptr, n_species)


def sensitivity_inputs(n_edges: int, n_sensitivities: int, g: torch.Generator):
    """Distances 0.8-5.8 Å (both sides of a 5 Å cutoff) and coefficients of Gaussians in 1/r,
    both requiring gradients (float64)."""
    r = (torch.rand(n_edges, dtype=torch.float64, generator=g) * 5.0 + 0.8).requires_grad_(True)
    coefficients = torch.randn(4, n_sensitivities, dtype=torch.float64, generator=g)
    coefficients[0] = -10.0 * coefficients[0].abs()
    coefficients[3] = 1.0
    return r, coefficients.requires_grad_(True)


def test_sensitivities_by_finite_differences() -> None:
    """The fused sensitivities' derivatives in r and in the coefficients, first and second, with
    distances on both sides of the cutoff (5 Å)."""
    r, coefficients = sensitivity_inputs(25, 5, torch.Generator().manual_seed(2))

    def call(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.ops.ekd.sensitivities(r, c, 0.7, 5.0)

    assert (r > 5.0).any() and (r < 5.0).any()
    assert torch.allclose(call(r, coefficients), StockExponentials()(r, coefficients, torch.tensor(0.7, dtype=torch.float64), 5.0),
                          rtol=1e-13, atol=0)
    assert torch.autograd.gradcheck(call, (r, coefficients))
    assert torch.autograd.gradgradcheck(call, (r, coefficients))


def test_sensitivities_in_float32_against_float64() -> None:
    """float32 sensitivities (their own exp, sensitivity_kernels.h) and their gradient in r
    against the stock formula in float64, as close as the stock formula in float32 is (its
    rounding of the exponent's terms dominates): 1e-6 and 1e-5 of the largest value."""
    r, coefficients = sensitivity_inputs(2000, 16, torch.Generator().manual_seed(6))
    m = torch.tensor(0.7, dtype=torch.float64)
    exact = StockExponentials()(r, coefficients, m, 5.0)
    r32 = r.detach().float().requires_grad_(True)
    fast = torch.ops.ekd.sensitivities(r32, coefficients.detach().float(), 0.7, 5.0)
    stock32 = StockExponentials()(r.detach().float(), coefficients.detach().float(), m.float(), 5.0)
    for result in (fast, stock32):
        assert (result.double() - exact).abs().max() <= 1e-6 * exact.abs().max()
    upstream = torch.randn(exact.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    exact_grad, = torch.autograd.grad(exact, r, upstream)
    fast_grad, = torch.autograd.grad(fast, r32, upstream.float())
    assert (fast_grad.double() - exact_grad).abs().max() <= 1e-5 * exact_grad.abs().max()


def test_sensitivities_force_training_derivatives() -> None:
    """The path of training with a force loss: the gradient with respect to r alone, recorded
    (create_graph), is its own operator; its derivatives in r, in the upstream gradient and in
    the coefficients (second derivatives of s) by finite differences and against the stock
    formula to 1e-12, and its own derivatives (third derivatives of s, the composite fallback)."""
    g = torch.Generator().manual_seed(4)
    r, coefficients = sensitivity_inputs(30, 6, g)
    upstream = torch.randn(30, 6, dtype=torch.float64, generator=g, requires_grad=True)
    m = torch.tensor(0.7, dtype=torch.float64)

    def slope(r: torch.Tensor, c: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        s = torch.ops.ekd.sensitivities(r, c, 0.7, 5.0) if fused else StockExponentials()(r, c, m, 5.0)
        return torch.autograd.grad(s, r, grad_outputs=w, create_graph=True)[0]

    assert (r > 5.0).any() and (r < 5.0).any()
    h = torch.randn(30, dtype=torch.float64, generator=g)
    fused = torch.autograd.grad(slope(r, coefficients, upstream), (r, coefficients, upstream), h)
    stock = torch.autograd.grad(slope(r, coefficients, upstream, fused=False), (r, coefficients, upstream), h)
    for a, b in zip(fused, stock):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()
    assert torch.autograd.gradcheck(slope, (r, coefficients, upstream))
    assert torch.autograd.gradgradcheck(slope, (r, coefficients, upstream))

def test_edge_lengths_against_vector_norm_and_by_finite_differences() -> None:
    """Lengths equal vector_norm's (float64 to 1e-15, float32 to 1e-7 relative), as do their
    gradients, a zero-length edge's gradient is 0 as vector_norm's, and the first and second
    derivatives (force-loss training) pass finite differences."""
    g = torch.Generator().manual_seed(5)
    vectors = torch.randn(40, 3, dtype=torch.float64, generator=g) * 2.0
    vectors[7] = 0.0
    upstream = torch.randn(40, dtype=torch.float64, generator=g)
    for dtype, rtol in ((torch.float64, 1e-15), (torch.float32, 1e-7)):
        fused_v = vectors.to(dtype).requires_grad_(True)
        stock_v = vectors.to(dtype).requires_grad_(True)
        fused, stock = FusedLengths()(fused_v), StockLengths()(stock_v)
        torch.testing.assert_close(fused, stock, rtol=rtol, atol=0)
        fused_grad, = torch.autograd.grad(fused, fused_v, upstream.to(dtype))
        stock_grad, = torch.autograd.grad(stock, stock_v, upstream.to(dtype))
        torch.testing.assert_close(fused_grad, stock_grad, rtol=4 * rtol, atol=0)
        assert fused_grad[7].abs().max() == 0
    nonzero = vectors[vectors.norm(dim=1) > 0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(torch.ops.ekd.edge_lengths, (nonzero,))
    assert torch.autograd.gradgradcheck(torch.ops.ekd.edge_lengths, (nonzero,))
    with pytest.raises(RuntimeError, match="expects floating-point edge vectors \\(E, 3\\)"):
        torch.ops.ekd.edge_lengths(torch.ones(4, 2))


def test_silu_and_its_derivatives() -> None:
    """ekd::silu: the values of `silu` bit for bit, first and second derivatives by finite differences (and
    a third, which nothing asks for, still right); only training calls it, and a scripted model
    (what export writes) calls the stock operator."""
    x = torch.linspace(-30.0, 30.0, 301, dtype=torch.float64).reshape(7, 43).requires_grad_(True)
    x32 = x.detach().float()
    assert torch.equal(torch.ops.ekd.silu(x), nn.functional.silu(x))
    assert torch.equal(torch.ops.ekd.silu(x32), nn.functional.silu(x32))
    small = (x[:2, :9] / 6).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(torch.ops.ekd.silu, (small,))
    assert torch.autograd.gradgradcheck(torch.ops.ekd.silu, (small,))

    def slope(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(torch.ops.ekd.silu(v).sum(), v, create_graph=True)[0]

    assert torch.autograd.gradgradcheck(slope, (small,))
    fused = FusedSiLU()
    assert torch.equal(fused.eval()(x32), nn.functional.silu(x32))
    assert "ekd" not in torch.jit.script(fused.train()).code
    with pytest.raises(RuntimeError, match="expects a floating-point tensor on the CPU"):
        torch.ops.ekd.silu(torch.ones(3, dtype=torch.long))


def test_malformed_graphs_are_refused() -> None:
    receivers, senders = torch.tensor([0, 1, 2]), torch.tensor([1, 7, 0])
    with pytest.raises(RuntimeError, match="edge 1 into node 1 has sender 7, outside 0..2"):
        torch.ops.ekd.edge_layout(receivers, senders, 3, 3)
    with pytest.raises(RuntimeError, match="edge 0 has receiver -1"):
        torch.ops.ekd.edge_layout(torch.tensor([-1, 0]), torch.tensor([0, 1]), 2, 2)
    order, row_ptr, kept = torch.ops.ekd.edge_layout(receivers, senders, 1, 3)  # sender 7's edge is dropped
    assert order.tolist() == [0] and row_ptr.tolist() == [0, 1] and kept.tolist() == [1]
    s, z = torch.ones(1, 2), torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.ekd.environment(s, z, row_ptr, kept, 3)
    with pytest.raises(RuntimeError, match="expects distances \\(E,\\) and coefficients \\(4, V\\) of one dtype"):
        torch.ops.ekd.sensitivities(torch.ones(3), torch.ones(3, 5), 0.5, 5.0)
