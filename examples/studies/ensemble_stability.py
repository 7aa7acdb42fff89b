"""Does the teachers' ensemble itself keep the molecules intact? The 7 embedded molecules × 6
trajectories from their lowest-energy conformation, Langevin NVT at 500 K for 1 ps (0.25 fs,
friction 0.01/fs) driven by the ensemble mean, all at once with the augment stage's batched
integrator (ekd.distill.augment.langevin); a trajectory fails when a bond (closer than 1.2 × the
covalent radii at the start) stretches beyond 1.6 × (checked every 10 steps; the stability
command checks every step and also energy jumps and isolated atoms, so this is approximate).

Usage: python examples/studies/ensemble_stability.py RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ase.data import covalent_radii

from ekd.config import load_config
from ekd.data import AtomsData
from ekd.distill import augment
from ekd.models import load_model
from ekd.models.ensemble import Ensemble
from ekd.run_directory import open_run

SEEDS, TEMPERATURE, TIMESTEP, FRICTION, STEPS, CHECK_EVERY = 6, 500.0, 0.25, 0.01, 4000, 10


def lowest_energy_starts(data: AtomsData) -> np.ndarray:
    """Each molecule's lowest-energy conformation, SEEDS times."""
    starts = []
    for group in range(len(data.group_names)):
        ids = np.flatnonzero(data.group == group)
        starts += [ids[np.argmin(data.energy[ids])]] * SEEDS
    return np.array(starts)


def bonds(start: AtomsData) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per molecule: the atom pairs bonded at the start (global indices) and their lengths."""
    out = []
    for c in range(len(start)):
        atoms = slice(start.offsets[c], start.offsets[c + 1])
        x, z = start.positions[atoms], start.species[atoms]
        r = np.linalg.norm(x[:, None] - x[None], axis=-1)
        i, j = np.nonzero(np.triu(r < 1.2 * (covalent_radii[z][:, None] + covalent_radii[z][None]), 1))
        out.append((start.offsets[c] + i, start.offsets[c] + j, r[i, j]))
    return out


def main(run_dir: Path) -> None:
    torch.set_num_threads(1)
    run = open_run(run_dir, load_config(run_dir / "config.toml"), progress=False)
    start = run.data.subset(lowest_energy_starts(run.data))
    paths = sorted(run.teachers_dir.glob("teacher_*/checkpoint.pt"))
    teachers = augment.Teachers([load_model(p) for p in paths], run.elements, run.dtype, "cpu")
    potential = augment.molecule_potential(Ensemble(teachers.models).eval(), teachers, start)
    bonded = bonds(start)
    failed = np.full(len(start), np.inf)
    for step, x, _, alive in augment.langevin(potential, start, TEMPERATURE, TIMESTEP, FRICTION, STEPS, CHECK_EVERY,
                                              np.random.default_rng(0)):
        for c, (i, j, r0) in enumerate(bonded):
            broken = not alive[c] or np.any(np.linalg.norm(x[i] - x[j], axis=1) > 1.6 * r0)
            if failed[c] == np.inf and broken:
                failed[c] = step * TIMESTEP / 1000.0
    names = [run.data.group_names[g] for g in start.group]
    for name in dict.fromkeys(names):
        rows = [k for k, n in enumerate(names) if n == name]
        times = [f"{t:.2f} ps" for t in failed[rows] if np.isfinite(t)]
        print(f"{name}: {int(np.isinf(failed[rows]).sum())}/{len(rows)} survived", *times)
    print(f"all: {int(np.isinf(failed).sum())}/{len(failed)} survived")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
