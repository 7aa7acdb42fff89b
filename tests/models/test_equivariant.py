"""The equivariant (NequIP-style) model: O(3) equivariance of energies, forces and hidden
features, forces as finite differences, the cutoff, TorchScript and the export wrapper,
double backward, graph edge cases."""

from __future__ import annotations

import contextlib
import io
from typing import Iterator, List

import pytest
import torch
from e3nn import o3

from ekd.errors import ConfigError
from ekd.export import deploy, verify
from ekd.models import Ensemble, build_model, model_from_spec, model_spec
from ekd.models.equivariant import EdgeTensorProduct, EquivariantConfig, EquivariantPotential, hidden_irreps
from tests.conftest import TOLERANCE
from tests.models.test_hipnn import (ELEMENTS, all_edges, assert_two_ranks_equal_forward, energy, molecule,
                                     random_rotation)

# Small but complete: l = 0, 1, 2 and three blocks, so the second block carries both parities
# (1e and 2o appear there) and the third reads them.
SMALL = {"n_features": 8, "l_max": 2, "n_interactions": 3, "cutoff": 4.0, "n_basis": 6, "radial_hidden": 16,
         "avg_neighbors": 4.0}


def make_model(dtype: torch.dtype, **overrides) -> EquivariantPotential:
    """Built in the default dtype and converted, as training and export do."""
    torch.manual_seed(0)
    model = EquivariantPotential(ELEMENTS, EquivariantConfig(**{**SMALL, **overrides})).to(dtype)
    # Larger readout and species weights than the training initialisation, so every part matters.
    with torch.no_grad():
        model.readout[2].weight.normal_(0.0, 1.0)
        model.species_energy.weight.normal_(0.0, 1.0)
    return model


