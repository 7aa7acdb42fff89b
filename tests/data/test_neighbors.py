"""The one neighbour search (ekd.data.neighbors) against a brute-force search over lattice
images: molecules, cubic cells smaller than twice the cutoff (several images of one pair),
skewed cells, large cells, mixed periodicity; the Verlet list kept between calls against fresh
searches; the ASE calculator with and without the kept list."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

from ekd.data.neighbors import VerletNeighbors, neighbor_list

CUTOFF = 3.0


def brute_force(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> set:
    """Every (i, j, shift) with |x_j - x_i + shift @ cell| < cutoff, shifts over enough images."""
    plane_spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1) if pbc.any() else np.ones(3)
    reach = [int(np.ceil(cutoff / plane_spacing[k])) + 1 if pbc[k] else 0 for k in range(3)]
    found = set()
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        vectors = positions[None, :, :] - positions[:, None, :] + np.array(shift) @ cell
        close = np.linalg.norm(vectors, axis=-1) < cutoff
        if shift == (0, 0, 0):
            np.fill_diagonal(close, False)
        found |= {(int(i), int(j), shift) for i, j in zip(*np.nonzero(close))}
    return found


def as_set(i: np.ndarray, j: np.ndarray, shift: np.ndarray) -> set:
    return {(int(a), int(b), tuple(int(s) for s in c)) for a, b, c in zip(i, j, shift)}


CELLS = {
    "molecule": (np.zeros((3, 3)), [False, False, False], 12),
    "small cubic (2.5 Å < 2 x cutoff)": (np.eye(3) * 2.5, [True, True, True], 6),
    "skewed": (np.array([[4.0, 0.0, 0.0], [2.6, 3.4, 0.0], [1.1, 1.3, 3.2]]), [True, True, True], 20),
    "large": (np.eye(3) * 11.0, [True, True, True], 300),
    "slab (periodic in x, y)": (np.diag([5.0, 6.0, 30.0]), [True, True, False], 40),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_neighbor_list_equals_brute_force(name: str) -> None:
    cell, pbc, n = CELLS[name]
    rng = np.random.default_rng(3)
    positions = rng.random((n, 3)) @ cell if np.any(pbc) else rng.random((n, 3)) * 4.0
    pbc = np.array(pbc)
    i, j, shift = neighbor_list(positions, cell, pbc, CUTOFF)
    assert as_set(i, j, shift) == brute_force(positions, cell if pbc.any() else np.eye(3), pbc, CUTOFF)
    assert len(as_set(i, j, shift)) == len(i)                 # no pair twice
    assert np.all(np.diff(i) >= 0)                            # sorted by receiver
    assert i.dtype == j.dtype == shift.dtype == np.int64


def test_verlet_list_equals_fresh_searches_while_atoms_move_and_the_cell_changes() -> None:
    """Moves smaller and larger than half the skin, then a new cell: every call gives the
    pairs of a fresh search."""
    rng = np.random.default_rng(5)
    cell, pbc = np.eye(3) * 9.0, np.array([True] * 3)
    positions = rng.random((150, 3)) @ cell
    kept = VerletNeighbors(CUTOFF, skin=1.0)
    for step, scale in enumerate([0.0, 0.05, 0.05, 0.3, 0.6, 0.05, 1.5]):
        positions = positions + rng.normal(scale=scale, size=positions.shape)
        if step == 5:
            cell = cell * 1.04
        assert as_set(*kept(positions, cell, pbc)) == as_set(*neighbor_list(positions, cell, pbc, CUTOFF)), step


def test_calculator_with_kept_list_equals_fresh_searches(tiny_exports: dict) -> None:
    """The same NVE trajectory (60 steps, atoms moving past half the skin) with the list kept
    (skin 1 Å) and searched afresh every call (skin 0): the same energies and forces to
    1e-12 relative in float64 (only summation order may differ)."""
    from ekd.calculator import EKDCalculator

    rng = np.random.default_rng(0)
    atoms = Atoms("H2OCH4N" * 6, positions=rng.random((54, 3)) * 7.0, cell=np.eye(3) * 7.0, pbc=True)
    atoms.positions = _spread_out(atoms.positions, 7.0)
    energies = {}
    for skin in (1.0, 0.0):
        moving = atoms.copy()
        moving.calc = EKDCalculator(str(tiny_exports["student"]), skin=skin)
        moving.set_momenta(np.random.default_rng(1).normal(scale=0.5, size=(54, 3)))
        dynamics = VelocityVerlet(moving, timestep=0.5 * units.fs)
        trace = []
        for _ in range(60):
            dynamics.run(1)
            trace.append((moving.get_potential_energy(), moving.get_forces().copy()))
        energies[skin] = trace
    for (e1, f1), (e0, f0) in zip(energies[1.0], energies[0.0]):
        assert e1 == pytest.approx(e0, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(f1, f0, rtol=1e-10, atol=1e-12)
    moved = np.linalg.norm(moving.positions - atoms.positions, axis=1).max()
    assert moved > 0.5, f"atoms moved {moved:.2f} Å: not past half the skin, the kept list was never rebuilt"


def _spread_out(positions: np.ndarray, box: float) -> np.ndarray:
    """Positions at least 1 Å apart (periodic), by nudging: sane forces for the short MD."""
    rng = np.random.default_rng(2)
    out = positions.copy()
    for _ in range(200):
        d = out[None] - out[:, None]
        d -= box * np.round(d / box)
        r = np.linalg.norm(d, axis=-1) + np.eye(len(out)) * 10
        if r.min() >= 1.0:
            break
        k = int(np.argmin(r.min(axis=1)))
        out[k] = rng.random(3) * box
    return out
