"""The augment stage: teachers label conformations the reference never computed.

Physics: the ensemble-driven MD conserves energy without friction (float64, 0.25 fs) and
holds its temperature with it. Bookkeeping: copies come from training conformations only,
selection by spread ends a trajectory at its first disagreeing frame, a killed stage resumes
from its finished generators, and the student trains on data + augmented conformations.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from ase import units
from ase.data import atomic_masses

from ekd.config import AugmentSettings, load_config
from ekd.data import read_data
from ekd.distill import augment as aug
from ekd.errors import ConfigError, DataError, EkdError
from ekd.models import load_model
from ekd.models.ensemble import Ensemble
from ekd.data import element_index
from ekd.distill import read_labels
from ekd.fileio import file_sha256
from ekd.run_directory import open_run
from ekd.train.method import adopt_teachers, augmented_graph, refuse_augment_under_torchrun, run_stages
from ekd.training import read_checkpoint
from tests.conftest import write_tiny_config

AUGMENT = """
[augment]
displaced = 1
amplitude = 0.04
md_starts = 6
md_steps = 40
md_every = 10
md_temperatures = [400]
max_spread = {max_spread}
"""


def teachers_of(run: Path) -> aug.Teachers:
    config = load_config(run / "config.toml")
    models = [load_model(run / f"teachers/teacher_{k}/checkpoint.pt") for k in range(config.teachers.count)]
    elements = json.loads((run / "references.json").read_text())
    from ase.data import atomic_numbers
    return aug.Teachers(models, sorted(atomic_numbers[s] for s in elements), torch.float64, "cpu")


def test_displaced_copies_come_from_training_conformations_only(tiny_run: Path) -> None:
    data = read_data(load_config(tiny_run / "config.toml").data)
    train = np.array([3, 10, 500])
    copies, provenance = aug.displaced_copies(data, train, 200, 0.05, np.random.default_rng(0))
    assert list(np.unique(provenance["source_conformation"])) == [3, 10, 500] and len(copies) == 600
    assert np.isnan(copies.energy).all() and copies.forces is None
    moved = copies.positions - data.subset(np.repeat(train, 200)).positions
    assert abs(moved.std() - 0.05) < 0.003 and abs(moved.mean()) < 0.003


def molecules_and_potential(run: Path, count: int = 20):
    """`count` embedded conformations and the tiny run's ensemble as a molecule potential."""
    teachers = teachers_of(run)
    data = read_data(load_config(run / "config.toml").data)
    start = data.subset(np.linspace(0, len(data) - 1, count).astype(int))
    return start, aug.molecule_potential(Ensemble(teachers.models).eval(), teachers, start)


def energy_excursion(run: Path, timestep: float, steps: int) -> np.ndarray:
    """Largest |E(t) − E(0)| per atom (eV) of each molecule in velocity Verlet (friction 0) from 300 K."""
    start, potential = molecules_and_potential(run)
    masses = atomic_masses[start.species][:, None]
    conformation = start.conformation_of_atom
    drift = np.zeros(len(start))
    first = None
    for _, x, v, alive in aug.langevin(potential, start, 300.0, timestep, 0.0, steps, 1, np.random.default_rng(0)):
        assert alive.all()
        kinetic = np.bincount(conformation, weights=0.5 * np.sum(masses * v * v, axis=1), minlength=len(start))
        total = potential(x)[0] + kinetic
        first = total if first is None else first
        drift = np.maximum(drift, np.abs(total - first))
    return drift / start.n_atoms


def test_ensemble_md_conserves_energy_without_friction(tiny_run: Path) -> None:
    """Velocity Verlet (friction 0) for 50 fs at 0.25 and at 0.125 fs steps (float64): every
    molecule's energy stays within 1 meV/atom of its start, and where the excursion is above
    rounding, halving the step cuts it about fourfold (Verlet's error goes as dt²; a wrong force
    sign or unit would not shrink). The barely trained tiny teachers drive some molecules into
    their core repulsion (ekd.models.repulsion), the stiffest part of the potential: measured up
    to 0.27 meV/atom there at 0.25 fs, 0.01-0.15 µeV/atom elsewhere."""
    coarse, fine = energy_excursion(tiny_run, 0.25, 200), energy_excursion(tiny_run, 0.125, 400)
    assert np.all(coarse < 1e-3), coarse
    above_rounding = coarse > 1e-6
    assert np.all(fine[above_rounding] / coarse[above_rounding] < 0.4), fine / coarse


