"""The training loss: weighted RMSE + MAE terms for energies, forces and atomic energies, the
uncertainty head's term, and HIP-NN's hierarchicality regulariser."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..data import Batch
from ..models import Prediction
from ..models.graph import scatter_sum
from ..models.operators import fused_available
from .config import TrainConfig


def rmse_plus_mae(prediction: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  complete: bool = False) -> Optional[torch.Tensor]:
    """RMSE + MAE over the finite entries of `target`; None when there are none. With `weight`
    (one per row of `target`), both are weighted means: √(Σw·d²/Σw) + Σw·|d|/Σw. `complete`:
    the caller knows every entry is finite (`Batch.complete`), which saves looking.

    On the CPU with ekd's operators loaded this is one operator (`training/loss.cpp`; a training
    step is bound by its count of operators), else `stock_rmse_plus_mae`."""
    if not complete and not bool(torch.isfinite(target).any()):
        return None
    if target.device.type == "cpu" and fused_available():
        return torch.ops.ekd.rmse_plus_mae(prediction, target, weight)  # skips non-finite targets
    return stock_rmse_plus_mae(prediction, target, weight, complete)


def stock_rmse_plus_mae(prediction: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                        complete: bool = False) -> torch.Tensor:
    """`rmse_plus_mae` in PyTorch operators (any device), for targets with a finite entry."""
    mask = None if complete else torch.isfinite(target)
    if mask is not None and bool(mask.all()):
        mask = None  # the usual case: no gather of the labelled entries, nor its backward
    diff = prediction - target if mask is None else prediction[mask] - target[mask]
    if weight is None:
        return diff.square().mean().sqrt() + diff.abs().mean()
    w = entry_weights(weight, target) if mask is None else entry_weights(weight, target)[mask]
    total = w.sum()
    return ((w * diff.square()).sum() / total).sqrt() + (w * diff.abs()).sum() / total


def entry_weights(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Row weights broadcast over the entries of `target` (e.g. one per atom over its 3 components)."""
    return weight.reshape(weight.shape + (1,) * (target.dim() - 1)).expand_as(target)


def row_weights(batch: Batch, per_atom: bool) -> Optional[torch.Tensor]:
    """The batch's conformation loss weights (`[data] added_weight`), per atom for atom terms."""
    weight = batch.targets.get("weight")
    if weight is None:
        return None
    return weight.index_select(0, batch.conformation) if per_atom else weight


# Teachers' force spreads below this (eV/Å) count as this in the log-space uncertainty loss: an
# isolated atom's spread is 0, and log(0) would dominate the loss.
SPREAD_FLOOR = 1e-3


def log_ratio_loss(uncertainty: torch.Tensor, spread: torch.Tensor,
                   weight: Optional[torch.Tensor] = None, complete: bool = False) -> Optional[torch.Tensor]:
    """RMSE + MAE of log(u) − log(σ): the spreads span orders of magnitude between a calm and a
    strained atom, and what matters is their ranking and ratio, not their absolute size."""
    return rmse_plus_mae(torch.log(uncertainty), torch.log(spread.clamp_min(SPREAD_FLOOR)), weight, complete)


def hierarchicality(terms: torch.Tensor, conformation: torch.Tensor, n_conformations: int,
                    zeroth_order: torch.Tensor, epsilon: float = 1e-2) -> torch.Tensor:
    """Mean over conformations of Σ_l (E_l)² / ((E_{l-1})² + ε) for HIP-NN's energy levels.

    The zeroth level includes the reference energies, so it is the full composition energy
    and the penalty only asks deeper interaction layers to contribute less than shallower ones.
    """
    levels = scatter_sum(terms, conformation, n_conformations)          # (B, T)
    levels = torch.cat([levels[:, :1] + zeroth_order.unsqueeze(1), levels[:, 1:]], dim=1)
    ratios = levels[:, 1:].square() / (levels[:, :-1].square() + epsilon)
    return ratios.sum(dim=1).mean()


def loss_terms(prediction: Prediction, batch: Batch, config: TrainConfig,
               zeroth_order: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Each weighted loss term that has labels in this batch (unweighted values)."""
    terms: Dict[str, torch.Tensor] = {}
    conformation_weight = row_weights(batch, per_atom=False)
    atom_weight = row_weights(batch, per_atom=True)  # once for every atom term
    wanted = {"energy": (config.energy_weight, prediction.energy),
              "forces": (config.forces_weight, prediction.forces),
              "atom_energy": (config.atom_energy_weight, prediction.atom_energy)}
    for name, (weight, predicted) in wanted.items():
        if weight > 0 and predicted is not None and name in batch.targets:
            value = rmse_plus_mae(predicted, batch.targets[name],
                                  conformation_weight if name == "energy" else atom_weight, name in batch.complete)
            if value is not None:
                terms[name] = value
    if config.uncertainty_weight > 0 and prediction.uncertainty is not None and "uncertainty" in batch.targets:
        value = log_ratio_loss(prediction.uncertainty, batch.targets["uncertainty"], atom_weight,
                               "uncertainty" in batch.complete)
        if value is not None:
            terms["uncertainty"] = value
    if config.hierarchicality > 0 and prediction.terms.shape[1] > 1 and zeroth_order is not None:
        terms["hierarchicality"] = hierarchicality(prediction.terms, batch.conformation,
                                                   batch.n_conformations, zeroth_order)
    return terms


def total_loss(terms: Dict[str, torch.Tensor], config: TrainConfig) -> torch.Tensor:
    weights = {"energy": config.energy_weight, "forces": config.forces_weight,
               "atom_energy": config.atom_energy_weight, "uncertainty": config.uncertainty_weight,
               "hierarchicality": config.hierarchicality}
    return sum(weights[name] * value for name, value in terms.items())  # type: ignore[return-value]
