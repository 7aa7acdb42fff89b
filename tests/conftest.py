"""Shared fixtures: tolerances per dtype, the embedded data set, the shared reference data,
small random molecules, and a tiny trained run reused by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.config import EMBEDDED_DATA

# Test tensors are tiny: extra threads only add synchronisation (4x slower on a busy 2-core
# machine). Subprocesses (LAMMPS, the training CLI) inherit the setting through the environment.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Tolerances of ../shared/DESIGN.md §4, by dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available (the shared reference data sit beside the project checkout)")
    return path


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def embedded_data() -> Path:
    assert EMBEDDED_DATA.exists(), f"the embedded data set {EMBEDDED_DATA} is part of the package"
    return EMBEDDED_DATA


def random_molecule(n_atoms: int, seed: int, species: tuple[int, ...] = (1, 6, 7, 8),
                    min_distance: float = 0.9, box: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and positions (Å) of a random compact cluster with no close contacts."""
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < n_atoms:
        trial = rng.uniform(0.0, box, size=3)
        if all(np.linalg.norm(trial - p) >= min_distance for p in positions):
            positions.append(trial)
    return rng.choice(species, size=n_atoms), np.array(positions)


TINY_CONFIG = """
description = "tiny test run"
[data]
path = "{data}"
energy_key = "ccsd(t)_dz.energy"
forces_key = "ccsd(t)_dz.forces"
[run]
threads = 1
dtype = "{dtype}"
[split]
test_selection = "has_forces"
max_train = 120
[teachers]
count = 2
model = {{n_features = 12, n_sensitivities = 6, n_interactions = 2, n_atom_layers = 1, cutoff = 4.5, soft_max = 4.0}}
[teachers.train]
max_epochs = {epochs}
batch_size = 16
[student]
model = {{n_features = 8, n_sensitivities = 6, n_atom_layers = 1, cutoff = 4.0, soft_max = 3.5}}
[student.train]
max_epochs = {epochs}
batch_size = 16
atom_energy_weight = 0.1
"""


def write_tiny_config(folder: Path, epochs: int = 3, dtype: str = "float64") -> Path:
    """A run config with tiny models on the embedded data: seconds, not minutes."""
    path = folder / "tiny.toml"
    path.write_text(TINY_CONFIG.format(data=EMBEDDED_DATA, epochs=epochs, dtype=dtype))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny float64 run (teachers and student with 2 interaction layers),
    shared by the pipeline, export, calculator and LAMMPS tests."""
    from ekd.config import load_config
    from ekd.train import run_stages

    folder = tmp_path_factory.mktemp("tiny_run")
    config = load_config(write_tiny_config(folder))
    run_stages(config, folder / "run", "all", resume=False, progress=False)
    return folder / "run"


@pytest.fixture(scope="session")
def tiny_exports(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny run's student and teacher ensemble exported (float64), and its data options
    (shared by the evaluate and stability command-line tests)."""
    from ekd.config import load_config
    from ekd.export import export_model

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("evaluate")
    export_model([tiny_run / "student/checkpoint.pt"], folder / "student.pt", torch.float64)
    teachers = [tiny_run / f"teachers/teacher_{k}/checkpoint.pt" for k in range(2)]
    export_model(teachers, folder / "ensemble.pt", torch.float64)
    spec = load_config(tiny_run / "config.toml").data
    return {"student": folder / "student.pt", "ensemble": folder / "ensemble.pt", "teachers": teachers,
            "run": tiny_run, "spec": spec,
            "data_args": ["--data", spec.path, "--energy-key", spec.energy_key, "--forces-key", spec.forces_key]}


def write_frames(path: Path, frames: list[tuple[list[int], np.ndarray, float, np.ndarray]]) -> Path:
    """An extended-XYZ file of frames (atomic numbers, positions, energy, forces)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    atoms_list = []
    for numbers, positions, energy, forces in frames:
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms_list.append(atoms)
    write(path, atoms_list, format="extxyz")
    return path