def energy_and_forces(model: EquivariantPotential, species: torch.Tensor, x: torch.Tensor,
                      create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    e = energy(model, species, x)
    (grad,) = torch.autograd.grad(e, x, create_graph=create_graph)
    return e, -grad


def improper(seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A rotation times the inversion: determinant −1."""
    return -random_rotation(seed, dtype)


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    # e3nn's Wigner D matrices are computed in the default dtype.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def hidden_features(model: EquivariantPotential, species: torch.Tensor, x: torch.Tensor) -> List[torch.Tensor]:
    """The node features after every interaction block (the model's forward, step by step)."""
    receivers, senders = all_edges(x, model.cutoff)
    vectors = x[senders] - x[receivers]
    h = model.embedding(torch.nn.functional.one_hot(species, model.n_species).to(x.dtype))
    sh = model.spherical_harmonics(vectors)
    basis = model.basis(torch.linalg.vector_norm(vectors, dim=-1))
    features = []
    for block in model.blocks:
        h = block(h, sh, basis, receivers, senders, h.shape[0])
        features.append(h)
    return features


# ---- symmetry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rotation", "improper"])
def test_energy_invariant_and_forces_equivariant(dtype: torch.dtype, kind: str) -> None:
    model = make_model(dtype)
    species, x = molecule(dtype)
    q = random_rotation(3, dtype) if kind == "rotation" else improper(3, dtype)
    e0, f0 = energy_and_forces(model, species, x)
    e1, f1 = energy_and_forces(model, species, x @ q.T)
    assert f0.abs().max() > 1e-2, "forces must not be trivially small"
    tol = TOLERANCE[dtype]
    assert abs(e1 - e0) <= tol * max(1.0, abs(e0.item()))
    assert (f1 - f0 @ q.T).abs().max() <= tol * max(1.0, f0.abs().max().item())


def test_mirror_plane() -> None:
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, seed=11)
    mirror = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    e0, f0 = energy_and_forces(model, species, x)
    e1, f1 = energy_and_forces(model, species, x @ mirror)
    assert abs(e1 - e0) < 1e-10 * max(1.0, abs(e0.item()))
    assert torch.allclose(f1, f0 @ mirror, rtol=0.0, atol=1e-10)


def test_hidden_features_transform_with_their_irreps() -> None:
    """h(Qx) = D(Q) h(x) block by block, for an improper Q: checks every parity label,
    including the pseudo-tensors (1e, 2o) of the second block."""
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, seed=2)
    q = improper(7, torch.float64)
    before, after = hidden_features(model, species, x), hidden_features(model, species, x @ q.T)
    # Block 1 sees 0e ⊗ Y only (natural parity); block 2 adds 1o ⊗ 1o → 1e and 1o ⊗ 2e → 2o.
    assert [str(ir) for _, ir in model.blocks[0].irreps_out] == ["0e", "1o", "2e"]
    assert {str(ir) for _, ir in model.blocks[1].irreps_out} == {"0e", "1o", "1e", "2e", "2o"}
    for block, h0, h1 in zip(model.blocks, before, after):
        with float64_default():
            d = block.irreps_out.D_from_matrix(q)
        assert h0.abs().max() > 1e-2
        assert (h1 - h0 @ d.T).abs().max() < 1e-10 * max(1.0, h0.abs().max().item())


def test_translation_invariance(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    species, x = molecule(dtype)
    e0, f0 = energy_and_forces(model, species, x)
    e1, f1 = energy_and_forces(model, species, x + torch.tensor([1.5, -2.0, 0.7], dtype=dtype))
    tol = TOLERANCE[dtype]
    assert abs(e1 - e0) <= tol * max(1.0, abs(e0.item()))
    assert (f1 - f0).abs().max() <= tol * max(1.0, f0.abs().max().item())


def test_permutation_invariance(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    species, x = molecule(dtype)
    perm = torch.randperm(len(species), generator=torch.Generator().manual_seed(5))
    e0, f0 = energy_and_forces(model, species, x)
    e1, f1 = energy_and_forces(model, species[perm], x[perm])
    tol = TOLERANCE[dtype]
    assert abs(e1 - e0) <= tol * max(1.0, abs(e0.item()))
    assert (f1 - f0[perm]).abs().max() <= tol * max(1.0, f0.abs().max().item())


def test_tensor_product_equals_e3nn() -> None:
    """The hand-written 'uvu' product has e3nn's TensorProduct numbers and normalisation."""
    irreps_in, irreps_sh = o3.Irreps("3x0e+3x0o+3x1o+3x1e+3x2e"), o3.Irreps.spherical_harmonics(2)
    with float64_default():
        ours = EdgeTensorProduct(irreps_in, irreps_sh, hidden_irreps(2))
        instructions = [(path[0], path[1], k, "uvu", True) for k, path in enumerate(ours.paths)]
        reference = o3.TensorProduct(irreps_in, irreps_sh, ours.irreps_out, instructions,
                                     shared_weights=False, internal_weights=False)
        x, w = irreps_in.randn(11, -1), torch.randn(11, ours.weight_numel)
        sh = o3.spherical_harmonics(irreps_sh, torch.randn(11, 3), True, "component")
    assert ours.weight_numel == reference.weight_numel
    assert torch.allclose(ours(x, sh, w), reference(x, sh, w), rtol=0.0, atol=1e-13)


def test_coupling_stays_exact_through_dtype_changes() -> None:
    model = EquivariantPotential(ELEMENTS, EquivariantConfig(**SMALL)).to(torch.float32).to(torch.float64)
    for block in model.blocks:
        tp = block.tensor_product
        assert tp.coupling.dtype == torch.float64
        assert torch.equal(tp.coupling, tp._exact_coupling())
    assert all(not name.endswith("coupling") for name in model.state_dict())


# ---- forces and the cutoff ---------------------------------------------------------------------

def test_forces_equal_central_finite_differences() -> None:
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, n=6)
    _, forces = energy_and_forces(model, species, x)
    h = 1e-5
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for a in range(x.shape[0]):
            for k in range(3):
                plus, minus = x.clone(), x.clone()
                plus[a, k] += h
                minus[a, k] -= h
                numeric[a, k] = -(energy(model, species, plus) - energy(model, species, minus)) / (2 * h)
    assert forces.abs().max() > 1e-2, "forces must not be trivially zero"
    assert torch.allclose(forces, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_interactions", [1, 2])
def test_energy_and_force_continuous_at_cutoff(n_interactions: int) -> None:
    model = make_model(torch.float64, n_interactions=n_interactions)
    species = torch.tensor([1, 3])
    eps = 1e-7

    def pair(r: float) -> tuple[float, float]:
        x = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=torch.float64)
        e, f = energy_and_forces(model, species, x)
        return e.item(), f[1, 0].item()

    e_in, f_in = pair(model.cutoff - eps)
    e_out, f_out = pair(model.cutoff + eps)
    e_mid, _ = pair(0.8 * model.cutoff)
    assert abs(e_mid - e_out) > 1e-4, "the pair must interact inside the cutoff"
    assert abs(e_in - e_out) < 1e-10
    assert abs(f_in) < 1e-8 and f_out == 0.0


def test_edges_at_or_beyond_the_cutoff_contribute_exactly_zero() -> None:
    """An ensemble with a larger cutoff passes longer edges: they must change nothing."""
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, n=6, seed=3)
    x = torch.cat([x, torch.tensor([[4.0 + model.cutoff, 0.5, 0.5]], dtype=torch.float64)])  # a distant atom
    species = torch.cat([species, torch.tensor([2])])
    short_r, short_s = all_edges(x, model.cutoff)
    long_r, long_s = all_edges(x, 3.0 * model.cutoff)
    n_long = len(long_r) - len(short_r)
    assert n_long > 0
    vectors = (x[long_s] - x[long_r]).requires_grad_(True)
    lengths = torch.linalg.vector_norm(vectors.detach(), dim=-1)
    assert (model.basis(lengths)[lengths >= model.cutoff] == 0.0).all()
    at_cutoff = torch.tensor([model.cutoff, 1.5 * model.cutoff], dtype=torch.float64)
    assert (model.basis(at_cutoff) == 0.0).all()
    with_long = model(vectors, long_r, long_s, species)
    (grad,) = torch.autograd.grad(with_long.sum(), vectors)
    without = model(x[short_s] - x[short_r], short_r, short_s, species)
    assert torch.allclose(with_long, without, rtol=0.0, atol=1e-14)
    assert (grad[lengths >= model.cutoff] == 0.0).all() and grad.abs().max() > 1e-3


def test_ensemble_member_ignores_edges_beyond_its_cutoff() -> None:
    small, large = make_model(torch.float64, cutoff=3.0), make_model(torch.float64, cutoff=4.5)
    ensemble = Ensemble([small, large])
    species, x = molecule(torch.float64, n=8, seed=9)
    r, s = all_edges(x, ensemble.cutoff)
    members = ensemble.member_energies(x[s] - x[r], r, s, species)
    r3, s3 = all_edges(x, 3.0)
    own = small(x[s3] - x[r3], r3, s3, species).sum(dim=1)
    assert len(r3) < len(r)
    assert torch.allclose(members[0], own, rtol=0.0, atol=1e-13)


# ---- TorchScript, export, training -------------------------------------------------------------

def test_torchscript_equals_eager(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    scripted = torch.jit.script(model)
    species, x = molecule(dtype, n=12, seed=4)
    receivers, senders = all_edges(x, model.cutoff)
    vectors = (x[senders] - x[receivers]).requires_grad_(True)
    eager = model(vectors, receivers, senders, species)
    script = scripted(vectors, receivers, senders, species)
    (grad_eager,) = torch.autograd.grad(eager.sum(), vectors)
    (grad_script,) = torch.autograd.grad(script.sum(), vectors)
    tol = 1e-12 if dtype == torch.float64 else TOLERANCE[dtype]
    assert torch.allclose(script, eager, rtol=tol, atol=tol)
    assert torch.allclose(grad_script, grad_eager, rtol=tol, atol=tol)


def test_deployed_module_scripts_saves_and_matches_eager(dtype: torch.dtype) -> None:
    model = make_model(dtype, l_max=1, n_interactions=2)  # every code path is scripted above; this is the wrapper
    model.reference_energies = [-0.5, -38.0, -54.6, -75.1]
    eager = deploy(model)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(eager), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    verify(eager, loaded, model, dtype)  # the exporter's own check, sample structures included
    species, x = molecule(dtype, n=10, seed=6)
    receivers, senders = all_edges(x, model.cutoff)
    args = (x[senders] - x[receivers], receivers, senders, species, 7)
    tol = 1e-12 if dtype == torch.float64 else TOLERANCE[dtype]
    for a, b in zip(eager(*args), loaded(*args)):
        assert torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(a.abs().max())))
    # No edges at all: isolated atoms, a zero-size edge gradient.
    empty = torch.zeros(0, dtype=torch.long)
    energy_value, atom_energy, edge_grad = loaded(torch.zeros(0, 3, dtype=dtype), empty, empty, species[:3], 3)
    assert edge_grad.shape == (0, 3) and torch.isfinite(atom_energy).all()
    assert torch.allclose(atom_energy, eager(torch.zeros(0, 3, dtype=dtype), empty, empty, species[:3], 3)[1])


