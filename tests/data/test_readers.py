"""Readers: every layout into eV/Å, NaN handling, and each bad-input message."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
import ase.io

from ekd.data import DataSpec, ReadReport, read_data
from ekd.data.units import HARTREE_EV, KCAL_MOL_EV
from ekd.errors import DataError
from tests.conftest import shared_file


def write_ani1x(path: Path, energies: np.ndarray, forces: bool = True) -> None:
    """A two-formula file in the ANI-1x release layout (NaN where an energy is absent)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for name, z in (("H2O", [8, 1, 1]), ("CH4", [6, 1, 1, 1, 1])):
            g = h5.create_group(name)
            g["atomic_numbers"] = np.array(z, dtype=np.uint8)
            g["coordinates"] = rng.normal(size=(len(energies), len(z), 3)).astype(np.float32)
            g["ccsd(t)_cbs.energy"] = energies
            g["wb97x_dz.energy"] = energies + 0.1
            if forces:
                g["wb97x_dz.forces"] = rng.normal(size=(len(energies), len(z), 3)).astype(np.float32)


def test_ani1_layout_shared_file() -> None:
    data = read_data(DataSpec(str(shared_file("ani1_gdb_s01.h5"))))
    assert len(data) == 10_800 and data.elements == [1, 6, 7, 8]
    assert data.forces is None
    assert sorted(data.group_names) == ["CH4", "H2O", "H3N"]
    # ωB97X total energies of CH4 are about −40.5 Hartree.
    ch4 = data.group == data.group_names.index("CH4")
    assert np.allclose(data.energy[ch4].mean() / HARTREE_EV, -40.46, atol=0.05)


def test_ani1x_layout_shared_file_skips_nan_energies() -> None:
    report = ReadReport()
    data = read_data(DataSpec(str(shared_file("ani1x_release_sample.h5")), energy_key="ccsd(t)_cbs.energy",
                              forces_key="wb97x_dz.forces"), report)
    with h5py.File(shared_file("ani1x_release_sample.h5")) as h5:
        total = sum(h5[g]["ccsd(t)_cbs.energy"].shape[0] for g in h5)
        finite = sum(int(np.isfinite(h5[g]["ccsd(t)_cbs.energy"][()]).sum()) for g in h5)
    assert len(data) == finite and report.skipped_nan_energy == total - finite
    assert data.has_forces.all()


def test_ani1x_layout_units_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    write_ani1x(path, np.array([-1.0, np.nan, -2.0]))
    report = ReadReport()
    data = read_data(DataSpec(str(path), energy_key="ccsd(t)_cbs.energy", forces_key="wb97x_dz.forces"), report)
    assert report.skipped_nan_energy == 2 and len(data) == 4
    assert np.allclose(data.energy, np.array([-1.0, -2.0, -1.0, -2.0]) * HARTREE_EV)
    water = data.subset(np.flatnonzero(data.group == data.group_names.index("H2O")))
    with h5py.File(path) as h5:
        raw = h5["H2O/wb97x_dz.forces"][()][[0, 2]].reshape(-1, 3)
    assert np.allclose(water.forces, raw * HARTREE_EV, rtol=1e-6)


