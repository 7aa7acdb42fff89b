"""`write_restart` then `read_restart` with pair_style ekd continues the trajectory.

pair_style ekd writes nothing into restart files (`restartinfo = 0`, as for any style whose
settings are a model file), so LAMMPS requires the continuation deck to give `pair_style` and
`pair_coeff` again after `read_restart`, and the neighbour settings and fixes, which restart
files never hold. The tests run a float64 student in NVE for N steps in one `lmp` process, and
again as N/2 steps + `write_restart` followed by a NEW `lmp` process that reads the restart file
and runs N/2 more, then compare the two final states (dumped sorted by atom id, %.17g).

Tolerance 1e-10 (relative to the largest value of each quantity), the project's float64
tolerance: the restart file holds positions, image flags and velocities bit for bit, but the
new process builds its neighbour lists and sorts its atoms at step N/2 where the uninterrupted
one does not, so the model sums the same terms in another order; those ~1e-16 differences grow
through the chaotic dynamics of N/2 steps to far below 1e-10 (the measured gaps are printed with
`pytest -s`). A continuation that lost or changed any part of the state (velocities, positions,
image flags, the model or its element map) is off by many orders of magnitude more; the control
in the one-rank test drops the velocities on purpose and checks that the comparison catches it.

Every atom also drifts 20 Å/ps along x on top of 600 K thermal motion (`velocity ... sum yes`),
so that over each half atoms cross the boundary between the two ranks' sub-domains
(`processors 2 1 1`) and neighbour lists are rebuilt; the test checks both happen after the restart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.export import export_model, read_metadata
from ekd.md.lammps_driver import (dump_lines, neighbor_lines, pair_lines, read_dump, read_thermo, system_lines,
                                  thermo_lines, write_data)
from tests.lammps.lmp import run_lammps

TOL = 1e-10                 # float64 (DESIGN.md §4); why it holds across a restart: module docstring
STEPS = 200                 # N: 100 fs of 0.5 fs steps, split 100 + 100 at the restart
TIMESTEP_PS = 0.0005
DRIFT = 20.0                # Å/ps along x added to every atom: ~1 Å per half, atoms change ranks
COLUMNS = ["id", "xu", "yu", "zu", "ix", "iy", "iz", "vx", "vy", "vz", "fx", "fy", "fz"]
QUANTITIES = {"positions": slice(1, 4), "velocities": slice(7, 10), "forces": slice(10, 13)}
IMAGES = slice(4, 7)


@pytest.fixture(scope="module")
def student(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's student (2 interaction layers, cutoff 4 Å) exported in float64."""
    path = tmp_path_factory.mktemp("restart_model") / "student.pt"
    export_model([tiny_run / "student/checkpoint.pt"], path, torch.float64)
    return path


# ---- the decks ------------------------------------------------------------------------------------

def processors(ranks: int) -> str:
    """Two ranks split x in halves, so an atom's owner is known from its x (see `owners`)."""
    return "2 1 1" if ranks == 2 else ""


