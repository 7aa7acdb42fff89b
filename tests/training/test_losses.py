"""The loss's conformation weights (`[data] added_weight`): a conformation of weight 2 counts
exactly as that conformation twice, in every term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.data import AtomsData, GraphData
from ekd.models import build_model, predict
from ekd.training import TrainConfig
from ekd.training.losses import loss_terms, rmse_plus_mae
from tests.conftest import random_molecule


def test_weighted_rmse_plus_mae_by_hand() -> None:
    d = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    w = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    expected = np.sqrt((1 + 3 * 4 + 0.5 * 16) / 4.5) + (1 + 3 * 2 + 0.5 * 4) / 4.5
    assert float(rmse_plus_mae(d, torch.zeros(3, dtype=torch.float64), w)) == pytest.approx(expected, rel=1e-15)
    # per-atom weights over 3 components, with unlabelled (NaN) rows left out of the sums
    target = torch.tensor([[0.0, 0, 0], [np.nan, np.nan, np.nan], [0, 0, 0]], dtype=torch.float64)
    f = torch.tensor([[1.0, 2, 2], [5, 5, 5], [0, 0, 3]], dtype=torch.float64)
    expected = np.sqrt((9 + 0.5 * 9) / (3 * 1.5)) + (5 + 0.5 * 3) / (3 * 1.5)
    assert float(rmse_plus_mae(f, target, w)) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_weight_two_equals_the_conformation_twice(dtype: torch.dtype) -> None:
    molecules = [random_molecule(n, seed) for seed, n in enumerate([3, 5, 4])]
    rng = np.random.default_rng(1)
    data = AtomsData(species=np.concatenate([z for z, _ in molecules]),
                     positions=np.concatenate([x for _, x in molecules]),
                     n_atoms=[len(z) for z, _ in molecules], energy=rng.normal(size=3))
    labels = {"forces": rng.normal(size=(data.n_total_atoms, 3)),
              "atom_energy": rng.normal(size=data.n_total_atoms),
              "uncertainty": rng.uniform(0.01, 1.0, size=data.n_total_atoms)}
    config = TrainConfig(forces_weight=0.5, atom_energy_weight=0.2, uncertainty_weight=0.1)
    torch.manual_seed(0)
    model = build_model("hipnn", [1, 6, 7, 8], {"n_features": 8, "n_sensitivities": 4, "n_interactions": 1,
                                                 "n_atom_layers": 1, "cutoff": 4.0, "soft_max": 3.5,
                                                 "uncertainty_head": 4}).to(dtype)
    weighted = GraphData(data, [1, 6, 7, 8], 4.0, dtype, atom_labels=labels,
                         conformation_labels={"weight": np.array([1.0, 2.0, 1.0])}).batch(np.arange(3))
    twice = GraphData(data, [1, 6, 7, 8], 4.0, dtype, atom_labels=labels).batch(np.array([0, 1, 1, 2]))
    a = loss_terms(predict(model, weighted, forces=True, create_graph=True, uncertainty=True), weighted, config)
    b = loss_terms(predict(model, twice, forces=True, create_graph=True, uncertainty=True), twice, config)
    assert set(a) == set(b) == {"energy", "forces", "atom_energy", "uncertainty"}
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for name in a:
        assert float(a[name].detach()) == pytest.approx(float(b[name].detach()), rel=tolerance), name