def test_extxyz_and_npz_agree_with_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames, energies, forces = [], rng.normal(size=4), rng.normal(size=(4, 3, 3))
    for k in range(4):
        atoms = Atoms("OH2", positions=rng.normal(size=(3, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=energies[k], forces=forces[k])
        frames.append(atoms)
    ase.io.write(tmp_path / "w.extxyz", frames)
    np.savez(tmp_path / "w.npz", R=np.stack([a.positions for a in frames]), z=frames[0].numbers,
             E=energies, F=forces)
    xyz = read_data(DataSpec(str(tmp_path / "w.extxyz"), energy_unit="kcal/mol"))
    npz = read_data(DataSpec(str(tmp_path / "w.npz"), energy_unit="kcal/mol"))
    for data in (xyz, npz):
        assert np.allclose(data.energy, energies * KCAL_MOL_EV)
        assert np.allclose(data.forces, forces.reshape(-1, 3) * KCAL_MOL_EV)
    gradients = read_data(DataSpec(str(tmp_path / "w.npz"), energy_unit="kcal/mol", forces_sign=-1))
    assert np.allclose(gradients.forces, -npz.forces)


def test_md17_extxyz_shared_file() -> None:
    data = read_data(DataSpec(str(shared_file("md17_ethanol_2000.extxyz")), energy_unit="kcal/mol"))
    assert len(data) == 2000 and data.has_forces.all() and data.n_atoms.max() == 9


@pytest.mark.parametrize("case, message", [
    ("missing_file", "data file not found"),
    ("no_energy_key", "choose the energy with energy_key"),
    ("wrong_energy_key", "no dataset 'nope'"),
    ("bad_shape", "coordinates has shape"),
    ("all_nan", "every energy"),
    ("nan_position", "position of atom 1 in conformation 0 is not finite"),
    ("not_hdf5", "not a readable HDF5 file"),
    ("unknown_unit", "unknown energy unit"),
    ("npz_missing_key", "missing key 'E'"),
    ("empty_xyz", "ase.io could not read it"),
])
def test_bad_input_messages(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "bad.h5"
    spec = DataSpec(str(path), energy_key="ccsd(t)_cbs.energy")
    if case == "missing_file":
        spec = DataSpec(str(tmp_path / "absent.h5"))
    elif case == "no_energy_key":
        write_ani1x(path, np.array([-1.0]))
        spec = DataSpec(str(path))
    elif case == "wrong_energy_key":
        write_ani1x(path, np.array([-1.0]))
        spec = DataSpec(str(path), energy_key="nope")
    elif case == "bad_shape":
        with h5py.File(path, "w") as h5:
            h5["m/atomic_numbers"] = np.array([1, 1])
            h5["m/coordinates"] = np.zeros((2, 3, 3))
            h5["m/ccsd(t)_cbs.energy"] = np.zeros(2)
    elif case == "all_nan":
        write_ani1x(path, np.array([np.nan, np.nan]))
    elif case == "nan_position":
        with h5py.File(path, "w") as h5:
            h5["m/atomic_numbers"] = np.array([1, 1])
            h5["m/coordinates"] = np.array([[[0, 0, 0], [np.nan, 0, 0]]], dtype=float)
            h5["m/ccsd(t)_cbs.energy"] = np.zeros(1)
    elif case == "not_hdf5":
        path.write_text("hello")
    elif case == "unknown_unit":
        write_ani1x(path, np.array([-1.0]))
        spec = DataSpec(str(path), energy_key="ccsd(t)_cbs.energy", energy_unit="furlong")
    elif case == "npz_missing_key":
        path = tmp_path / "bad.npz"
        np.savez(path, R=np.zeros((1, 2, 3)), z=np.array([1, 1]))
        spec = DataSpec(str(path))
    elif case == "empty_xyz":
        path = tmp_path / "bad.xyz"
        path.write_text("")
        spec = DataSpec(str(path))
    with pytest.raises(DataError) as error:
        read_data(spec)
    assert message in str(error.value)
    assert Path(spec.path).name in str(error.value), "the message names the file"


def test_additions_follow_the_data_in_order_and_merge_groups_by_name(tmp_path: Path, embedded_data: Path) -> None:
    from ekd.learn.additions import write_additions

    spec = DataSpec(path=str(embedded_data), energy_key="ccsd(t)_dz.energy", energy_unit="Hartree")
    data = read_data(spec)
    water = data.group_names.index("water")
    rows = np.flatnonzero(data.group == water)[:3]
    extra = data.subset(rows)
    extra.positions = extra.positions + 0.01
    forces = np.full((extra.n_total_atoms, 3), np.nan)
    write_additions(tmp_path / "additions.h5", extra, np.array([-1.0, -2.0, -3.0]), forces,
                    {"round": np.ones(3, dtype=np.int64)}, {"round": 1})
    grown = read_data(DataSpec(**{**spec.__dict__, "additions": [str(tmp_path / "additions.h5")]}))
    assert len(grown) == len(data) + 3
    np.testing.assert_array_equal(grown.positions[: data.n_total_atoms], data.positions)   # the data first, unchanged
    np.testing.assert_allclose(grown.positions[data.n_total_atoms:], extra.positions)
    np.testing.assert_array_equal(grown.energy[len(data):], [-1.0, -2.0, -3.0])           # eV, not converted again
    assert grown.group_names == data.group_names and (grown.group[len(data):] == water).all()
    np.testing.assert_array_equal(grown.round, [0] * len(data) + [1, 1, 1])   # the data file does not say: 0
    np.testing.assert_array_equal(grown.subset(np.array([len(data) + 2, 0])).round, [1, 0])
    with pytest.raises(DataError, match="not found"):
        read_data(DataSpec(**{**spec.__dict__, "additions": [str(tmp_path / "missing.h5")]}))


def test_rounds_of_a_grown_data_set_and_bad_rounds(tmp_path: Path, embedded_data: Path) -> None:
    """Version 2 of the embedded data says which round added each conformation
    (`provenance.round`); a rounds dataset of the wrong length or kind is refused by name."""
    v2 = embedded_data.with_name("chno_ccsdt_v2.h5")
    data = read_data(DataSpec(path=str(v2), energy_key="ccsd(t)_dz.energy", energy_unit="Hartree"))
    assert data.round is not None and (data.round == 0).sum() == 1400 and (data.round == 1).sum() == 50
    bad = tmp_path / "bad_rounds.h5"
    with h5py.File(bad, "w") as f:
        g = f.create_group("water")
        g["atomic_numbers"] = np.array([8, 1, 1])
        g["coordinates"] = np.zeros((2, 3, 3)) + np.array([[0.0, 0, 0], [0.96, 0, 0], [0, 0.96, 0]])
        g["energies"] = np.array([-76.0, -76.1])
        g["provenance.round"] = np.array([0.5, 1.0])
    with pytest.raises(DataError, match=r"bad_rounds.h5:/water/provenance.round must hold non-negative integers"):
        read_data(DataSpec(path=str(bad)))
    with h5py.File(bad, "a") as f:
        del f["water/provenance.round"]
        f["water/provenance.round"] = np.array([0, 1, 1])
    with pytest.raises(DataError, match=r"provenance.round has 3 values for 2 conformations"):
        read_data(DataSpec(path=str(bad)))


def test_damaged_files_found_by_fuzzing_are_refused_with_the_reason(tmp_path: Path) -> None:
    """An XYZ atom count far beyond the file (ase.io would loop ~1e12 times), an npz array of
    Python objects (a pickle) and a cut-short npz: each a DataError naming the file."""
    xyz = tmp_path / "count.xyz"
    xyz.write_text("999999999999\nenergy=1.0\nH 0 0 0\n")
    with pytest.raises(DataError, match=r"count.xyz line 1: a frame of 999999999999 atoms, but 2 lines follow"):
        read_data(DataSpec(path=str(xyz)))
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, R=np.zeros((1, 1, 3)), z=np.array([1]), E=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"objects.npz: an array holds Python objects \(pickles\)"):
        read_data(DataSpec(path=str(pickled)))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(pickled.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut.npz"):
        read_data(DataSpec(path=str(cut)))