def model_lines(model: Path) -> str:
    """What a deck must give after read_data, and again after read_restart: the pair style, the
    element of each type, the neighbour settings, the integrator, the time step and the output
    (thermo every half, a dump at steps 0, N/2 and N)."""
    elements = read_metadata(model).elements
    return "\n".join([pair_lines(model, elements), neighbor_lines(), "fix nve all nve", f"timestep {TIMESTEP_PS}",
                      thermo_lines(["step", "pe", "ke", "etotal"], every=STEPS // 2, digits=17),
                      dump_lines("d", "frames.dump", STEPS // 2, COLUMNS, digits=17)])


def start_lines(ranks: int) -> str:
    """The box from the data file, 600 K plus a drift along x."""
    return "\n".join([system_lines(processors=processors(ranks)),
                      "velocity all create 600.0 4321 mom yes rot yes",
                      f"velocity all set {DRIFT} NULL NULL sum yes"])


def run_in(folder: Path, text: str, ranks: int) -> str:
    """Run a deck in its own folder; the log."""
    folder.mkdir(parents=True, exist_ok=True)
    return run_lammps(folder, text, ranks=ranks).log


def from_box(folder: Path, model: Path, box: Atoms, ranks: int, end: list[str]) -> str:
    """Start from the box (data.lmp in `folder`) and run the deck lines `end`; the log."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", box, read_metadata(model).elements)
    return run_in(folder, "\n".join([start_lines(ranks), model_lines(model), *end, ""]), ranks)


def uninterrupted(folder: Path, model: Path, box: Atoms, ranks: int) -> str:
    return from_box(folder, model, box, ranks, [f"run {STEPS}"])


def first_half(folder: Path, model: Path, box: Atoms, ranks: int) -> Path:
    """N/2 steps, then the restart file (its path)."""
    restart = folder / "half.restart"
    from_box(folder, model, box, ranks, [f"run {STEPS // 2}", f"write_restart {restart}"])
    return restart


def second_half(folder: Path, model: Path, restart: Path, ranks: int, after_restart: str = "") -> str:
    """A new process: read_restart, the pair style and the rest given again, N/2 more steps.
    `after_restart`: deck lines that tamper with the restored state (the control)."""
    grid = processors(ranks)
    lines = ([f"processors {grid}"] if grid else []) + [f"read_restart {restart}", model_lines(model)]
    return run_in(folder, "\n".join(lines + ([after_restart] if after_restart else []) + [f"run {STEPS // 2}", ""]),
                  ranks)


# ---- comparing ------------------------------------------------------------------------------------

def final_frame(folder: Path) -> np.ndarray:
    frames = read_dump(folder / "frames.dump")
    assert STEPS in frames, f"no frame of step {STEPS} in {folder / 'frames.dump'}"
    return frames[STEPS]


def gaps(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Largest difference of each quantity relative to its largest value."""
    return {name: float(np.abs(got[:, s] - want[:, s]).max() / np.abs(want[:, s]).max())
            for name, s in QUANTITIES.items()}


def owners(frame: np.ndarray, length: float) -> np.ndarray:
    """The rank that owns each atom on `processors 2 1 1` (lower or upper half of the wrapped x)."""
    wrapped = frame[:, 1] - frame[:, 4] * length
    return (wrapped >= length / 2).astype(int)


def inside(frame: np.ndarray, length: float) -> np.ndarray:
    """Atoms whose wrapped position (xu − image × L) lies in the box. LAMMPS remaps an atom that
    crossed a boundary only at the next neighbour-list build, and a restarted run builds its
    lists at other steps than the uninterrupted one: an atom outside the box in one of them may
    carry an image flag one off, for the same unwrapped position."""
    wrapped = frame[:, 1:4] - frame[:, IMAGES] * length
    return ((wrapped >= 0.0) & (wrapped < length)).all(axis=1)


def rebuilds(log: str) -> int:
    """Neighbour list builds of the last run in a log (LAMMPS's own count)."""
    return int(log.rsplit("Neighbor list builds =", 1)[1].split()[0])


# ---- the tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 2])
def test_restart_continues_the_uninterrupted_trajectory(tmp_path: Path, student: Path, box: Atoms,
                                                        ranks: int) -> None:
    whole_log = uninterrupted(tmp_path / "whole", student, box, ranks)
    restart = first_half(tmp_path / "first", student, box, ranks)
    second_log = second_half(tmp_path / "second", student, restart, ranks)
    want, got = final_frame(tmp_path / "whole"), final_frame(tmp_path / "second")
    half = read_dump(tmp_path / "first" / "frames.dump")[STEPS // 2]
    measured = gaps(got, want)
    energy = read_thermo(whole_log).column("TotEng")[-1], read_thermo(second_log).column("TotEng")[-1]
    changed_rank = int((owners(half, box.cell[0, 0]) != owners(want, box.cell[0, 0])).sum())
    print(f"\nagreement | restart at step {STEPS // 2} of {STEPS}, {ranks} rank(s), {len(box)} atoms | "
          + " | ".join(f"{name} rel {value:.1e}" for name, value in measured.items())
          + f" | total energy rel {abs(energy[1] - energy[0]) / abs(energy[0]):.1e}"
          + f" | {changed_rank} atoms changed sub-domain after the restart, {rebuilds(second_log)} list builds")
    assert np.abs(got[:, 1:4] - half[:, 1:4]).max() > 0.5, "atoms must move well beyond the tolerance after the restart"
    assert changed_rank > 0, "atoms must change ranks after the restart"
    assert rebuilds(second_log) > 1, "neighbour lists must be rebuilt after the restart"
    both = inside(got, box.cell[0, 0]) & inside(want, box.cell[0, 0])    # the unwrapped positions are compared below
    assert both.sum() >= len(box) - 2 and np.array_equal(got[both][:, IMAGES], want[both][:, IMAGES])
    for name, value in measured.items():
        assert value <= TOL, f"{name} after the restart differ from the uninterrupted run by {value:.2e} (relative)"
    assert abs(energy[1] - energy[0]) <= TOL * abs(energy[0])
    if ranks == 1:  # the control: a continuation that lost the velocities must fail the same comparison
        second_half(tmp_path / "lost", student, restart, ranks, after_restart="velocity all set 0.0 0.0 0.0")
        lost = gaps(final_frame(tmp_path / "lost"), want)
        assert min(lost.values()) > 1e3 * TOL, f"the comparison missed lost velocities: {lost}"
