"""The whole stability study: the request, the starting molecules, every trajectory of every
model (and the LAMMPS boxes), the report written to --out."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..calculator import EKDCalculator
from ..data import AtomsData
from ..errors import EkdError, ModelFileError
from ..export import is_exported, model_names, read_metadata
from .box import BoxSettings, build_box, run_lammps_box
from .criterion import FailureCriterion
from .progress import FinishedTrajectories, start_digest
from .report import summary_with_detail, write_report
from .trajectories import MDSettings, Molecule, TrajectoryResult, run_trajectory


@dataclass
class StabilityRequest:
    """Everything `python -m ekd.stability` was asked (see docs/stability.md)."""

    models: List[Path]
    molecules: List[Molecule]
    out: Path = Path("stability")
    md: MDSettings = field(default_factory=MDSettings)
    criterion: FailureCriterion = field(default_factory=FailureCriterion)
    source: str = ""
    box: BoxSettings = field(default_factory=BoxSettings)


def pick_molecules(data: AtomsData, pick: str = "lowest", limit: int = 0) -> List[Molecule]:
    """Starting structures: per molecule (group) its `lowest`-energy or `first` conformation,
    or `all` conformations; at most `limit` of them (0: all)."""
    if pick not in ("lowest", "first", "all"):
        raise EkdError(f"--pick must be lowest, first or all, got {pick!r}")
    offsets = data.offsets
    chosen: List[tuple[str, int]] = []
    for g, name in enumerate(data.group_names):
        members = np.flatnonzero(data.group == g)
        if not len(members):
            continue
        if pick == "all":
            chosen += [(f"{name}#{k}", int(c)) for k, c in enumerate(members)]
        else:
            chosen.append((name, int(members[np.argmin(data.energy[members])] if pick == "lowest" else members[0])))
    if limit > 0:
        chosen = chosen[:limit]
    return [Molecule(name, data.species[offsets[c]:offsets[c + 1]].copy(),
                     data.positions[offsets[c]:offsets[c + 1]].copy()) for name, c in chosen]


def open_calculator(path: Path) -> EKDCalculator:
    """The ASE calculator of an exported file; checkpoints are refused with what to do instead."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not is_exported(path):
        raise ModelFileError(f"{path}: not an exported ekd model; stability runs need exported files "
                             "(python -m ekd.export RUN_DIR --model NAME -o FILE)")
    # a model with its own per-atom uncertainty gives it in the same call: traced (trajectories.py)
    return EKDCalculator(str(path), uncertainty=bool(read_metadata(path).atom_uncertainty))


def check_molecule_elements(name: str, calculator: EKDCalculator, molecules: List[Molecule]) -> None:
    known = set(calculator.elements)
    for molecule in molecules:
        symbols = [chemical_symbols[int(z)] for z in molecule.species]
        unknown = sorted(set(symbols) - known)
        if unknown:
            raise EkdError(f"molecule {molecule.name} has element {unknown[0]}, which model {name} "
                           f"({calculator.model_path}) does not know; it knows {' '.join(calculator.elements)}")


def run_stability(request: StabilityRequest, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run every trajectory of every model; write stability.json, stability.md, survival.png."""
    request.md.check()
    request.criterion.check()
    if not request.molecules:
        raise EkdError("no molecules to simulate")
    names = model_names(request.models)
    calculators = {name: open_calculator(path) for name, path in zip(names, request.models)}
    for name, calculator in calculators.items():
        check_molecule_elements(name, calculator, request.molecules)
    # the box is built (and refused if unusable) before any trajectory runs
    box = (build_box(request.molecules, request.box, max(c.cutoff for c in calculators.values()))
           if request.box.atoms > 0 else None)
    finished = FinishedTrajectories(request.out, say)
    results = {name: run_molecules(request, name, path, calculators[name], finished, say)
               for name, path in zip(names, request.models)}
    boxes = run_boxes(request, box, names, calculators, finished, say) if box is not None else {}
    if finished.reused:
        say(f"reused {finished.reused} trajectories finished earlier with the same models and settings "
            f"({finished.path})")
    length = request.md.length_ps
    report = {
        "source": request.source,
        "settings": {**asdict(request.md), "run_length_ps": length},
        "criterion": asdict(request.criterion),
        "molecules": [m.name for m in request.molecules],
        "models": {name: {"path": str(path), **summary_with_detail(results[name], length)}
                   for name, path in zip(names, request.models)},
    }
    if boxes:
        report["lammps_box"] = {"atoms_requested": request.box.atoms, "density": request.box.density,
                                "dump_every": request.box.dump_every}
        for name, rows in boxes.items():
            report["models"][name]["lammps_box"] = summary_with_detail(rows, length)
    write_report(report, results, length, Path(request.out), boxes)
    return report


def run_molecules(request: StabilityRequest, name: str, path: Path, calculator: EKDCalculator,
                  finished: FinishedTrajectories, say: Callable[[str], None]) -> List[TrajectoryResult]:
    """One model's trajectories: every molecule, every seed (each kept in `finished` as it ends)."""
    rows = []
    with warnings.catch_warnings():
        # The calculator warns once about close contacts; in a stability study they are expected.
        warnings.simplefilter("ignore")
        for index, molecule in enumerate(request.molecules):
            start = start_digest(molecule.species, molecule.positions)
            for seed in range(request.md.seeds):
                # the index too: it seeds the trajectory's generator with the seed
                key = finished.key(path, start, seed, {"molecule": index}, request.md, request.criterion)
                row = finished.get(key, name)
                if row is None:
                    row = run_trajectory(calculator, molecule, index, seed, request.md, request.criterion, name)
                    finished.put(key, row)
                    say(f"{name}: {molecule.name} seed {seed}: {outcome(row)}")
                rows.append(row)
    return rows


def run_boxes(request: StabilityRequest, box: Atoms, names: List[str], calculators: Dict[str, EKDCalculator],
              finished: FinishedTrajectories, say: Callable[[str], None]) -> Dict[str, List[TrajectoryResult]]:
    """`--lammps-box`: one LAMMPS run per model and seed on the same box."""
    out: Dict[str, List[TrajectoryResult]] = {}
    start = start_digest(box.numbers, box.positions, np.asarray(box.cell))
    for name, path in zip(names, request.models):
        rows = []
        for seed in range(request.md.seeds):
            key = finished.key(path, start, seed, {"lammps_box": True}, request.md, request.criterion, request.box)
            row = finished.get(key, name)
            if row is None:
                folder = Path(request.out) / "lammps" / f"{name.replace('/', '_')}_seed{seed}"
                row = run_lammps_box(path, list(calculators[name].elements), box, seed, request.md, request.box,
                                     request.criterion, folder, name)
                finished.put(key, row)
                say(f"{name}: LAMMPS {row.molecule} seed {seed}: {outcome(row)}")
            rows.append(row)
        out[name] = rows
    return out


def outcome(row: TrajectoryResult) -> str:
    """How a trajectory ended, for the progress lines."""
    state = "survived" if row.survived else f"failed at {row.time_ps:.4f} ps: {row.reason}"
    return f"{state} ({row.seconds:.1f} s)"
