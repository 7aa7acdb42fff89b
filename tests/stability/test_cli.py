"""`python -m ekd.stability` on the tiny run's exported models: molecules in ASE and a periodic
box in LAMMPS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ekd.data import read_data
from ekd.stability.__main__ import main as stability
from tests.conftest import write_frames


def stability_molecules(spec, path: Path) -> Path:
    """Two molecules: the first conformations of the first two molecules of the data, or the
    first one and a water molecule when the data hold one molecule only."""
    data = read_data(spec)
    frames = []
    for g in range(min(2, len(data.group_names))):
        c = int(np.flatnonzero(data.group == g)[0])
        sl = slice(data.offsets[c], data.offsets[c + 1])
        frames.append((data.species[sl], data.positions[sl], float(data.energy[c]), np.zeros((sl.stop - sl.start, 3))))
    if len(frames) == 1:
        water = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        frames.append(([8, 1, 1], water, -2000.0, np.zeros((3, 3))))
    return write_frames(path, frames)


def test_quick_stability_run(tiny_exports: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    molecules = stability_molecules(tiny_exports["spec"], tmp_path / "molecules.xyz")
    out = tmp_path / "st"
    argv = [str(tiny_exports["student"]), str(tiny_exports["ensemble"]), "--molecules", str(molecules), "--steps", "50",
            "--seeds", "2", "--out", str(out)]
    assert stability(argv) == 0
    report = json.loads((out / "stability.json").read_text())
    assert len(report["molecules"]) == 2 and report["settings"]["run_length_ps"] == pytest.approx(0.0125)
    for name in ("student", "ensemble"):
        m = report["models"][name]
        assert m["trajectories"] == 4 and 0.0 <= m["fraction_survived"] <= 1.0
        assert set(m["per_molecule"]) == set(report["molecules"])
        for row in m["trajectories_detail"]:
            assert 0.0 <= row["time_ps"] <= 0.0125
            assert row["survived"] == (row["reason"] == "")
            if row["survived"]:
                assert row["steps"] == 50 and row["time_ps"] == pytest.approx(0.0125)
                # the student's own uncertainty, largest per 10 fs window (40 steps: 2 windows); the
                # ensemble file has none of its own (its members' spread would double the cost)
                assert (len(row["uncertainty"]) == 2 and min(row["uncertainty"]) > 0) if name == "student" \
                    else row["uncertainty"] == []
    assert (out / "survival.png").stat().st_size > 1000
    assert "| student |" in (out / "stability.md").read_text()
    capsys.readouterr()
    # checkpoints are refused with what to do instead
    assert stability([str(tiny_exports["run"] / "student/checkpoint.pt"), "--molecules", str(molecules),
                      "--out", str(tmp_path / "x")]) == 2
    assert "not an exported ekd model" in capsys.readouterr().err


def test_stability_of_a_periodic_box_in_lammps(tiny_exports: dict, tmp_path: Path) -> None:
    from ekd.md.lammps_driver import LMP

    if not LMP.exists():
        pytest.skip(f"no LAMMPS executable at {LMP}")
    molecules = stability_molecules(tiny_exports["spec"], tmp_path / "molecules.xyz")
    out = tmp_path / "box"
    argv = [str(tiny_exports["student"]), "--molecules", str(molecules), "--steps", "20", "--seeds", "1",
            "--lammps-box", "40", "--density", "0.3", "--out", str(out)]
    assert stability(argv) == 0
    box = json.loads((out / "stability.json").read_text())["models"]["student"]["lammps_box"]
    (row,) = box["trajectories_detail"]
    assert row["molecule"].startswith("box of ") and 0.0 <= row["time_ps"] <= 0.005
    assert row["survived"] == (row["reason"] == "")
    assert (out / "lammps" / "student_seed0" / "frames.dump").exists()
    assert "minimize 0.0 0.01 200 2000" in (out / "lammps" / "student_seed0" / "in.deck").read_text()
    assert "Periodic box in LAMMPS" in (out / "stability.md").read_text()


def test_a_killed_study_resumes_with_what_it_finished(tiny_exports: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Each trajectory is kept in progress.json as it ends: a rerun (here after a run with fewer
    seeds, as if killed there) reuses exactly the ones with the same model file, start, seed and
    settings, and gives the same report as one uninterrupted run."""
    molecules = stability_molecules(tiny_exports["spec"], tmp_path / "molecules.xyz")
    out = tmp_path / "st"
    argv = [str(tiny_exports["student"]), "--molecules", str(molecules), "--steps", "40", "--out", str(out)]
    assert stability(argv + ["--seeds", "1"]) == 0
    assert len(json.loads((out / "progress.json").read_text())) == 2
    capsys.readouterr()
    assert stability(argv + ["--seeds", "2"]) == 0
    said = capsys.readouterr().out
    assert "reused 2 trajectories" in said and said.count("\nstudent: ") == 2
    resumed = json.loads((out / "stability.json").read_text())["models"]["student"]["trajectories_detail"]
    whole = tmp_path / "whole"
    assert stability(argv[:-1] + [str(whole), "--seeds", "2"]) == 0
    once = json.loads((whole / "stability.json").read_text())["models"]["student"]["trajectories_detail"]
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(resumed) == strip(once)
    # other settings run afresh; an unreadable file is said and replaced, never trusted
    capsys.readouterr()
    assert stability(argv + ["--seeds", "1", "--temperature", "300"]) == 0
    assert "\nreused " not in capsys.readouterr().out
    (out / "progress.json").write_text('{"truncated": ')
    assert stability(argv + ["--seeds", "1"]) == 0
    said = capsys.readouterr().out
    assert "unreadable" in said and "\nreused " not in said
    assert len(json.loads((out / "progress.json").read_text())) == 2
