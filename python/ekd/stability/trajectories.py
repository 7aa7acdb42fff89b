"""Langevin NVT trajectories of single molecules with an ASE calculator, checked after every
step against the failure criterion and stopped at the first failure.

Every model runs the same starts: the random generator of trajectory (molecule m, seed s) is
seeded with [s, m], so starting velocities and thermostat noise are identical across models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from ..errors import EkdError, NonFiniteOutput
from .criterion import FailureCriterion, covalent_bonds, frame_failure


@dataclass
class Molecule:
    """A starting structure: its name, atomic numbers and positions (Å)."""

    name: str
    species: np.ndarray
    positions: np.ndarray


@dataclass
class MDSettings:
    """Langevin NVT: temperature (K), steps, timestep (fs), friction (1/fs), seeds per molecule."""

    temperature: float = 500.0
    steps: int = 4000
    timestep: float = 0.25
    friction: float = 0.01
    seeds: int = 5

    def check(self) -> "MDSettings":
        if self.steps < 1 or self.seeds < 1:
            raise EkdError(f"--steps and --seeds must be at least 1 (got {self.steps}, {self.seeds})")
        if not (self.timestep > 0 and self.temperature >= 0 and self.friction >= 0):
            raise EkdError("--timestep must be positive, --temperature and --friction not negative")
        return self

    @property
    def length_ps(self) -> float:
        return self.steps * self.timestep / 1000.0


@dataclass
class TrajectoryResult:
    """One trajectory: survived (censored at the run length) or the time (ps) and reason of failure."""

    model: str
    molecule: str
    seed: int
    survived: bool
    time_ps: float
    steps: int
    reason: str = ""
    seconds: float = 0.0
    # with a model that has its own per-atom uncertainty: the largest of it (eV/Å) in every
    # UNCERTAINTY_WINDOW_FS of the trajectory, up to the frame before a failure
    uncertainty: List[float] = field(default_factory=list)


UNCERTAINTY_WINDOW_FS = 10.0


def run_trajectory(calculator: Any, molecule: Molecule, molecule_index: int, seed: int, settings: MDSettings,
                   criterion: FailureCriterion, model: str = "") -> TrajectoryResult:
    """One Langevin trajectory, checked after every step; stops at the first failure."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution,
        Stationary,
        ZeroRotation,
    )

    start = time.perf_counter()
    atoms = Atoms(numbers=molecule.species, positions=molecule.positions)
    atoms.calc = calculator
    # The same generator state for every model: identical starting velocities and noise per (molecule, seed).
    rng = np.random.default_rng([seed, molecule_index])
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature, rng=rng)
    Stationary(atoms)
    if len(atoms) > 2:
        ZeroRotation(atoms)
    # the centre of mass stays put through a constraint: Langevin(fixcm=True) is deprecated since
    # ASE 3.28 because it does not sample NVT exactly
    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, timestep=settings.timestep * units.fs, temperature_K=settings.temperature,
                        friction=settings.friction / units.fs, rng=rng, fixcm=False)
    bonds = covalent_bonds(molecule.species, molecule.positions, criterion.bond_factor)

    trace = UncertaintyTrace(settings.timestep)

    def result(step: int, reason: str) -> TrajectoryResult:
        return TrajectoryResult(model, molecule.name, seed, not reason, step * settings.timestep / 1000.0, step,
                                reason, time.perf_counter() - start, trace.windows)

    previous: Optional[float] = None
    for step in range(settings.steps + 1):
        try:  # the start too: a model whose energy there is not finite fails at step 0
            if step > 0:
                dynamics.step()
            energy = float(atoms.get_potential_energy())
        except (RuntimeError, ValueError, FloatingPointError, NonFiniteOutput) as err:  # e.g. NaN positions
            return result(step, f"the MD step failed: {type(err).__name__}: {err}")
        reason = frame_failure(atoms.positions, energy, previous, bonds, molecule.species, criterion)
        if reason is not None:
            return result(step, reason)
        trace.add(step, atoms.calc.results.get("atom_uncertainty"))
        previous = energy
    return result(settings.steps, "")


class UncertaintyTrace:
    """The largest per-atom uncertainty of each window of UNCERTAINTY_WINDOW_FS (frames that
    passed the criterion only: what a run could have acted on before it failed)."""

    def __init__(self, timestep_fs: float) -> None:
        self.steps_per_window = max(1, int(round(UNCERTAINTY_WINDOW_FS / timestep_fs)))
        self.windows: List[float] = []

    def add(self, step: int, atom_uncertainty: Optional[np.ndarray]) -> None:
        if atom_uncertainty is None or not len(atom_uncertainty):
            return
        value, window = float(np.max(atom_uncertainty)), step // self.steps_per_window
        if window < len(self.windows):
            self.windows[window] = max(self.windows[window], value)
        else:
            self.windows.append(value)
