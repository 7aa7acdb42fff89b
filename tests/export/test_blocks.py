"""Graphs in blocks (CONTRACT.md §2d, export/blocks.py): a layered model evaluated block of
receivers by block, its layers recomputed backwards, gives the whole graph's energies, atom
energies, edge gradients and uncertainty (1e-12 relative in float64, 1e-5 in float32), whatever
the block size, the edge order, the pruned rows of a ghost shell or an empty graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ekd.export import deploy, graph_of
from ekd.export.blocks import row_blocks, subgraph
from ekd.models import HIPNN, HIPNNConfig
from ekd.models.equivariant import EquivariantConfig, EquivariantPotential

ELEMENTS = [1, 6, 7, 8]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(3)
    hipnn = HIPNN(ELEMENTS, HIPNNConfig(n_features=12, n_sensitivities=6, n_interactions=3, n_atom_layers=1,
                                        cutoff=3.5, soft_max=3.0, uncertainty_head=8))
    equivariant = EquivariantPotential(ELEMENTS, EquivariantConfig(n_features=8, l_max=1, n_interactions=2,
                                                                   cutoff=3.5))
    for model in (hipnn, equivariant):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return {"hipnn": hipnn, "equivariant": equivariant}


def periodic_box(n_side: int = 3, spacing: float = 2.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Species, positions and cell of a jittered cubic grid: every atom has neighbours across the box."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    positions = grid + rng.uniform(-0.3, 0.3, grid.shape)
    return rng.integers(0, len(ELEMENTS), len(grid)), positions, np.eye(3) * n_side * spacing


def scripted(model: torch.nn.Module, dtype: torch.dtype, block_edges: int) -> torch.jit.ScriptModule:
    return torch.jit.script(deploy(model.to(dtype), whole_edges=0, block_edges=block_edges))


def assert_close(got: torch.Tensor, want: torch.Tensor, tolerance: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if want.numel() == 0:
        return
    scale = max(float(want.abs().max()), 1e-30)
    error = float((got - want).abs().max()) / scale
    assert error <= tolerance, f"{what}: {error:.2e} relative"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["hipnn", "equivariant"])
@pytest.mark.parametrize("block_edges", [1, 37, 1 << 20])
def test_blocks_equal_the_whole_graph(kind: str, dtype: torch.dtype, block_edges: int) -> None:
    model = models()[kind]
    species, positions, cell = periodic_box()
    g = graph_of(species, positions, model.cutoff, cell)
    args = (g.edge_vectors.to(dtype), g.receivers, g.senders, g.species, g.n_local)
    module = scripted(model, dtype, block_edges)
    whole = module.whole(*args)
    blocked = module(*args)
    assert len(row_blocks(g.receivers, g.n_local, g.n_local, block_edges)) > (1 if block_edges < 100 else 0)
    for name, got, want in zip(["energy", "atom_energy", "edge_grad"], blocked, whole):
        assert_close(got, want, TOLERANCE[dtype], f"{kind} {name}, blocks of {block_edges} edges")
    assert float(whole[2].abs().max()) > 1e-3, "edge gradients must not be trivially zero"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_uncertainty_in_blocks(dtype: torch.dtype) -> None:
    model = models()["hipnn"]
    species, positions, cell = periodic_box()
    g = graph_of(species, positions, model.cutoff, cell)
    args = (g.edge_vectors.to(dtype), g.receivers, g.senders, g.species, g.n_local)
    module = scripted(model, dtype, 50)
    blocked = module.forward_with_uncertainty(*args)
    whole = module.whole_with_uncertainty(*args)
    for name, got, want in zip(["energy", "atom_energy", "edge_grad", "uncertainty"], blocked, whole):
        assert_close(got, want, TOLERANCE[dtype], f"{name} with uncertainty")


def test_any_edge_order_and_pruned_rows() -> None:
    """Edges in random order; and only the first nodes' energies wanted (the ghost-shell path on
    several ranks: nodes ordered by graph distance, later layers prune rows)."""
    model = models()["hipnn"]
    species, positions, cell = periodic_box()
    g = graph_of(species, positions, model.cutoff, cell)
    module = scripted(model, torch.float64, 29)
    order = torch.randperm(g.receivers.shape[0], generator=torch.Generator().manual_seed(1))
    for n_local in (g.n_local, 5):
        args = (g.edge_vectors[order], g.receivers[order], g.senders[order], g.species, n_local)
        whole, blocked = module.whole(*args), module(*args)
        assert_close(blocked[0], whole[0], 1e-12, f"energy, {n_local} local nodes")
        assert_close(blocked[1][:n_local], whole[1][:n_local], 1e-12, f"atom energies, {n_local} local nodes")
        assert_close(blocked[2], whole[2], 1e-12, f"edge gradients, {n_local} local nodes")


def test_isolated_atoms_and_no_edges() -> None:
    model = models()["hipnn"]
    module = scripted(model, torch.float64, 10)
    species = torch.tensor([0, 1, 3])
    empty = torch.zeros(0, dtype=torch.long)
    args = (torch.zeros(0, 3, dtype=torch.float64), empty, empty, species, 3)
    for name, got, want in zip(["energy", "atom_energy", "edge_grad"], module(*args), module.whole(*args)):
        assert_close(got, want, 1e-12, f"{name}, no edges")


def test_subgraph_puts_the_block_first() -> None:
    receivers = torch.tensor([2, 2, 3, 3, 3])
    senders = torch.tensor([7, 3, 0, 2, 7])
    node_of = torch.full((9,), -1)
    nodes, block_receivers, block_senders = subgraph(receivers, senders, 2, 4, node_of)
    assert nodes.tolist() == [2, 3, 0, 7]
    assert block_receivers.tolist() == [0, 0, 1, 1, 1]
    assert nodes[block_senders].tolist() == senders.tolist()
