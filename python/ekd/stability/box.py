"""A periodic box of the molecules in LAMMPS (`--lammps-box N`): built like the benchmark's
boxes, run with `pair_style ekd` through ekd.md.lammps_driver, and judged afterwards by the
failure criterion on its thermo output (every step) and dump (every `dump_every` steps)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
from ase import Atoms

from ..errors import EkdError, LammpsError
from ..md.boxes import base_box, box_of_size
from ..md.lammps_driver import (SKIN, dump_lines, last_run, neighbor_lines, pair_lines, read_dump, read_thermo,
                                relaxation_lines, run_lammps, system_lines, thermo_lines, write_data)
from .criterion import Failure, FailureCriterion, covalent_bonds, sampled_failure
from .trajectories import MDSettings, Molecule, TrajectoryResult

DUMP_EVERY = 10            # steps between dumped frames (energies are checked at every step)
# The packed start is relaxed first: unrelaxed, a 512-water box heated to 1,500 K within 50 fs
# and its hydrogens fell into their oxygens; relaxed, the same model kept it molecular
# (docs/results.md, "Towards liquid water").
RELAX_STEPS = 200


@dataclass
class BoxSettings:
    """`--lammps-box N`: about N atoms of the molecules at `density` g/cm³, one run per seed."""

    atoms: int = 0
    density: float = 0.9
    dump_every: int = DUMP_EVERY
    timeout: float = 3600.0
    relax_steps: int = RELAX_STEPS   # of conjugate gradients before the MD (0: none)


def build_box(molecules: List[Molecule], settings: BoxSettings, cutoff: float) -> Atoms:
    """A periodic box of the molecules (packed at random, `base_box`), replicated to about
    `settings.atoms` atoms (the benchmark's boxes); refused if its molecules overlap or it is
    smaller than the largest model `cutoff` + skin."""
    items = [Atoms(numbers=m.species, positions=m.positions) for m in molecules]
    per_set = sum(len(m) for m in items)
    base = base_box(items, copies=max(1, min(120, settings.atoms) // per_set), density=settings.density)
    box = box_of_size(base, settings.atoms)
    # Molecules placed too close form bonds between them: the criterion would start from a wrong bond graph.
    expected = len(box) // per_set * sum(len(covalent_bonds(m.species, m.positions).length) for m in molecules)
    found = len(covalent_bonds(box.numbers, box.positions, box=np.asarray(box.cell.lengths())).length)
    if found != expected:
        raise EkdError(f"--lammps-box: at {settings.density:g} g/cm³ the molecules overlap in the box ({found} "
                       f"covalent bonds instead of {expected}); lower --density")
    edge = float(min(box.cell.lengths()))
    if edge < cutoff + SKIN:
        raise EkdError(f"--lammps-box {settings.atoms} gives a {edge:.1f} Å box, smaller than the cutoff "
                       f"{cutoff} Å + skin {SKIN} Å; ask for more atoms")
    return box


def lammps_deck(model: Path, elements: List[str], md: MDSettings, seed: int, dump_every: int,
                relax_steps: int = RELAX_STEPS) -> str:
    """Langevin NVT in LAMMPS (metal units) after at most `relax_steps` of relaxation: energies
    every step, unwrapped positions every `dump_every` steps. LAMMPS's damping time is 1 / friction."""
    lammps_seed = 104729 + 7919 * seed
    damping_ps = 1.0 / md.friction / 1000.0 if md.friction > 0 else 1e9
    return "\n".join([
        system_lines(atom_modify="map array"), pair_lines(model, elements), neighbor_lines(),
        thermo_lines(["step", "pe"], every=1, digits=12, modify="lost error"),
        relaxation_lines(relax_steps),
        f"velocity all create {md.temperature} {lammps_seed} mom yes rot yes dist gaussian",
        f"fix thermostat all langevin {md.temperature} {md.temperature} {damping_ps} {lammps_seed}",
        "fix integrate all nve", f"timestep {md.timestep / 1000.0}",
        dump_lines("frames", "frames.dump", dump_every, ["id", "xu", "yu", "zu"], digits=10),
        f"run {md.steps}", ""])


def run_lammps_box(model_path: Path, elements: List[str], box: Atoms, seed: int, md: MDSettings,
                   settings: BoxSettings, criterion: FailureCriterion, folder: Path, model: str = ""
                   ) -> TrajectoryResult:
    """One LAMMPS run of the box; the criterion is applied to its log and dump afterwards. A
    LAMMPS error (lost atoms, ...) is a failure at the last step it logged."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", box, elements)
    (folder / "in.deck").write_text(lammps_deck(Path(model_path).resolve(), elements, md, seed, settings.dump_every,
                                                settings.relax_steps))
    try:
        run = run_lammps(folder / "in.deck", timeout=settings.timeout)
    except LammpsError as err:  # no lmp program
        raise EkdError(f"--lammps-box: {err}") from None
    if "Unrecognized pair style" in run.log + run.output:
        raise EkdError("--lammps-box: LAMMPS does not know pair_style ekd; build the plugin with "
                       "python -m ekd.plugin build")
    thermo = last_run(read_thermo(run.log))  # the MD's rows, not the relaxation's
    energies = dict(zip(thermo.column("Step").astype(int).tolist(), thermo.column("PotEng").tolist()))
    if not energies and not run.ok:
        raise EkdError(f"--lammps-box: LAMMPS failed before the first step with {model_path}: {run.error}")
    positions = {step: table[:, 1:4] for step, table in read_dump(folder / "frames.dump").items()}
    failure = sampled_failure(energies, positions, box.numbers, criterion, np.asarray(box.cell.lengths()))
    if failure is None and not run.ok:
        failure = Failure(max(energies), f"LAMMPS stopped: {run.error}")
    step = md.steps if failure is None else failure.step
    return TrajectoryResult(model, f"box of {len(box)} atoms", seed, failure is None, step * md.timestep / 1000.0,
                            step, "" if failure is None else failure.reason, time.perf_counter() - start)
