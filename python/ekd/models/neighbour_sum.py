"""HIP-NN's neighbour sums Σ_j s_ν(r_ij) z_j, two ways with one interface:

- `FusedSum`: ekd's own operators (`neighbour_sum.cpp`, loaded by `operators.py`): every
  receiver's edges summed in place, and the backward (and the second derivatives force-loss
  training needs) the same way. CPU only; on another device it does what `PaddedSum` does.
- `PaddedSum`: stock PyTorch, the padded neighbour layout and batched products (`graph.py`),
  for any device and when the operators are not built (or `EKD_FUSED=0`).

Both give the same sums (to rounding). A model takes `FusedSum` when the operators are loaded.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from .graph import cell_index, cell_sum, degree_blocks, neighbor_slots, padded_blocks, padded_environment
from .operators import fused_available


class PaddedSum(nn.Module):
    """The padded layout: `layout` → [slot senders, row positions (empty: rows in order),
    sensitivities of every degree block ...]."""

    def layout(self, sensitivity: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, n_rows: int,
               n_receivers: int, n_senders: int, block_rows: int) -> List[torch.Tensor]:
        """The layout of the edges into rows [0, n_rows) (receivers < n_receivers; edges into
        rows ≥ n_rows are dropped) from senders [0, n_senders), the rows of z."""
        slots = neighbor_slots(receivers, n_receivers)[0]
        cell, position, counts, widths = degree_blocks(receivers, slots, n_rows, n_receivers, block_rows)
        sensitivities, slot_senders = padded_blocks(sensitivity, senders, cell, counts, widths)
        rows = position if position is not None else receivers.new_zeros(0)
        return [slot_senders, rows] + sensitivities

    def environment(self, z: torch.Tensor, layout: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(R, ν, F) environments, and each node's row in them (None: row i is node i)."""
        position: Optional[torch.Tensor] = layout[1] if layout[1].numel() > 0 else None
        return padded_environment(z, layout[2:], layout[0]), position

    def species_environment(self, sensitivity: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                            species: torch.Tensor, n_species: int, n_rows: int, n_receivers: int) -> torch.Tensor:
        """Σ_j s_ν(r_ij) onehot(species_j) of nodes [0, n_rows) as (n_rows, ν, n_species): one
        scatter-add of the sensitivities by (receiver, sender species), not a batched product
        with a few species columns."""
        by_species = cell_index(receivers, species[senders], n_species, n_rows, n_receivers)
        environment = cell_sum(sensitivity, by_species, n_rows * n_species)
        return environment.view(n_rows, n_species, sensitivity.shape[1]).transpose(1, 2)


class FusedSum(nn.Module):
    """ekd's operators: `layout` → [sensitivities in receiver order, row_ptr, senders]
    (`neighbour_sum.cpp`); off the CPU, `PaddedSum`'s."""

    def __init__(self) -> None:
        super().__init__()
        self.padded = PaddedSum()

    def layout(self, sensitivity: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, n_rows: int,
               n_receivers: int, n_senders: int, block_rows: int) -> List[torch.Tensor]:
        if sensitivity.device.type != "cpu":
            return self.padded.layout(sensitivity, receivers, senders, n_rows, n_receivers, n_senders, block_rows)
        order, row_ptr, sorted_senders = torch.ops.ekd.edge_layout(receivers, senders, n_rows, n_senders)
        if order.numel() > 0 or sorted_senders.numel() != senders.numel():  # not in receiver order, or some dropped
            sensitivity = sensitivity.index_select(0, order)
        return [sensitivity, row_ptr, sorted_senders]

    def environment(self, z: torch.Tensor, layout: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if z.device.type != "cpu":
            return self.padded.environment(z, layout)
        return torch.ops.ekd.environment(layout[0], z, layout[1], layout[2], z.shape[0]), None

    def species_environment(self, sensitivity: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                            species: torch.Tensor, n_species: int, n_rows: int, n_receivers: int) -> torch.Tensor:
        """`PaddedSum.species_environment` with ekd's `species_sum` (`species_sum.cpp`), the edges
        in `layout`'s order and each labelled with its sender's species."""
        if sensitivity.device.type != "cpu":
            return self.padded.species_environment(sensitivity, receivers, senders, species, n_species, n_rows,
                                                   n_receivers)
        layout = self.layout(sensitivity, receivers, senders, n_rows, n_receivers, species.shape[0], 0)
        sender_species = species.index_select(0, layout[2]).to(torch.int64)
        return torch.ops.ekd.species_sum(layout[0], sender_species, layout[1], n_species)


def neighbour_sum() -> nn.Module:
    """The sum a new model uses: fused when ekd's operators are loaded."""
    return FusedSum() if fused_available() else PaddedSum()
