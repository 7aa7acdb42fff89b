"""Large graphs in blocks: the pieces a deployed layered model (module.DeployedLayers) uses to
evaluate a graph block of receivers by block, so that its memory grows with the atoms, not
with the edges times the activations autograd keeps.

Evaluated whole, a model keeps every layer's edge tables (sensitivities E × ν, gathered
neighbour features E × F) for the backward pass: about 63 KB per atom for the demo student.
In blocks, layer by layer: a pass without gradients gives each layer's features z^{t+1} of every
node (N × F, small), then the layers run backwards, each block recomputed with gradients and
differentiated at once, so only one block's tables exist at a time. The price is one more
forward of every layer but the last (and of the edge features).

A block is a range of receivers [first, last) with its edges (receivers sorted), as a
subgraph: the block's rows first, then the other nodes its edges read (their `halo`), so the
gradient of a block with respect to the features it reads has the subgraph's rows, not N.
Every function here is TorchScript.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

# Graphs of up to WHOLE_EDGES edges run whole: in blocks a step takes about 1.5× as long
# (the recomputation), and below this size the whole graph's tables fit easily (the demo
# student: ~19,000 atoms of liquid water at ~55 edges per atom, ~0.9 GB). Larger graphs run in
# blocks of about BLOCK_EDGES edges (the student: ~1,200 atoms, ~55 MB of tables); smaller
# blocks were no faster, larger ones hold more memory for no gain (measured 2026-12-01, one
# thread, 12,288 atoms: 16k-131k edges per block within the machine's noise).
WHOLE_EDGES = 1 << 20
BLOCK_EDGES = 1 << 16


def receiver_order(receivers: torch.Tensor) -> Tuple[bool, torch.Tensor]:
    """Whether the edges must be reordered to group them by receiver, and that order."""
    if receivers.shape[0] > 1 and bool((receivers[1:] < receivers[:-1]).any()):
        return True, torch.argsort(receivers, stable=True)
    return False, torch.arange(receivers.shape[0], device=receivers.device)


def row_blocks(receivers: torch.Tensor, n_nodes: int, n_rows: int, block_edges: int) -> List[Tuple[int, int, int, int]]:
    """(first row, last row, first edge, last edge) of each block of rows [0, n_rows), receivers
    grouped in ascending order: cut where the running edge count crosses a multiple of
    `block_edges`, so a block holds about `block_edges` edges (or one row of more). At least one
    block, maybe empty."""
    edge_start = torch.cat([receivers.new_zeros(1), torch.cumsum(torch.bincount(receivers, minlength=n_nodes), 0)])
    n_edges = int(edge_start[n_rows])
    n_cuts = (n_edges + block_edges - 1) // block_edges
    targets = torch.arange(1, max(n_cuts, 1), device=edge_start.device, dtype=edge_start.dtype) * block_edges
    inner: List[int] = torch.searchsorted(edge_start[: n_rows + 1], targets).tolist()
    cuts: List[int] = [0]
    for cut in inner + [n_rows]:
        if cut > cuts[-1]:
            cuts.append(cut)
    if len(cuts) == 1:
        cuts.append(0)
    blocks: List[Tuple[int, int, int, int]] = []
    for k in range(len(cuts) - 1):
        first, last = cuts[k], cuts[k + 1]
        blocks.append((first, last, int(edge_start[first]), int(edge_start[last])))
    return blocks


def subgraph(receivers: torch.Tensor, senders: torch.Tensor, first: int, last: int,
             node_of: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block [first, last) as a graph of its own: (its nodes' global indices, receivers and
    senders in its numbering). Nodes: the block's rows first, then the other senders (sorted).
    `node_of` (N, int64) is scratch: each call writes the entries it reads."""
    n_rows = last - first
    outside = (senders < first) | (senders >= last)
    halo = torch.unique(senders[outside])
    rows = torch.arange(first, last, device=senders.device)
    node_of[rows] = rows - first
    node_of[halo] = torch.arange(n_rows, n_rows + halo.shape[0], device=senders.device)
    return torch.cat([rows, halo]), receivers - first, node_of[senders]
