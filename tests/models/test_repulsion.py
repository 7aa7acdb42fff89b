"""The core repulsion (ekd.models.repulsion): zero wherever the onsets say the data reach, the
ZBL energy below the switch, smooth and repulsive in between, forces that are −dE/dR, the same
through every evaluation path of a deployed file (whole, layer by layer, in blocks, TorchScript),
carried by the model spec, and set by training from the training data's shortest distances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.errors import ConfigError
from ekd.export import deploy, graph_of
from ekd.export.module import chain_layers
from ekd.models import HIPNN, HIPNNConfig, model_from_spec, model_spec
from ekd.models.equivariant import EquivariantConfig, EquivariantPotential
from ekd.models.io import load_model

ELEMENTS = [1, 8]
ONSETS = [[1.2, 0.9], [0.9, 2.0]]          # H–H, O–H / H–O, O–O (Å)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def zbl(z1: float, z2: float, r: float) -> float:
    """The ZBL universal repulsion (eV), Ziegler, Biersack and Littmark (1985), written out here."""
    a = 0.46850 / (z1 ** 0.23 + z2 ** 0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x) \
        + 0.02817 * np.exp(-0.20162 * x)
    return 14.399645 * z1 * z2 / r * phi


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(5)
    return {"hipnn": HIPNN(ELEMENTS, HIPNNConfig(n_features=8, n_sensitivities=4, n_interactions=2, n_atom_layers=1,
                                                 cutoff=3.0, soft_max=2.5)).double(),
            "equivariant": EquivariantPotential(ELEMENTS, EquivariantConfig(n_features=4, cutoff=3.0)).double()}


def water(oh: float) -> tuple[np.ndarray, np.ndarray]:
    """Species indices and positions of a water whose first O–H bond is `oh` Å (the other 1.01 Å,
    H–H beyond 1.3 Å)."""
    return np.array([1, 0, 0]), np.array([[0.0, 0, 0], [oh, 0, 0], [-0.90, 0.45, 0]])


def energy(module: torch.nn.Module, species: np.ndarray, positions: np.ndarray) -> float:
    g = graph_of(species, positions, 3.0, None)
    return float(module(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)[0])


@pytest.mark.parametrize("kind", ["hipnn", "equivariant"])
def test_zero_where_the_data_reach_and_zbl_below(kind: str) -> None:
    model = models()[kind]
    plain = deploy(model)
    without = {oh: energy(plain, *water(oh)) for oh in (0.4, 0.5, 0.7, 0.8, 0.9, 0.96)}
    model.core_repulsion.set_onsets(ONSETS)
    added = {oh: energy(deploy(model), *water(oh)) - e for oh, e in without.items()}
    assert added[0.96] == 0.0 and added[0.9] == 0.0          # at and beyond the onset: exactly nothing
    for oh in (0.4, 0.5):                                      # below 0.7 × onset: the whole ZBL energy
        assert added[oh] == pytest.approx(zbl(8, 1, oh), rel=1e-12)
    assert 0.0 < added[0.8] < zbl(8, 1, 0.8) and 0.0 < added[0.7] < zbl(8, 1, 0.7)   # switched
    assert added[0.4] > added[0.5] > added[0.7] > added[0.8] > 0.0                       # repulsive


@pytest.mark.parametrize("kind", ["hipnn", "equivariant"])
def test_forces_are_the_energy_gradient(kind: str) -> None:
    """Central differences (h = 1e-5 Å, float64) on a water whose O–H bond (0.75 Å) and H–H
    contact sit in the switch, and whose other bond is below it."""
    model = models()[kind]
    model.core_repulsion.set_onsets(ONSETS)
    module = deploy(model)
    species, positions = water(0.75)
    positions[2] = [-0.2, 0.55, 0.1]
    g = graph_of(species, positions, 3.0, None)
    edge_grad = module(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)[2]
    forces = torch.zeros(3, 3, dtype=torch.float64)
    forces.index_add_(0, g.receivers, edge_grad).index_add_(0, g.senders, -edge_grad)   # F = −dE/dx
    h = 1e-5
    for atom in range(3):
        for axis in range(3):
            up, down = positions.copy(), positions.copy()
            up[atom, axis] += h
            down[atom, axis] -= h
            numeric = -(energy(module, species, up) - energy(module, species, down)) / (2 * h)
            assert float(forces[atom, axis]) == pytest.approx(numeric, abs=1e-6 * max(1.0, abs(numeric)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["hipnn", "equivariant"])
def test_every_evaluation_path_agrees(kind: str, dtype: torch.dtype) -> None:
    """Whole graph, layers chained (§2b, as the pair style runs them on several ranks) and blocks
    (§2d) of the TorchScript file, on a periodic box with contacts below every onset."""
    model = models()[kind].to(dtype)
    model.core_repulsion.set_onsets(ONSETS)
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.3
    positions = grid + rng.uniform(-0.35, 0.35, grid.shape)      # contacts from ~0.6 Å up
    species = rng.integers(0, 2, len(grid))
    g = graph_of(species, positions, model.cutoff, np.eye(3) * 3.9)
    vectors = g.edge_vectors.to(dtype)
    module = torch.jit.script(deploy(model, whole_edges=0, block_edges=40))
    whole = module.whole(vectors, g.receivers, g.senders, g.species, g.n_local)
    blocked = module(vectors, g.receivers, g.senders, g.species, g.n_local)
    chained = chain_layers(module, model.num_interactions, vectors, g.receivers, g.senders, g.species)
    plain = deploy(models()[kind].to(dtype))(vectors, g.receivers, g.senders, g.species, g.n_local)
    assert float(whole[0] - plain[0]) > 1.0                      # the repulsion is there
    for name, got, want in (("blocks energy", blocked[1], whole[1]), ("blocks edge_grad", blocked[2], whole[2]),
                            ("layers energy", chained[0], whole[1]), ("layers edge_grad", chained[1], whole[2])):
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= TOLERANCE[dtype] * scale, name


def test_skipping_leaves_the_term_out_until_the_block_ends() -> None:
    """What training does around its steps (the term is zero on training conformations anyway)."""
    model = models()["hipnn"]
    plain = energy(deploy(model), *water(0.5))
    model.core_repulsion.set_onsets(ONSETS)
    with model.core_repulsion.skipping():
        assert energy(deploy(model), *water(0.5)) == plain
    assert energy(deploy(model), *water(0.5)) == pytest.approx(plain + zbl(8, 1, 0.5), rel=1e-12)


def test_the_spec_carries_the_onsets_and_older_specs_have_none() -> None:
    model = models()["hipnn"]
    assert "core_repulsion" not in model_spec(model)
    model.core_repulsion.set_onsets(ONSETS)
    rebuilt = model_from_spec(model_spec(model))
    assert rebuilt.core_repulsion.enabled and rebuilt.core_repulsion.onsets() == ONSETS
    with pytest.raises(ValueError, match="symmetric"):
        model.core_repulsion.set_onsets([[1.2, 0.9], [0.8, 2.0]])
    with pytest.raises(ValueError, match="2 x 2"):
        model.core_repulsion.set_onsets([[1.0]])
    damaged = {**model_spec(model), "core_repulsion": [[1.2, -0.9], [-0.9, 2.0]]}
    with pytest.raises(ConfigError, match="model spec core_repulsion: .*non-negative"):
        model_from_spec(damaged)


def test_training_sets_the_onsets_to_the_data_shortest_distances(tiny_run: Path) -> None:
    """The tiny run's student: onsets = 0.85 × the shortest distance of each element pair among its
    training conformations (none shorter there, so the repulsion is zero on all of them)."""
    import json

    from ekd.config import load_config
    from ekd.data import GraphData, read_data
    from ekd.training.floor import ONSET_FRACTION, shortest_pair_distances

    model = load_model(tiny_run / "student/checkpoint.pt")
    assert model.core_repulsion.enabled
    config = load_config(tiny_run / "config.toml")
    split = json.loads((tiny_run / "split.json").read_text())
    graph = GraphData(read_data(config.data), model.elements, model.cutoff, torch.float64)
    shortest = shortest_pair_distances(graph, np.asarray(split["train"]), model.n_species)
    onsets = np.array(model.core_repulsion.onsets())
    seen = np.isfinite(shortest)
    assert seen.any() and np.array_equal(onsets[seen], ONSET_FRACTION * shortest[seen])