def test_double_backward_force_loss() -> None:
    """Training on forces differentiates the forces with respect to the parameters."""
    model = make_model(torch.float64)
    species, x = molecule(torch.float64)
    _, forces = energy_and_forces(model, species, x, create_graph=True)
    loss = ((forces - 0.1) ** 2).sum()
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    # Position-independent terms cannot change the forces.
    force_free = {"species_energy.weight", "readout.2.bias"}
    for name, grad in zip(names, grads):
        if name in force_free:
            assert grad is None or (grad == 0).all()
            continue
        assert grad is not None, f"{name} has no gradient"
        assert torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, f"{name} has a zero gradient"


def test_gradgradcheck_tiny_model() -> None:
    model = make_model(torch.float64, n_features=2, radial_hidden=4, n_basis=3, n_interactions=2, l_max=1)
    species, x = molecule(torch.float64, n=4, seed=8)
    receivers, senders = all_edges(x, model.cutoff)
    vectors = (x[senders] - x[receivers]).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda v: model(v, receivers, senders, species).sum(), (vectors,))


# ---- graphs and configuration ------------------------------------------------------------------

def test_isolated_atoms_and_no_edges(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    species = torch.tensor([0, 1, 3])
    empty = torch.zeros(0, dtype=torch.long)
    vectors = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    terms = model(vectors, empty, empty, species)
    assert terms.shape == (3, 1) and terms.dtype == dtype and torch.isfinite(terms).all()
    (grad,) = torch.autograd.grad(terms.sum(), vectors, allow_unused=True)
    assert grad is None or grad.shape == (0, 3)
    far = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0]], dtype=dtype)
    assert torch.allclose(energy(model, species, far), terms.sum())
    # An atom with no neighbours next to a bonded pair keeps its isolated energy.
    x = torch.tensor([[0.0, 0, 0], [1.1, 0, 0], [20.0, 0, 0]], dtype=dtype)
    r, s = all_edges(x, model.cutoff)
    assert torch.equal(model(x[s] - x[r], r, s, species)[2], terms[2])


