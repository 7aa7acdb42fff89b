"""Graph operations shared by the models: neighbour slots and the padded neighbour layout.

Message passing is done in a padded layout (node, neighbour slot, channel): a node's
incoming edges occupy slots 0..deg-1. Sums over neighbours then become batched matrix
products, which never materialise an (edges × sensitivities × features) tensor and run
an order of magnitude faster on CPU than scatter-adds over edges.
"""

from __future__ import annotations

from typing import Tuple

import torch


def neighbor_slots(receivers: torch.Tensor, n_nodes: int) -> Tuple[torch.Tensor, int]:
    """Slot of each edge within its receiver's neighbour list, and the largest degree."""
    n_edges = receivers.shape[0]
    if n_edges == 0:
        return torch.zeros_like(receivers), 0
    counts = torch.bincount(receivers, minlength=n_nodes)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n_edges, device=receivers.device)
    if bool((receivers[1:] < receivers[:-1]).any()):
        order = torch.argsort(receivers, stable=True)
        rank = torch.empty_like(order).index_copy_(0, order, rank)
    return rank - first[receivers], int(counts.max())


def to_padded(values: torch.Tensor, receivers: torch.Tensor, slots: torch.Tensor,
              n_nodes: int, max_degree: int) -> torch.Tensor:
    """(E, C) edge values → (N, max_degree, C), zeros in empty slots."""
    padded = torch.zeros((n_nodes, max_degree, values.shape[1]), dtype=values.dtype, device=values.device)
    return padded.index_put((receivers, slots), values)


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of `values` into `size` bins given by `index`."""
    out = torch.zeros((size,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)
