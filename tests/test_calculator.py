"""The ASE calculator: same numbers as the exported module, forces and stress as finite
differences, ensemble spread, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from ekd.calculator import EKDCalculator
from ekd.errors import ModelFileError
from ekd.export import export_model


@pytest.fixture(scope="module")
def model_files(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    folder = tmp_path_factory.mktemp("calc")
    teacher = tiny_run / "teachers/teacher_0/checkpoint.pt"
    export_model([teacher], folder / "teacher.pt", torch.float64)
    export_model([teacher, tiny_run / "teachers/teacher_1/checkpoint.pt"], folder / "ensemble.pt", torch.float64)
    export_model([tiny_run / "student/checkpoint.pt"], folder / "student.pt", torch.float64)
    return {"teacher": folder / "teacher.pt", "ensemble": folder / "ensemble.pt", "student": folder / "student.pt"}


def water_box() -> Atoms:
    rng = np.random.default_rng(3)
    positions, symbols = [], []
    for centre in rng.uniform(0, 6.0, size=(4, 3)):
        positions += [centre, centre + [0.96, 0, 0], centre + [-0.24, 0.93, 0]]
        symbols += ["O", "H", "H"]
    return Atoms(symbols, positions=positions, cell=[6.2, 6.6, 7.0], pbc=True)


def numeric_forces(atoms: Atoms, h: float = 1e-3) -> np.ndarray:
    """Five-point central differences: truncation error O(h⁴) ≈ 1e-12, rounding of the total
    energy (thousands of eV with the element references) ≈ 1e-12 eV / h ≈ 1e-9 eV/Å."""
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            energy = {}
            for step in (-2, -1, 1, 2):
                shifted = atoms.copy()
                shifted.calc = atoms.calc
                shifted.positions[a, k] += step * h
                energy[step] = shifted.get_potential_energy()
            forces[a, k] = -(energy[-2] - 8 * energy[-1] + 8 * energy[1] - energy[2]) / (12 * h)
    return forces


def test_forces_are_finite_differences(model_files: dict) -> None:
    atoms = water_box()
    atoms.calc = EKDCalculator(str(model_files["teacher"]))
    forces = atoms.get_forces()
    assert atoms.calc.results["energies"].sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    assert np.abs(forces).max() > 1e-4
    assert np.allclose(forces, numeric_forces(atoms), atol=1e-7)


def test_results_are_reused_only_while_nothing_the_model_sees_changed(model_files: dict) -> None:
    """The calculator's own state check (exact comparison of positions, numbers, cell, pbc):
    a repeated question is answered from the last call; any change, however small, is a new
    call with the numbers a fresh calculator gives (to rounding)."""
    atoms = water_box()
    calc = atoms.calc = EKDCalculator(str(model_files["teacher"]))
    energy = atoms.get_potential_energy()
    calls = []
    calc.model.evaluate, evaluate = (lambda *a, **k: calls.append(1) or evaluate(*a, **k)), calc.model.evaluate
    assert atoms.get_potential_energy() == energy and atoms.get_forces() is not None and not calls
    for change in (lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-12),
                   lambda a: a.set_cell(a.cell.array * 1.001, scale_atoms=False),
                   lambda a: a.set_pbc([True, True, False]),
                   lambda a: a.numbers.__setitem__(1, 8)):
        change(atoms)
        calls.clear()
        energy = atoms.get_potential_energy()
        fresh = atoms.copy()
        fresh.calc = EKDCalculator(str(model_files["teacher"]))
        # float64; the kept neighbour list sums the edges in another order than a fresh search
        assert len(calls) == 1 and energy == pytest.approx(fresh.get_potential_energy(), rel=1e-12, abs=1e-12)
        assert np.allclose(atoms.get_forces(), fresh.get_forces(), rtol=1e-10, atol=1e-12) and len(calls) == 1


def test_stress_is_the_strain_derivative(model_files: dict) -> None:
    atoms = water_box()
    atoms.calc = EKDCalculator(str(model_files["teacher"]))
    stress = atoms.get_stress(voigt=False)
    volume, h = atoms.get_volume(), 1e-6
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strained = atoms.copy()
                strain = np.eye(3)
                strain[a, b] += sign * h
                strained.set_cell(atoms.cell @ strain, scale_atoms=True)
                strained.calc = atoms.calc
                energies.append(strained.get_potential_energy())
            numeric[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    assert np.abs(stress).max() > 1e-6
    assert np.allclose(stress, numeric, atol=1e-8)


def test_ensemble_spread(model_files: dict) -> None:
    atoms = water_box()
    atoms.calc = EKDCalculator(str(model_files["ensemble"]), uncertainty=True)
    energy = atoms.get_potential_energy()
    results = atoms.calc.results
    assert results["member_energies"].mean() == pytest.approx(energy, rel=1e-12)
    assert np.allclose(results["member_forces"].mean(axis=0), atoms.get_forces(), atol=1e-10)
    assert results["energy_std"] > 0 and results["forces_std"].shape == (len(atoms),)
    members = results["member_forces"]
    deviation = np.sqrt(np.mean(np.sum((members - members.mean(axis=0)) ** 2, axis=-1), axis=0))
    assert np.allclose(results["atom_uncertainty"], deviation, rtol=1e-12, atol=0)
    assert np.array_equal(results["atom_uncertainty"], results["forces_std"]) and deviation.min() > 0


def test_student_uncertainty(model_files: dict) -> None:
    """A student with an uncertainty head gives its own per-atom uncertainty; a plain model none."""
    import torch

    from ekd.export import graph_of

    atoms = water_box()
    atoms.calc = EKDCalculator(str(model_files["student"]))
    atoms.get_potential_energy()
    assert "atom_uncertainty" not in atoms.calc.results          # only calls that ask pay for it
    got = atoms.calc.get_property("atom_uncertainty", atoms)
    module = torch.jit.load(str(model_files["student"]))
    g = graph_of(np.array([3 if s == "O" else 0 for s in atoms.get_chemical_symbols()]), atoms.positions,
                 atoms.calc.cutoff, np.asarray(atoms.cell))
    assert atoms.calc.elements[3] == "O" and atoms.calc.elements[0] == "H"
    expected = module.forward_with_uncertainty(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)[3]
    assert got.shape == (len(atoms),) and np.allclose(got, expected.numpy(), rtol=1e-12, atol=0)
    atoms.calc = EKDCalculator(str(model_files["teacher"]))
    atoms.get_potential_energy()
    assert "atom_uncertainty" not in atoms.calc.results
    with pytest.raises(PropertyNotImplementedError):               # a plain model has none to give
        atoms.calc.get_property("atom_uncertainty", atoms)


def test_atoms_at_the_same_position_are_refused(model_files: dict) -> None:
    from ekd.errors import DataError

    atoms = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0.96, 0, 0.00005]])
    atoms.calc = EKDCalculator(str(model_files["student"]))
    with pytest.raises(DataError, match=r"atoms 1 and 2 are 5.00e-05 Å apart \(closer than 0.0001 Å: two atoms at "
                                        r"the same position\)"):
        atoms.get_potential_energy()


def test_unknown_element_and_missing_file(model_files: dict, tmp_path: Path) -> None:
    atoms = Atoms("OHS", positions=[[0, 0, 0], [1, 0, 0], [0, 2, 0]])
    atoms.calc = EKDCalculator(str(model_files["teacher"]))
    with pytest.raises(ModelFileError, match="atom 2 is S, an element the model .* does not know"):
        atoms.get_potential_energy()
    with pytest.raises(ModelFileError, match="model file not found"):
        EKDCalculator(str(tmp_path / "absent.pt"))


def test_close_contact_warns_once(model_files: dict) -> None:
    atoms = Atoms("OH", positions=[[0, 0, 0], [0.3, 0, 0]])
    atoms.calc = EKDCalculator(str(model_files["teacher"]))
    with pytest.warns(UserWarning, match="closer than the shortest distance in the training data"):
        atoms.get_potential_energy()
    atoms.positions[1, 0] = 0.31
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_potential_energy()


def test_a_model_giving_nan_is_refused_and_fails_a_stability_trajectory_at_its_start(
        model_files: dict, tmp_path: Path) -> None:
    """A file whose weights are NaN: the calculator raises NonFiniteOutput naming the file (not NaN
    energies), and a stability trajectory records it as failed at step 0 instead of stopping."""
    import torch

    from ekd.errors import NonFiniteOutput
    from ekd.export import METADATA_NAME, read_metadata
    from ekd.stability.criterion import FailureCriterion
    from ekd.stability.trajectories import MDSettings, Molecule, run_trajectory

    module = torch.jit.load(str(model_files["student"]))
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    broken = tmp_path / "nan.pt"
    torch.jit.save(module, str(broken), _extra_files={METADATA_NAME: read_metadata(model_files["student"]).to_json()})
    atoms = water_box()
    atoms.calc = EKDCalculator(str(broken))
    with pytest.raises(NonFiniteOutput, match="nan.pt: a non-finite energy or forces"):
        atoms.get_forces()
    molecule = Molecule("water", np.array([8, 1, 1]), np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    row = run_trajectory(EKDCalculator(str(broken)), molecule, 0, 0, MDSettings(steps=5, seeds=1),
                         FailureCriterion(), "broken")
    assert not row.survived and row.steps == 0 and "NonFiniteOutput" in row.reason
