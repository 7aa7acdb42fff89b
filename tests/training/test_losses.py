"""The loss: RMSE + MAE by hand, ekd's one-operator version against PyTorch operators, and the
conformation weights (`[data] added_weight`): a conformation of weight 2 counts exactly as that
conformation twice, in every term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.data import AtomsData, GraphData
from ekd.models import build_model, predict
from ekd.training import TrainConfig
from ekd.models.operators import fused_available
from ekd.training.losses import loss_terms, rmse_plus_mae, stock_rmse_plus_mae
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


@pytest.mark.skipif(not fused_available(), reason="ekd's operators are not built (python -m ekd.plugin build)")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_one_operator_loss_equals_stock(dtype: torch.dtype, tolerance: float) -> None:
    """Value and gradient of ekd::rmse_plus_mae against PyTorch operators: per conformation and per
    atom (3 components), weighted or not, with unlabelled (NaN) rows; first and second
    derivatives by finite differences; no finite label: None; bad shapes refused by name."""
    g = torch.Generator().manual_seed(0)
    for shape in [(9,), (11, 3)]:
        target = torch.randn(shape, generator=g, dtype=torch.float64)
        target[2] = float("nan")
        weight = torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.1
        for w in (None, weight):
            p = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
            args = (target.to(dtype), None if w is None else w.to(dtype))
            fused, stock = rmse_plus_mae(p, *args), stock_rmse_plus_mae(p, *args)
            assert abs(float(fused.detach()) - float(stock.detach())) <= tolerance * float(stock.detach())
            (a,), (b,) = torch.autograd.grad(fused, p), torch.autograd.grad(stock, p)
            assert (a - b).abs().max() <= tolerance * b.abs().max() and a[2].abs().max() == 0
            if dtype == torch.float64:
                assert torch.autograd.gradcheck(lambda q: torch.ops.ekd.rmse_plus_mae(q, *args), (p,))
                assert torch.autograd.gradgradcheck(lambda q: torch.ops.ekd.rmse_plus_mae(q, *args), (p,))
    assert rmse_plus_mae(torch.zeros(3), torch.full((3,), float("nan"))) is None
    with pytest.raises(RuntimeError, match="prediction \\[3\\] and target \\[4\\] must have the same shape"):
        rmse_plus_mae(torch.zeros(3), torch.zeros(4))
    with pytest.raises(RuntimeError, match="weight must be one value per row \\(3\\)"):
        rmse_plus_mae(torch.zeros(3, 3), torch.zeros(3, 3), torch.ones(9))
    with pytest.raises(RuntimeError, match="expects floating-point prediction and target on the CPU"):
        torch.ops.ekd.rmse_plus_mae(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), None)
    with pytest.raises(RuntimeError, match="the weights are constants; they cannot require a gradient"):
        rmse_plus_mae(torch.zeros(3), torch.zeros(3), torch.ones(3, requires_grad=True))
    # a non-contiguous prediction (a column): the same value and gradient as its copy
    column = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: torch.ops.ekd.rmse_plus_mae(q[:, 1], target, None), (column,))
    assert torch.autograd.gradgradcheck(lambda q: torch.ops.ekd.rmse_plus_mae(q[:, 1], target, None), (column,))


def test_batches_say_which_targets_are_complete() -> None:
    """A target finite everywhere is named in every batch's `complete` (the loss then skips its
    check); one with a NaN is not, and its loss leaves the NaN rows out."""
    molecules = [random_molecule(n, seed) for seed, n in enumerate([3, 5])]
    data = AtomsData(species=np.concatenate([z for z, _ in molecules]),
                     positions=np.concatenate([x for _, x in molecules]),
                     n_atoms=[len(z) for z, _ in molecules], energy=np.array([1.0, np.nan]))
    graph = GraphData(data, [1, 6, 7, 8], 4.0, torch.float64, atom_labels={"forces": np.ones((8, 3))})
    batch = graph.batch(np.arange(2))
    assert batch.complete == {"forces"}
    value = rmse_plus_mae(torch.tensor([3.0, 5.0], dtype=torch.float64), batch.targets["energy"])
    assert float(value) == pytest.approx(4.0, rel=1e-15)


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
