"""examples/lammps/liquid.py's judgement of a water box: a hydrogen that leaves its oxygen, one
that moves to another molecule and one that falls into its own oxygen each make the box
non-molecular."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

LIQUID = Path(__file__).resolve().parents[2] / "examples" / "lammps" / "liquid.py"


def liquid_module():
    spec = importlib.util.spec_from_file_location("liquid_example", LIQUID)
    module = importlib.util.module_from_spec(spec)
    sys.modules["liquid_example"] = module
    spec.loader.exec_module(module)
    return module


def frame(positions: np.ndarray) -> np.ndarray:
    """A dump table: id, x, y, z."""
    return np.column_stack([np.arange(1, len(positions) + 1), positions])


def test_collapsed_stretched_and_moved_hydrogens_are_not_molecular() -> None:
    molecular = liquid_module().molecular
    water = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    start = np.concatenate([water + [1.0, 1.0, 1.0], water + [5.0, 5.0, 5.0]])   # two waters, 10 Å box
    species = np.array([8, 1, 1, 8, 1, 1])
    assert molecular({0: frame(start), 10: frame(start + 0.01)}, species, 10.0)["stayed_molecular"]
    collapsed = start.copy()
    collapsed[1] = collapsed[0] + [0.2, 0, 0]                     # O–H 0.2 Å: fallen into its oxygen
    stretched = start.copy()
    stretched[1] = stretched[0] + [1.7, 0, 0]                     # O–H 1.7 Å > 1.6 × 0.96
    moved = start.copy()
    moved[1] = start[3] + [0.9, 0, 0]                             # now nearest the other oxygen
    for bad, key in ((collapsed, "collapsed_bonds"), (stretched, "broken_bonds"), (moved, "h_elsewhere")):
        result = molecular({0: frame(start), 10: frame(bad)}, species, 10.0)
        assert not result["stayed_molecular"] and result["frames"][1][key] >= 1, (key, result["frames"][1])
    assert molecular({0: frame(start), 10: frame(collapsed)}, species, 10.0)["frames"][1]["min_o_h_bond"] < 0.21


def test_neighbours_within_the_cutoff_count_periodic_images() -> None:
    """A simple cubic lattice of spacing 1 Å in a 6 Å box: 6 neighbours within 1.2 Å, 18 within
    1.5 Å (faces and edges of the cube), the box's faces crossed by the minimum image."""
    coordination = liquid_module().coordination
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    frames = {0: frame(grid), 10: frame(grid + 0.3)}
    assert coordination(frames, 6.0, 1.2) == {"cutoff": 1.2, "mean": 6.0, "max": 6}
    assert coordination(frames, 6.0, 1.5) == {"cutoff": 1.5, "mean": 18.0, "max": 18}
    assert coordination({}, 6.0, 1.5) == {}

def test_liquid_run_relaxes_the_start_and_judges_the_nve_rows_alone(tiny_exports: dict, tmp_path: Path) -> None:
    """liquid.py end to end in LAMMPS with the tiny student on 8 waters: the start is relaxed
    (the energy falls), and the NVE drift is fitted on the NVE rows only, not on the relaxation's
    rows, which print times of their own before `reset_timestep 0`."""
    import subprocess

    out = tmp_path / "liquid"
    completed = subprocess.run([sys.executable, str(LIQUID), str(tiny_exports["student"]), "--waters", "8",
                                "--nvt-ps", "0.01", "--nve-ps", "0.02", "--minimize-steps", "30", "--out", str(out)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode in (0, 1), completed.stderr           # 1: the tiny model's box broke
    result = __import__("json").loads((out / "liquid.json").read_text())
    assert result["completed"], result["error"]
    assert result["relaxation"]["energy_drop_meV_per_atom"] > 0.0
    assert "stopped" in result["relaxation"]
    assert abs(result["energy"]["ps"] - 0.02) < 1e-9                 # 40 NVE steps of 0.5 fs
    from ekd.md.lammps_driver import last_run, read_thermo

    md_rows = last_run(read_thermo((out / "log.lammps").read_text()))
    assert (md_rows.column("Temp") > 0.0).all()                     # the relaxation's rows (T = 0) are left out
    assert md_rows.column("Step")[-1] == 60                         # 20 NVT + 40 NVE steps
