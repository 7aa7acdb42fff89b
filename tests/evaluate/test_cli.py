"""`python -m ekd.evaluate` on the tiny run: report structure, the exported files agreeing with
their checkpoints, and every bad-input message (element mismatch, missing key, reversed forces
by finite differences and by the models, a model predicting NaN)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.calculator import EKDCalculator
from ekd.data import read_data
from ekd.evaluate.__main__ import main as evaluate
from ekd.evaluate.force_sign import trajectory_pairs
from ekd.models import read_checkpoint
from tests.conftest import write_frames


def test_report_of_exported_files_and_checkpoints(tiny_exports: dict, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    argv = [str(tiny_exports["student"]), str(tiny_exports["ensemble"]), str(tiny_exports["run"] / "student/checkpoint.pt"),
            *tiny_exports["data_args"], "--out", str(out), "--max-conformations", "80", "--batch-size", "16"]
    assert evaluate(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["conformations"] == 80
    assert list(report["models"]) == ["student", "ensemble", "run/student"]
    for name, m in report["models"].items():
        assert m["ok"] and m["error"] is None
        assert m["energy"]["count"] == 80 and m["energy"]["rmse"] >= m["energy"]["mae"] > 0
        assert m["energy_per_atom"]["mae"] > 0 and m["relative_energy"]["molecules"] >= 1
    # the exported file through the contract and its checkpoint through predict_all agree (float64)
    exported, checkpoint = report["models"]["student"], report["models"]["run/student"]
    assert exported["energy"]["mae"] == pytest.approx(checkpoint["energy"]["mae"], rel=1e-8)
    # the student's own uncertainty (its head), the ensemble's members' spread
    assert "uncertainty" in report["models"]["ensemble"] and exported["uncertainty"]["energy"] is None
    energy_u = report["models"]["ensemble"]["uncertainty"]["energy"]
    assert sum(b["count"] for b in energy_u["bins"]) == 80 and energy_u["rms_spread"] > 0
    if report["data"]["conformations_with_forces"]:
        assert exported["forces"]["mae"] == pytest.approx(checkpoint["forces"]["mae"], rel=1e-8)
        assert 0 <= exported["forces"]["angle_mean_deg"] <= 180
        assert set(exported["forces_by_element"]) <= set(report["data"]["elements"])
        assert report["models"]["ensemble"]["uncertainty"]["forces"]["count"] > 0
        own, again = exported["uncertainty"]["forces"], checkpoint["uncertainty"]["forces"]
        assert own["count"] > 0 and 0 <= own["auc_worst_10pct"] <= 1
        assert own["rms_spread"] == pytest.approx(again["rms_spread"], rel=1e-8)
        assert (out / "force_parity.png").stat().st_size > 1000
    assert (out / "energy_parity.png").stat().st_size > 1000
    assert (out / "calibration.png").stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert "| student |" in markdown and "## Ensemble ensemble (2 members)" in markdown

    # the same ensemble from its two teacher checkpoints (--ensemble) gives the same spread
    out2 = tmp_path / "ev2"
    argv = [*map(str, tiny_exports["teachers"]), "--ensemble", *tiny_exports["data_args"], "--out", str(out2),
            "--max-conformations", "80"]
    assert evaluate(argv) == 0
    report2 = json.loads((out2 / "report.json").read_text())
    assert list(report2["models"]) == ["teacher_0", "teacher_1", "ensemble"]
    again = report2["models"]["ensemble"]["uncertainty"]["energy"]
    assert again["rms_spread"] == pytest.approx(energy_u["rms_spread"], rel=1e-8)
    assert report2["models"]["ensemble"]["energy"]["mae"] == pytest.approx(
        report["models"]["ensemble"]["energy"]["mae"], rel=1e-8)


def test_element_the_model_does_not_know(tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_frames(tmp_path / "h2s.xyz", [([16, 1, 1], np.array([[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0.0]]),
                                                -10.0, np.zeros((3, 3)))])
    assert evaluate([str(tiny_exports["student"]), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "element S" in err and "model student" in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_missing_key(tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [str(tiny_exports["student"]), "--data", tiny_exports["spec"].path, "--energy-key", tiny_exports["spec"].energy_key,
            "--forces-key", "no_such.forces", "--out", str(tmp_path)]
    assert evaluate(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no dataset 'no_such.forces'" in err


def harmonic_water_trajectory(steps: int, sign: float) -> list:
    """Water with harmonic O–H bonds moving in 0.02 Å steps; forces multiplied by `sign`."""
    base = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    direction = np.random.default_rng(2).normal(size=(3, 3))
    frames = []
    for t in range(steps):
        x = base + 0.15 * np.sin(0.08 * t) * direction
        energy, forces = -2000.0, np.zeros((3, 3))
        for h in (1, 2):
            d = x[h] - x[0]
            r = np.linalg.norm(d)
            energy += 25.0 * (r - 0.96) ** 2
            forces[h] -= 50.0 * (r - 0.96) * d / r
            forces[0] += 50.0 * (r - 0.96) * d / r
        frames.append(([8, 1, 1], x, energy, sign * forces))
    return frames


def test_gradients_found_by_finite_differences(tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_frames(tmp_path / "traj.xyz", harmonic_water_trajectory(10, sign=-1.0))
    assert evaluate([str(tiny_exports["student"]), "--data", str(data), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "the file's forces look like gradients; rerun with --forces-sign -1" in err
    assert "consecutive conformations" in err
    assert evaluate([str(tiny_exports["student"]), "--data", str(data), "--forces-sign", "-1",
                     "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["sign_check"]["method"] == "finite-difference" and report["sign_check"]["verdict"] == "ok"
    assert report["sign_check"]["slope"] == pytest.approx(1.0, abs=0.05)


def test_gradients_found_by_the_models(tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No trajectory in the file: the models' forces, all pointing against the file's, reveal it."""
    data = read_data(tiny_exports["spec"])
    calculator = EKDCalculator(str(tiny_exports["student"]))
    frames = []
    for c in np.linspace(0, len(data) - 1, 6).astype(int):
        sl = slice(data.offsets[c], data.offsets[c + 1])
        atoms = Atoms(numbers=data.species[sl], positions=data.positions[sl])
        atoms.calc = calculator
        # the file stores the gradient: minus the model's own forces
        frames.append((data.species[sl], data.positions[sl], float(data.energy[c]), -atoms.get_forces()))
    path = write_frames(tmp_path / "gradients.xyz", frames)
    assert len(trajectory_pairs(read_data(type(tiny_exports["spec"])(path=str(path))))) == 0
    assert evaluate([str(tiny_exports["student"]), "--data", str(path), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "the file's forces look like gradients; rerun with --forces-sign -1" in err
    assert "cosine student -1.00" in err
    assert evaluate([str(tiny_exports["student"]), "--data", str(path), "--forces-sign", "-1",
                     "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["sign_check"]["method"] == "model-cosine"
    assert report["sign_check"]["cosines"]["student"] == pytest.approx(1.0)
    # the file holds the model's own forces (written with 8 decimals)
    assert report["models"]["student"]["forces"]["mae"] == pytest.approx(0.0, abs=1e-6)


def test_a_model_predicting_nan_is_reported_and_the_others_still_are(
        tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = read_checkpoint(tiny_exports["run"] / "student/checkpoint.pt")
    first = next(iter(state["best_state"]))
    state["best_state"][first] = torch.full_like(state["best_state"][first], float("nan"))
    (tmp_path / "broken").mkdir()
    torch.save(state, tmp_path / "broken" / "checkpoint.pt")
    out = tmp_path / "ev"
    argv = [str(tiny_exports["student"]), str(tmp_path / "broken" / "checkpoint.pt"), *tiny_exports["data_args"],
            "--out", str(out), "--max-conformations", "20"]
    assert evaluate(argv) == 1
    err = capsys.readouterr().err
    assert "error: model broken" in err and "non-finite energy or force on conformation" in err
    report = json.loads((out / "report.json").read_text())
    broken = report["models"]["broken"]
    assert not broken["ok"] and "conformation" in broken["error"] and "energy" not in broken
    assert report["models"]["student"]["ok"] and report["models"]["student"]["energy"]["mae"] > 0
    assert "## Failed models" in (out / "report.md").read_text()




def test_an_exported_model_predicting_nan_is_reported_with_its_conformation(
        tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same for an exported file (NaN weights): the loader passes NaN on, so the report
    names the first conformation instead of failing the whole model."""
    from ekd.export import METADATA_NAME, read_metadata

    module = torch.jit.load(str(tiny_exports["student"]))
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    broken = tmp_path / "broken.pt"
    torch.jit.save(module, str(broken), _extra_files={METADATA_NAME: read_metadata(tiny_exports["student"]).to_json()})
    argv = [str(broken), *tiny_exports["data_args"], "--out", str(tmp_path / "ev"), "--max-conformations", "20"]
    assert evaluate(argv) == 1
    assert "non-finite energy or force on conformation" in capsys.readouterr().err


def test_energy_only_file(tiny_exports: dict, tmp_path: Path) -> None:
    """A file without forces (e.g. what ekd.learn's CCSD(T) oracle adds) gives energy errors and
    no force columns; it once crashed in the sign check."""
    import h5py

    data = read_data(tiny_exports["spec"])
    rows = np.flatnonzero(data.n_atoms == data.n_atoms[0])[:5]
    part = data.subset(rows)
    path = tmp_path / "energies.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("molecule")
        g["atomic_numbers"] = part.species[: part.n_atoms[0]]
        g["coordinates"] = part.positions.reshape(len(part), -1, 3)
        g["energy"] = part.energy
    assert evaluate([str(tiny_exports["student"]), "--data", str(path), "--energy-key", "energy", "--energy-unit", "eV",
                     "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["models"]["student"]["energy"]["count"] == 5 and report["models"]["student"]["forces"] is None
