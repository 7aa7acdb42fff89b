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


def cell_index(receivers: torch.Tensor, columns: torch.Tensor, n_columns: int, n_rows: int,
               n_nodes: int) -> torch.Tensor:
    """Flat index receiver·n_columns + column of each edge into an (n_rows, n_columns) table;
    edges into nodes ≥ n_rows (pruned rows, several MPI ranks) go to one extra cell, dropped."""
    index = receivers * n_columns + columns
    if n_rows < n_nodes:
        index = torch.where(receivers < n_rows, index, n_rows * n_columns)
    return index


def cell_sum(values: torch.Tensor, index: torch.Tensor, n_rows: int, n_columns: int) -> torch.Tensor:
    """(E, C) edge values summed into the cells of `cell_index` → (n_rows, n_columns, C), zeros in
    empty cells. One index_add (backward: one index_select), fast on CPU; in place into fresh
    zeros, as the out-of-place form would copy the whole table once more. With slots as columns,
    every cell holds at most one edge: the padded neighbour layout."""
    size = n_rows * n_columns
    flat = values.new_zeros((size + 1, values.shape[1])).index_add_(0, index, values)
    return flat[:size].view(n_rows, n_columns, values.shape[1])


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
