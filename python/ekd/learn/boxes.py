"""Where the student goes in the condensed phase: periodic boxes of the data's molecules run in
LAMMPS through `pair_style ekd`, and molecular clusters carved out of their frames for the oracle.

A molecular reference method cannot label a periodic box, but it can label the neighbourhood of
the atom the teachers disagree on most: that atom's molecule and the whole molecules closest to
it (within `carve_radius` Å, at most `carve_molecules` in all), taken at their nearest periodic
images. Every dumped frame before the box fails the docs/stability.md criterion gives one such
cluster. The selection judges a cluster by the teachers' committee deviation on the cluster
itself, in vacuum, as the oracle will see it: in the box the teachers can be far outside their
data (water at 0.997 g/cm³: per-atom deviations of 45–90 eV/Å from the first femtosecond, with
round 0 of examples/learn/liquid_water.toml, 2026-12-02), while the trimer carved from it is an
ordinary cluster whose label teaches them the contacts of the liquid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.symbols import Symbols

from ..config import LearnSettings
from ..data import AtomsData, concatenate
from ..distill.augment import Teachers
from ..errors import ConfigError, EkdError
from ..md.lammps_driver import read_dump
from ..stability.box import BoxSettings, build_box, run_lammps_box
from ..stability.criterion import FailureCriterion, covalent_bonds
from ..stability.run import pick_molecules
from ..stability.trajectories import MDSettings
from .sampling import BOX, Trajectories


def molecules_of(box: Atoms) -> np.ndarray:
    """(A,) the molecule of every atom: connected components of the covalent bonds (periodic)."""
    bonds = covalent_bonds(box.numbers, box.positions, box=np.asarray(box.cell.lengths()))
    parent = np.arange(len(box))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(bonds.first, bonds.second):
        parent[root(int(a))] = root(int(b))
    roots = np.array([root(i) for i in range(len(box))])
    return np.unique(roots, return_inverse=True)[1]


def carve(positions: np.ndarray, lengths: np.ndarray, molecule: np.ndarray, centre: int, radius: float,
          max_molecules: int) -> tuple[np.ndarray, np.ndarray]:
    """The atoms (indices) and positions of the molecule of atom `centre` and the whole molecules
    closest to it (any atom within `radius` Å of one of its atoms, at most `max_molecules`
    molecules in all), each at the periodic image nearest the central molecule. Positions must
    keep molecules whole (unwrapped)."""
    n_molecules = int(molecule.max()) + 1
    counts = np.bincount(molecule, minlength=n_molecules)[:, None]
    centres = np.stack([np.bincount(molecule, weights=positions[:, k], minlength=n_molecules) for k in range(3)],
                       axis=1) / counts
    home = int(molecule[centre])
    shift = -lengths * np.round((centres - centres[home]) / lengths)
    moved = positions + shift[molecule]
    own = moved[molecule == home]
    nearest = np.sqrt(((moved[:, None] - own[None]) ** 2).sum(-1)).min(axis=1)
    closest = np.full(n_molecules, np.inf)
    np.minimum.at(closest, molecule, nearest)
    chosen = [m for m in np.argsort(closest, kind="stable") if closest[m] < radius][:max_molecules]
    atoms = np.concatenate([np.flatnonzero(molecule == m) for m in chosen])
    return atoms, moved[atoms]


def box_molecules(data: AtomsData, names: List[str]):
    """The lowest-energy conformation of each group named (all groups when `names` is empty)."""
    molecules = pick_molecules(data, "lowest")
    if not names:
        return molecules
    unknown = sorted(set(names) - {m.name for m in molecules})
    if unknown:
        raise ConfigError(f"[learn] box_molecules: no group {unknown[0]!r} in the data; groups: "
                          f"{', '.join(m.name for m in molecules)}")
    return [m for m in molecules if m.name in names]


def formula_names(data: AtomsData) -> Dict[str, str]:
    """Chemical formula → the data's name for that molecule (e.g. H2O → water)."""
    out: Dict[str, str] = {}
    offsets = data.offsets
    for c in np.unique(data.group, return_index=True)[1]:
        out.setdefault(Symbols(data.species[offsets[c]:offsets[c + 1]]).get_chemical_formula(),
                       data.group_names[data.group[c]])
    return out