def test_langevin_holds_its_temperature(tiny_run: Path) -> None:
    start, potential = molecules_and_potential(tiny_run)
    masses = atomic_masses[start.species][:, None]
    temperatures = [float(np.sum(masses * v * v)) / (3 * len(v) * units.kB)
                    for step, _, v, _ in aug.langevin(potential, start, 400.0, 0.5, 0.05, 600, 2,
                                                      np.random.default_rng(1)) if step > 200]
    assert abs(np.mean(temperatures) / 400.0 - 1.0) < 0.12, np.mean(temperatures)


def synthetic_part(max_spread: list[float], trajectory: list[int], step: list[int]) -> aug.Augmented:
    n = len(max_spread)
    data = read_data(load_config(None).data).subset(np.arange(n))  # the embedded data
    atoms = data.n_total_atoms
    return aug.Augmented(data, {"source_conformation": np.arange(n), "generator": np.ones(n, int),
                                "setting": np.full(n, 500.0), "trajectory": np.array(trajectory),
                                "step": np.array(step), "max_spread": np.array(max_spread)},
                         {"energy_mean": np.zeros(n), "energy_std": np.zeros(n), "forces_mean": np.zeros((atoms, 3)),
                          "forces_std": np.zeros(atoms), "atom_energy_mean": np.zeros(atoms)})


def test_selection_ends_a_trajectory_at_its_first_disagreeing_frame() -> None:
    part = synthetic_part([0.1, 0.9, 0.1, 0.1, 0.1, 0.2], trajectory=[0, 0, 0, 1, 1, 1], step=[10, 20, 30, 10, 20, 30])
    kept, counts = aug._select([part], AugmentSettings(max_spread=0.5), np.random.default_rng(0))
    assert list(kept.provenance["source_conformation"]) == [0, 3, 4, 5]
    assert counts == {"generated": 6, "spread": 2, "budget": 0, "kept": 4}
    assert kept.labels["forces_mean"].shape == (kept.data.n_total_atoms, 3)
    kept, counts = aug._select([part], AugmentSettings(max_spread=0.5, budget=3), np.random.default_rng(0))
    assert counts["kept"] == 3 and counts["budget"] == 1 and set(kept.provenance["source_conformation"]) < {0, 3, 4, 5}


