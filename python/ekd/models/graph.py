"""Graph operations shared by the models: neighbour slots and the padded neighbour layout.

Message passing is done in a padded layout (node, neighbour slot, channel): a node's
incoming edges occupy slots 0..deg-1. Sums over neighbours then become batched matrix
products, which never materialise an (edges × sensitivities × features) tensor and run
an order of magnitude faster on CPU than scatter-adds over edges. Large graphs are padded in
blocks of rows sorted by degree (`degree_blocks`), so few slots stay empty.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

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


def cell_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """(E, C) edge values summed into `size` cells (index `size`: the dropped cell) → (size, C),
    zeros in empty cells. One index_add (backward: one index_select), fast on CPU; in place into
    fresh zeros, as the out-of-place form would copy the whole table once more."""
    flat = values.new_zeros((size + 1, values.shape[1])).index_add_(0, index, values)
    return flat[:size]


def degree_blocks(receivers: torch.Tensor, slots: torch.Tensor, n_rows: int, n_nodes: int,
                  block_rows: int) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[int], List[int]]:
    """The padded neighbour layout of nodes [0, n_rows) in blocks: rows sorted by degree, cut into
    blocks of `block_rows`, each padded to its own largest degree. Far fewer empty slots than one
    table padded to the largest degree, and each block's batched product works in cache.

    Returns the cell of each edge in the concatenated blocks (edges into other nodes: the dropped
    cell), each row's position in degree order (None: rows in their own order, when one block
    holds them all), and the rows and width of every block."""
    degree = torch.bincount(receivers, minlength=n_nodes)[:n_rows]
    if n_rows <= block_rows:  # one block: no sorting
        width = int(degree.max()) if n_rows > 0 else 0
        return cell_index(receivers, slots, width, n_rows, n_nodes), None, [n_rows], [width]
    order = torch.argsort(degree, stable=True)
    position = torch.empty_like(order).index_copy_(0, order, torch.arange(n_rows, device=receivers.device))
    sorted_degree = degree[order]
    counts: List[int] = []
    widths: List[int] = []
    offsets: List[int] = []
    total = 0
    for start in range(0, n_rows, block_rows):
        count = min(block_rows, n_rows - start)
        width = int(sorted_degree[start + count - 1])
        offsets.append(total)
        counts.append(count)
        widths.append(width)
        total += count * width
    pruned = n_rows < n_nodes  # edges into nodes [n_rows, n_nodes) may exist: they go to the dropped cell
    rank = position[torch.where(receivers < n_rows, receivers, torch.zeros_like(receivers)) if pruned else receivers]
    block = torch.div(rank, block_rows, rounding_mode="floor")
    block_offset = torch.tensor(offsets, dtype=receivers.dtype, device=receivers.device)[block]
    block_width = torch.tensor(widths, dtype=receivers.dtype, device=receivers.device)[block]
    cell = block_offset + (rank - block * block_rows) * block_width + slots
    if pruned:
        cell = torch.where(receivers < n_rows, cell, torch.full_like(cell, total))
    return cell, position, counts, widths


def padded_blocks(sensitivity: torch.Tensor, senders: torch.Tensor, cell: torch.Tensor, counts: List[int],
                  widths: List[int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """The sensitivities of every block of `graph.degree_blocks` as (rows, ν, width), and one
    table of 1 + the sender of every slot of every block (0 in empty slots: a row of zeros)."""
    sizes = [count * width for count, width in zip(counts, widths)]
    total = 0
    for size in sizes:
        total += size
    # split, not slices: its backward is one concatenation, not a zero-filled table per block
    # (and no split of a single block, whose backward would copy the whole table)
    table = cell_sum(sensitivity, cell, total)
    tables = [table] if len(sizes) == 1 else table.split(sizes)
    sensitivities = [table.view(count, width, sensitivity.shape[1]).transpose(1, 2)
                     for table, count, width in zip(tables, counts, widths)]
    return sensitivities, cell_sum((senders + 1).unsqueeze(-1), cell, total).squeeze(-1)


def padded_environment(z: torch.Tensor, sensitivities: List[torch.Tensor], slot_senders: torch.Tensor) -> torch.Tensor:
    """Σ_j s_ν(r_ij) z_j as (R, ν, F), rows in the blocks' (degree) order."""
    # one gather of every slot's sender features (its backward one scatter-add; index_select is
    # several times faster on CPU than advanced indexing), split into the blocks
    with_zero_row = torch.cat([z.new_zeros(1, z.shape[1]), z])
    neighbours = with_zero_row.index_select(0, slot_senders)
    sizes = [s.shape[0] * s.shape[2] for s in sensitivities]
    blocks = [neighbours] if len(sizes) == 1 else neighbours.split(sizes)
    environments: List[torch.Tensor] = []
    for sensitivity_t, block in zip(sensitivities, blocks):
        environments.append(torch.bmm(sensitivity_t, block.view(sensitivity_t.shape[0], sensitivity_t.shape[2],
                                                                 z.shape[1])))
    return environments[0] if len(environments) == 1 else torch.cat(environments)


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
