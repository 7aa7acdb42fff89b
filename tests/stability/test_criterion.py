"""The MD failure criterion on constructed trajectories."""

from __future__ import annotations

import numpy as np

from ekd.stability import FailureCriterion, covalent_bonds, first_failure

WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
WATER_SPECIES = np.array([8, 1, 1])


def smooth_energies(steps: int) -> np.ndarray:
    return -2000.0 + 0.01 * np.sin(np.arange(steps) / 5.0)


def test_bonds_at_the_start() -> None:
    bonds = covalent_bonds(WATER_SPECIES, WATER)
    assert sorted(zip(bonds.first.tolist(), bonds.second.tolist())) == [(0, 1), (0, 2)]  # no H–H bond
    assert np.allclose(sorted(bonds.length), [0.96, np.hypot(0.24, 0.93)])


def test_a_normal_vibration_is_not_a_failure() -> None:
    steps = 200
    frames = []
    for t in range(steps):
        x = WATER.copy()
        # both O–H bonds oscillate by ±10 % (bend and stretch), far from 1.6 × their length
        x[1] *= 1.0 + 0.1 * np.sin(0.3 * t)
        x[2] *= 1.0 + 0.1 * np.cos(0.2 * t)
        frames.append(x)
    assert first_failure(np.array(frames), smooth_energies(steps), WATER_SPECIES) is None


def test_a_stretched_bond_is_caught_at_the_step_it_breaks() -> None:
    steps = 60
    frames = []
    for t in range(steps):
        x = WATER.copy()
        x[1, 0] = 0.96 + 0.02 * t         # O–H1 grows by 0.02 Å per step
        frames.append(x)
    failure = first_failure(np.array(frames), smooth_energies(steps), WATER_SPECIES)
    # 1.6 × 0.96 = 1.536 Å is first exceeded at t = 29 (1.54 Å); t = 28 is 1.52 Å
    assert failure is not None and failure.step == 29
    assert "bond O0-H1" in failure.reason
    # a looser criterion lets the same trajectory go on longer: 1.9 × 0.96 = 1.824 Å, exceeded at t = 44
    looser = first_failure(np.array(frames), smooth_energies(steps), WATER_SPECIES,
                           FailureCriterion(stretch_factor=1.9))
    assert looser is not None and looser.step == 44


def test_a_collapsing_bond_is_caught_at_the_step_it_falls_below_its_length_over_the_factor() -> None:
    """A hydrogen falling into its own oxygen (seen in a student's liquid water) breaks no bond
    by stretching and moves no atom away: the bond's shortening is the failure."""
    steps = 40
    frames = []
    for t in range(steps):
        x = WATER.copy()
        x[1, 0] = 0.96 - 0.02 * t         # O–H1 shrinks by 0.02 Å per step
        frames.append(x)
    failure = first_failure(np.array(frames), smooth_energies(steps), WATER_SPECIES)
    # 0.96 / 1.6 = 0.6 Å is first undercut at t = 19 (0.58 Å); t = 18 is exactly 0.60 Å
    assert failure is not None and failure.step == 19
    assert "bond O0-H1 collapsed to 0.58 Å" in failure.reason


def test_an_atom_flying_away_is_caught() -> None:
    steps = 20
    species = np.append(WATER_SPECIES, 18)   # water and an argon atom 3 Å from O, not bonded to it
    frames = []
    for t in range(steps):
        x = np.vstack([WATER, [0.0, 0.0, -3.0 - 0.15 * t]])
        frames.append(x)
    failure = first_failure(np.array(frames), smooth_energies(steps), species)
    # its nearest neighbour (O) is 3.9 Å away at t = 6 and 4.05 Å at t = 7
    assert failure is not None and failure.step == 7
    assert "atom Ar3" in failure.reason and "from every other atom" in failure.reason


def test_non_finite_energy_and_energy_jumps_are_caught() -> None:
    steps = 10
    frames = np.repeat(WATER[None], steps, axis=0)
    energies = smooth_energies(steps)
    energies[5] = np.nan
    failure = first_failure(frames, energies, WATER_SPECIES)
    assert failure is not None and failure.step == 5 and "nan" in failure.reason
    energies = smooth_energies(steps)
    energies[3:] -= 1.5                       # 0.5 eV per atom in one step
    failure = first_failure(frames, energies, WATER_SPECIES)
    assert failure is not None and failure.step == 3 and "eV/atom" in failure.reason
    energies = smooth_energies(steps)
    energies[3:] -= 0.2                       # 0.067 eV per atom: below the 0.1 eV/atom limit
    assert first_failure(frames, energies, WATER_SPECIES) is None
    moved = frames.copy()
    moved[4, 1, 0] = np.inf
    failure = first_failure(moved, smooth_energies(steps), WATER_SPECIES)
    assert failure is not None and failure.step == 4