def test_edge_order_does_not_matter() -> None:
    model = make_model(torch.float64)
    species, x = molecule(torch.float64, n=10, seed=7)
    receivers, senders = all_edges(x, model.cutoff)
    perm = torch.randperm(len(receivers), generator=torch.Generator().manual_seed(2))
    vectors = x[senders] - x[receivers]
    sorted_out = model(vectors, receivers, senders, species)
    shuffled_out = model(vectors[perm], receivers[perm], senders[perm], species)
    assert torch.allclose(sorted_out, shuffled_out, rtol=1e-12, atol=1e-12)


def test_build_model_and_spec_roundtrip() -> None:
    torch.manual_seed(0)
    model = build_model("equivariant", [1, 6, 7, 8], {"n_features": 8, "l_max": 1, "cutoff": 4.5})
    assert isinstance(model, EquivariantPotential) and model.kind == "equivariant"
    assert model.cutoff == 4.5 and model.num_interactions == 2
    assert model.hyperparameters() == {**EquivariantConfig().__dict__, "n_features": 8, "l_max": 1, "cutoff": 4.5}
    model = model.to(torch.float64)
    copy = model_from_spec(model_spec(model)).to(torch.float64)
    copy.load_state_dict(model.state_dict())
    species, x = molecule(torch.float64)
    assert torch.equal(energy(copy, species, x), energy(model, species, x))


def test_default_model_shapes() -> None:
    model = build_model("equivariant", ELEMENTS, {})
    assert model.irreps_hidden == ["32x0e+32x1o", "32x0e"]
    species, x = molecule(torch.float32, n=5)
    receivers, senders = all_edges(x, model.cutoff)
    assert model(x[senders] - x[receivers], receivers, senders, species).shape == (5, 1)


@pytest.mark.parametrize("bad", [{"n_features": 0}, {"l_max": -1}, {"n_interactions": 0}, {"cutoff": 0.0},
                                 {"n_basis": 0}, {"radial_hidden": 0}, {"avg_neighbors": 0.0}])
def test_bad_hyperparameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        EquivariantPotential(ELEMENTS, EquivariantConfig(**bad))
    with pytest.raises(ConfigError):
        build_model("equivariant", ELEMENTS, bad)


def test_unknown_hyperparameter_is_refused() -> None:
    with pytest.raises(ConfigError, match="n_sensitivities"):
        build_model("equivariant", ELEMENTS, {"n_sensitivities": 8})


def test_layers_on_two_ranks_with_exchanged_features_equal_forward() -> None:
    """As for HIP-NN: the blocks run layer by layer on two ranks, with the hidden irreps features
    (scalars, vectors, ...) exchanged between them, give `forward`'s energy and forces in float64."""
    assert_two_ranks_equal_forward(make_model(torch.float64, n_interactions=3), smallest_force=1e-3)