def augmented_run(tiny_run: Path, folder: Path, max_spread: float = 0.0) -> tuple[Path, object]:
    """A run with the tiny run's teachers and labels and an [augment] table."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = write_tiny_config(folder)
    config_path.write_text(config_path.read_text() + AUGMENT.format(max_spread=max_spread))
    config = load_config(config_path)
    adopt_teachers(tiny_run, config, folder / "run")
    return folder / "run", config


def read_all(path: Path) -> dict:
    with h5py.File(path) as h5:
        return {k: h5[k][()] for k in h5}


def test_augment_stage_resumes_after_a_kill_and_feeds_the_student(tiny_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    whole, config = augmented_run(tiny_run, tmp_path / "a")
    run_stages(config, whole, "augment", resume=False, progress=False)
    expected = read_all(whole / "augmented.h5")
    split = json.loads((whole / "split.json").read_text())
    assert set(expected["source_conformation"]) <= set(split["train"])
    assert np.bincount(expected["generator"]).tolist() == [len(split["train"]), int(np.sum(expected["generator"]))]
    assert set(expected["step"][expected["generator"] == 1]) <= {10, 20, 30, 40}

    killed, config = augmented_run(tiny_run, tmp_path / "b")

    def killed_during_md(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(aug, "driven_md", killed_during_md)
    with pytest.raises(KeyboardInterrupt):
        run_stages(config, killed, "augment", resume=False, progress=False)
    monkeypatch.undo()
    assert not (killed / "augmented.h5").exists() and (killed / "augmented.h5.partial").exists()
    with pytest.raises(Exception, match="--resume"):
        run_stages(config, killed, "augment", resume=False, progress=False)
    run = run_stages(config, killed, "augment", resume=True, progress=False)
    assert any("kept from an interrupted run" in line for line in run.log)
    resumed = read_all(killed / "augmented.h5")
    assert resumed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    assert not (killed / "augmented.h5.partial").exists()

    ensemble_energies = dataclasses.replace(config, augment=dataclasses.replace(config.augment, energies="ensemble"))
    opened = open_run(killed, config, progress=False)
    hashes = [file_sha256(p) for p in sorted((killed / "teachers").glob("teacher_*/checkpoint.pt"))]
    labels = read_labels(killed / "labels.h5")
    for settings, finite in ((config, False), (ensemble_energies, True)):
        opened.config = settings
        graph, train_ids = augmented_graph(opened, 4.0, labels, hashes, None)
        extra = graph.conformation_targets["energy"][len(opened.data):].numpy()
        assert len(train_ids) == len(split["train"]) + len(extra) and np.isfinite(extra).all() == finite
    references = opened.references[element_index(expected["species"], opened.elements, "")]
    expected_energy = expected["energy_mean"] - np.bincount(np.repeat(np.arange(len(extra)), expected["n_atoms"]),
                                                            references)
    np.testing.assert_allclose(extra, expected_energy, rtol=1e-12)

    run_stages(config, killed, "student", resume=False, progress=False)
    state = read_checkpoint(killed / "student/checkpoint.pt")
    assert state["data"]["train_conformations"] == len(split["train"]) + len(expected["n_atoms"])
    assert read_checkpoint(killed / "baseline/checkpoint.pt")["data"]["train_conformations"] == len(split["train"])


def test_a_spread_limit_that_keeps_nothing_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    run, config = augmented_run(tiny_run, tmp_path, max_spread=1e-12)
    with pytest.raises(ConfigError, match="max_spread"):
        run_stages(config, run, "augment", resume=False, progress=False)


def test_md_driven_by_another_model_is_labelled_by_the_teachers(tiny_run: Path) -> None:
    teachers = teachers_of(tiny_run)
    settings = AugmentSettings(md_starts=4, md_steps=20, md_every=10, md_model=str(tiny_run / "student/checkpoint.pt"))
    driver = aug.md_driver(teachers, settings)
    assert driver.kind == "hipnn" and not isinstance(driver, Ensemble)
    data = read_data(load_config(tiny_run / "config.toml").data)
    frames, provenance = aug.driven_md(driver, teachers, data, np.array([0, 300, 600, 900]), 500.0, settings,
                                       np.random.default_rng(0), False)
    assert len(frames) == 8 and set(provenance["step"]) == {10, 20}
    student_only = aug._identity(["x"], "y", settings, 0)
    assert "md_model_sha256" in student_only["settings"]


@pytest.mark.parametrize("table, message", [
    ('md_model = "no_such_model.pt"', "md_model"),
    ("displaced = -1", "displaced"), ("amplitude = 0.0", "amplitude"), ('energies = "all"', "energies"),
    ("md_starts = 2\nmd_steps = 10\nmd_every = 20", "md_every"), ("md_starts = 2\nmd_temperatures = [-5]",
                                                                  "md_temperatures"),
    ('md_temperatures = ["hot"]', "md_temperatures")])
def test_bad_augment_settings_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write_tiny_config(tmp_path)
    path.write_text(path.read_text() + "[augment]\n" + table.replace("\\n", "\n") + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_driver_that_knows_other_elements_is_refused(tiny_run: Path) -> None:
    teachers = teachers_of(tiny_run)
    teachers.elements = teachers.elements[:2]
    settings = AugmentSettings(md_starts=1, md_model=str(tiny_run / "student/checkpoint.pt"))
    with pytest.raises(ConfigError, match="md_model .* knows elements"):
        aug.md_driver(teachers, settings)


def test_md_of_a_periodic_data_set_is_refused(tiny_run: Path) -> None:
    data = read_data(load_config(tiny_run / "config.toml").data).subset(np.arange(2))
    data.cell, data.pbc = np.tile(np.eye(3) * 10.0, (2, 1, 1)), np.ones((2, 3), bool)
    teachers = teachers_of(tiny_run)
    with pytest.raises(ConfigError, match="periodic"):
        aug.driven_md(aug.md_driver(teachers, AugmentSettings()), teachers, data, np.arange(2), 300.0,
                      AugmentSettings(md_starts=2), np.random.default_rng(0), False)


def test_a_file_that_is_not_augmented_conformations_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "augmented.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "something else"
    with pytest.raises(DataError, match="not an ekd augmented-conformations file"):
        aug.read_augmented(path, [], "", AugmentSettings(), 0)
    path.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        aug.read_augmented(path, [], "", AugmentSettings(), 0)


def test_augment_under_torchrun_is_refused() -> None:
    with pytest.raises(EkdError, match="one process only"):
        refuse_augment_under_torchrun(object())  # any context: torchrun started several processes
