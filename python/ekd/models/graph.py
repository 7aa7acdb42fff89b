"""Graph operations shared by the models: neighbour slots and the padded neighbour layout.

Message passing is done in a padded layout (node, neighbour slot, channel): a node's
incoming edges occupy slots 0..deg-1. Sums over neighbours then become batched matrix
products, which never materialise an (edges × sensitivities × features) tensor and run
an order of magnitude faster on CPU than scatter-adds over edges.
"""

from __future__ import annotations

from typing import List, Tuple

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
    # index_copy into flat rows (backward: one index_select), faster on CPU than index_put
    flat = values.new_zeros((n_nodes * max_degree, values.shape[1]))
    flat = flat.index_copy(0, receivers * max_degree + slots, values)
    return flat.view(n_nodes, max_degree, values.shape[1])


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of `values` into `size` bins given by `index`."""
    out = torch.zeros((size,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)


def rows_per_layer(receivers: torch.Tensor, senders: torch.Tensor, n_nodes: int, n_layers: int,
                   n_energy: int) -> List[int]:
    """How many nodes, a prefix [0, R_t), each message-passing layer t must compute when only the
    energies of nodes [0, n_energy) are wanted (-1: all): the last layer needs those nodes, each
    earlier layer the nodes that send to the next layer's. On several MPI ranks the pair style
    orders nodes by graph distance from its own atoms, so this drops the ghost shells' work;
    with every energy wanted (training, one rank) every R_t is n_nodes."""
    rows = [n_nodes for _ in range(n_layers)]
    if n_energy < 0 or n_energy >= n_nodes:
        return rows
    needed = n_energy
    for t in range(n_layers - 1, -1, -1):
        rows[t] = needed
        keep = receivers < needed
        if bool(keep.any()):
            needed = max(needed, int(senders[keep].max()) + 1)
    return rows
