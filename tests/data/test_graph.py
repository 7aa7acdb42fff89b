"""Neighbour pairs, batching, splits and reference energies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list

from ekd.data import (AtomsData, DataSpec, GraphData, SplitSpec, fit_reference_energies, make_split,
                      neighbor_pairs, read_data, residual_energy)
from ekd.errors import DataError
from tests.conftest import random_molecule


def molecules(n_conf: int = 20, seed: int = 0) -> AtomsData:
    species, positions, n_atoms = [], [], []
    for k in range(n_conf):
        z, x = random_molecule(3 + k % 5, seed + k)
        species.append(z)
        positions.append(x)
        n_atoms.append(len(z))
    rng = np.random.default_rng(seed)
    return AtomsData(np.concatenate(species), np.concatenate(positions), np.array(n_atoms),
                     rng.normal(size=n_conf), group=np.arange(n_conf) % 3, group_names=["a", "b", "c"])


def test_molecule_pairs_match_brute_force() -> None:
    data = molecules()
    pairs = neighbor_pairs(data, 2.5)
    offsets, pair_offsets = data.offsets, pairs.offsets
    for c in range(len(data)):
        x = data.positions[offsets[c]:offsets[c + 1]]
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        expected = {(i, j) for i in range(len(x)) for j in range(len(x)) if i != j and d[i, j] < 2.5}
        got = set(zip(pairs.receiver[pair_offsets[c]:pair_offsets[c + 1]].tolist(),
                      pairs.sender[pair_offsets[c]:pair_offsets[c + 1]].tolist()))
        assert got == expected


def test_periodic_pairs_match_ase() -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    data = AtomsData(atoms.numbers, atoms.positions, np.array([len(atoms)]), np.zeros(1),
                     cell=np.array([atoms.cell[:]]), pbc=np.array([atoms.pbc]))
    pairs = neighbor_pairs(data, 4.0)
    i, j, d = neighbor_list("ijd", atoms, 4.0)
    assert len(pairs.receiver) == len(i)
    vectors = data.positions[pairs.sender] + pairs.shift - data.positions[pairs.receiver]
    assert np.allclose(np.sort(np.linalg.norm(vectors, axis=1)), np.sort(d))


def test_batch_is_the_union_of_its_conformations() -> None:
    data = molecules()
    graph = GraphData(data, [1, 6, 7, 8], 2.5, dtype=torch.float64)
    ids = np.array([7, 2, 11])
    batch = graph.batch(ids)
    sub = data.subset(ids)
    assert torch.allclose(batch.positions, torch.as_tensor(sub.positions))
    assert batch.n_atoms.tolist() == sub.n_atoms.tolist()
    assert torch.allclose(batch.targets["energy"], torch.as_tensor(data.energy[ids]))
    # every pair stays inside its conformation and within the cutoff
    assert torch.equal(batch.conformation[batch.receivers], batch.conformation[batch.senders])
    lengths = (batch.positions[batch.senders] - batch.positions[batch.receivers]).norm(dim=1)
    assert float(lengths.max()) < 2.5
    assert len(batch.receivers) == int(neighbor_pairs(sub, 2.5).n_pairs.sum())


def test_split_is_deterministic_and_disjoint() -> None:
    data = molecules(100)
    a, b = make_split(data, SplitSpec(seed=3)), make_split(data, SplitSpec(seed=3))
    c = make_split(data, SplitSpec(seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    everything = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(np.unique(everything)) == len(data) == len(everything)


def test_split_has_forces_selects_exactly_the_labelled(embedded_data) -> None:
    data = read_data(DataSpec(str(embedded_data), energy_key="ccsd(t)_dz.energy", forces_key="ccsd(t)_dz.forces"))
    split = make_split(data, SplitSpec(test_selection="has_forces"))
    assert np.array_equal(split["test"], np.flatnonzero(data.has_forces))
    assert not data.has_forces[split["train"]].any()


def test_reference_energies_recover_a_linear_model() -> None:
    data = molecules(60)
    truth = np.array([-0.5, -38.0, -54.6, -75.1])
    counts = np.stack([np.bincount(np.searchsorted([1, 6, 7, 8], data.species[data.offsets[c]:data.offsets[c + 1]]),
                                   minlength=4) for c in range(len(data))])
    data.energy = counts @ truth + 0.01 * np.random.default_rng(0).normal(size=len(data))
    fitted = fit_reference_energies(data, [1, 6, 7, 8])
    assert np.allclose(fitted, truth, atol=0.05)
    assert np.abs(residual_energy(data, [1, 6, 7, 8], fitted)).max() < 0.05


def test_unknown_element_is_named() -> None:
    data = molecules(5)
    with pytest.raises(DataError, match=r"element N \(Z=7\) is not one the model knows \(H C O\)"):
        GraphData(data, [1, 6, 8], 2.5)


def test_empty_and_bad_energy_refused() -> None:
    empty = AtomsData(np.zeros(0), np.zeros((0, 3)), np.zeros(0), np.zeros(0), source="empty.xyz")
    with pytest.raises(DataError, match="empty.xyz: the data set is empty"):
        empty.validate()
    data = molecules(4)
    data.energy[2] = np.inf
    with pytest.raises(DataError, match="energy of conformation 2 is inf"):
        data.validate()