def run_boxes(model: Path, teachers: Teachers, data: AtomsData, settings: LearnSettings, seed: int,
              criterion: FailureCriterion, folder: Path, what: str, label: bool, minima: Dict[str, float]
              ) -> tuple[Trajectories, np.ndarray, np.ndarray]:
    """`box_starts` LAMMPS runs per temperature of the exported `model`; with `label`, a carved
    cluster per dumped frame before the failure, the cluster's own committee deviation (in
    vacuum) and the sum of its molecules' lowest training energies (`minima`, by formula)."""
    molecules = box_molecules(data, settings.box_molecules)
    try:
        box = build_box(molecules, BoxSettings(atoms=settings.box_atoms, density=settings.box_density),
                        teachers.cutoff)
    except EkdError as err:  # its message names the stability command's options
        raise ConfigError(f"[learn] box_atoms = {settings.box_atoms}, box_density = {settings.box_density:g}: "
                          f"{str(err).split(': ', 1)[-1].split(';')[0]}; change box_density or box_atoms") from None
    molecule = molecules_of(box)
    lengths = np.asarray(box.cell.lengths())
    elements = [chemical_symbols[z] for z in teachers.elements]
    names = formula_names(data)
    clusters: List[AtomsData] = []
    columns: Dict[str, List] = {k: [] for k in ("trajectory", "step", "temperature", "reference")}
    failed, reasons, temperatures = [], [], []
    for t_index, temperature in enumerate(settings.temperatures):
        for k in range(settings.box_starts):
            trajectory = len(failed)
            md = MDSettings(float(temperature), settings.md_steps, settings.md_timestep, settings.md_friction, 1)
            run_folder = folder / f"{what}_{temperature:g}K_{k}"
            result = run_lammps_box(model, elements, box, seed * 1000 + t_index * 100 + k, md,
                                    BoxSettings(settings.box_atoms, settings.box_density, settings.box_frame_every,
                                                relax_steps=settings.box_relax_steps),
                                    criterion, run_folder, what)
            failed.append(-1 if result.survived else result.steps)
            reasons.append(result.reason)
            temperatures.append(float(temperature))
            if not label:
                continue
            frames = {step: table[:, 1:4] for step, table in read_dump(run_folder / "frames.dump").items()
                      if step > 0 and (result.survived or step < result.steps)}
            for step, cluster, formulas in carved(frames, box, molecule, lengths, teachers, settings, names):
                clusters.append(cluster)
                columns["reference"].append(sum(minima.get(f, np.nan) for f in formulas))
                columns["trajectory"].append(trajectory)
                columns["step"].append(step)
                columns["temperature"].append(float(temperature))
    n = len(failed)
    empty = AtomsData(species=np.zeros(0), positions=np.zeros((0, 3)), n_atoms=np.zeros(0), energy=np.zeros(0))
    frames_data = concatenate(clusters, "carved clusters") if clusters else empty
    # each cluster's own largest per-atom deviation, in vacuum (module docstring)
    columns["deviation"] = list(np.maximum.reduceat(teachers.label(frames_data, False, "clusters")["forces_std"],
                                                    frames_data.offsets[:-1])) if clusters else []
    arrays = {k: np.asarray(v, dtype=np.float64 if k in ("temperature", "deviation", "reference") else np.int64)
              for k, v in columns.items()}
    return Trajectories(frames_data, arrays["trajectory"], arrays["step"], arrays["temperature"], np.array(failed),
                        reasons, np.array(temperatures), np.full(n, BOX), np.full((n, 1), -1)), \
        arrays["deviation"], arrays["reference"]


def carved(frames: Dict[int, np.ndarray], box: Atoms, molecule: np.ndarray, lengths: np.ndarray,
           teachers: Teachers, settings: LearnSettings, names: Dict[str, str]):
    """(step, cluster, its molecules' formulas) for every frame: the cluster around the atom the
    teachers disagree on most in the box."""
    if not frames:
        return
    steps = sorted(frames)
    n_atoms = len(box)
    periodic = AtomsData(species=np.tile(box.numbers, len(steps)), positions=np.concatenate([frames[s] for s in steps]),
                         n_atoms=np.full(len(steps), n_atoms), energy=np.full(len(steps), np.nan),
                         cell=np.repeat(np.asarray(box.cell)[None], len(steps), axis=0),
                         pbc=np.ones((len(steps), 3), dtype=bool), source="box frames")
    spread = teachers.label(periodic, False, "box")["forces_std"].reshape(len(steps), n_atoms)
    for row, step in enumerate(steps):
        centre = int(np.argmax(spread[row]))
        atoms, positions = carve(frames[step], lengths, molecule, centre, settings.carve_radius,
                                 settings.carve_molecules)
        formulas = [Symbols(box.numbers[molecule == m]).get_chemical_formula() for m in np.unique(molecule[atoms])]
        yield step, cluster_data(box.numbers[atoms], positions, formulas, names), formulas


def cluster_data(species: np.ndarray, positions: np.ndarray, formulas: List[str], names: Dict[str, str]) -> AtomsData:
    """A carved cluster of molecules (`formulas`) as one conformation, named by the data's names
    for them (e.g. "(water)3", "methanol+water")."""
    parts = sorted(names.get(f, f) for f in formulas)
    name = parts[0] if len(parts) == 1 else (f"({parts[0]}){len(parts)}" if len(set(parts)) == 1 else "+".join(parts))
    return AtomsData(species=species, positions=positions, n_atoms=np.array([len(species)]),
                     energy=np.array([np.nan]), group_names=[name], source="carved cluster")
