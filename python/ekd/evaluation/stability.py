"""MD stability of exported models: many short NVT trajectories, a failure criterion, survival.

A potential can have small test errors and still be useless in molecular dynamics: a hole in
the energy surface, or a region it never saw, and a molecule falls apart within picoseconds.
This module measures that directly (docs/stability.md):

- **Trajectories.** For every model, molecule and seed: Langevin NVT with the ASE calculator
  on the exported file, the same starting velocities (seeded by molecule and seed) for every
  model, so models are compared on identical starts.
- **Failure criterion** (`first_failure`, `frame_failure`), checked at every step:
  1. a non-finite energy or position;
  2. the potential energy changing by more than `energy_jump` eV per atom in one step;
  3. a covalent bond broken: pairs closer than `bond_factor` × the sum of their covalent
     radii at the start are bonds; a bond longer than `stretch_factor` × its initial length
     has broken;
  4. an atom flown off: farther than `isolation` Å from every other atom.
  The time of the first failing step is the time to failure; a trajectory that survives is
  censored at the run length.
- **Survival.** Per model, the Kaplan–Meier estimate of the probability of surviving to time
  t, its median, and the fraction of trajectories that survive the whole run.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..data import AtomsData
from ..errors import EkdError, ModelFileError
from ..fileio import atomic_write_text

# ---- the failure criterion ------------------------------------------------------------------------

@dataclass(frozen=True)
class FailureCriterion:
    """When a trajectory has failed (see the module docstring); lengths in Å, energies in eV."""

    bond_factor: float = 1.2
    stretch_factor: float = 1.6
    isolation: float = 4.0
    energy_jump: float = 0.1

    def check(self) -> "FailureCriterion":
        for name in ("bond_factor", "stretch_factor", "isolation", "energy_jump"):
            if not getattr(self, name) > 0:
                raise EkdError(f"failure criterion: {name} must be positive, got {getattr(self, name)}")
        return self


@dataclass
class Bonds:
    """Covalent bonds at the start: atom pairs (first < second) and their initial lengths (Å)."""

    first: np.ndarray
    second: np.ndarray
    length: np.ndarray


@dataclass
class Failure:
    """The first failing step of a trajectory and why."""

    step: int
    reason: str


def _differences(positions: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """(N, N, 3) x_j − x_i, by the minimum image in an orthorhombic `box` (edge lengths) if given."""
    d = positions[None] - positions[:, None]
    return d if box is None else d - box * np.round(d / box)


def covalent_bonds(species: np.ndarray, positions: np.ndarray, factor: float = 1.2,
                   box: Optional[np.ndarray] = None) -> Bonds:
    """Pairs closer than `factor` × the sum of their covalent radii."""
    from ase.data import covalent_radii

    species = np.asarray(species)
    positions = np.asarray(positions, dtype=np.float64)
    radii = covalent_radii[species]
    distance = np.linalg.norm(_differences(positions, box), axis=-1)
    i, j = np.nonzero(np.triu(distance < factor * (radii[:, None] + radii[None]), k=1))
    return Bonds(i, j, distance[i, j])


def _label(species: np.ndarray, atom: int) -> str:
    from ase.data import chemical_symbols

    return f"{chemical_symbols[int(species[atom])]}{atom}"


def energy_failure(energy: float, previous_energy: Optional[float], n_atoms: int,
                   criterion: FailureCriterion) -> Optional[str]:
    """Criteria 1 and 2: a non-finite energy, or too large a change since the previous step."""
    if not math.isfinite(energy):
        return f"energy is {energy}"
    if previous_energy is not None and abs(energy - previous_energy) / n_atoms > criterion.energy_jump:
        return (f"energy changed by {(energy - previous_energy) / n_atoms:+.3g} eV/atom in one step "
                f"(limit {criterion.energy_jump} eV/atom)")
    return None


def structure_failure(positions: np.ndarray, bonds: Bonds, species: np.ndarray, criterion: FailureCriterion,
                      box: Optional[np.ndarray] = None) -> Optional[str]:
    """Criteria 1, 3 and 4: non-finite positions, a broken bond, an atom flown off (distances
    by the minimum image when `box` gives the edges of an orthorhombic periodic cell)."""
    positions = np.asarray(positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        return "positions are not finite"
    n = len(species)
    if len(bonds.length):
        vectors = positions[bonds.second] - positions[bonds.first]
        if box is not None:
            vectors = vectors - box * np.round(vectors / box)
        current = np.linalg.norm(vectors, axis=1)
        ratio = current / bonds.length
        worst = int(np.argmax(ratio))
        if ratio[worst] > criterion.stretch_factor:
            a, b = int(bonds.first[worst]), int(bonds.second[worst])
            return (f"bond {_label(species, a)}-{_label(species, b)} stretched to {current[worst]:.2f} Å, "
                    f"{ratio[worst]:.2f} x its initial {bonds.length[worst]:.2f} Å")
    if n > 1:
        distance = np.linalg.norm(_differences(positions, box), axis=-1)
        np.fill_diagonal(distance, np.inf)
        nearest = distance.min(axis=1)
        worst = int(np.argmax(nearest))
        if nearest[worst] > criterion.isolation:
            return (f"atom {_label(species, worst)} is {nearest[worst]:.2f} Å from every other atom "
                    f"(limit {criterion.isolation} Å)")
    return None


def frame_failure(positions: np.ndarray, energy: float, previous_energy: Optional[float], bonds: Bonds,
                  species: np.ndarray, criterion: FailureCriterion,
                  box: Optional[np.ndarray] = None) -> Optional[str]:
    """Why this frame counts as failed (None if it does not): one step of the criterion."""
    return (energy_failure(energy, previous_energy, len(species), criterion)
            or structure_failure(positions, bonds, species, criterion, box))


def first_failure(positions: np.ndarray, energies: np.ndarray, species: np.ndarray,
                  criterion: FailureCriterion = FailureCriterion()) -> Optional[Failure]:
    """The first failing step of a whole trajectory (positions (T, N, 3) Å, energies (T,) eV),
    with bonds taken from step 0; None if every step passes."""
    positions = np.asarray(positions, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    bonds = covalent_bonds(species, positions[0], criterion.bond_factor)
    previous: Optional[float] = None
    for step, (frame, energy) in enumerate(zip(positions, energies)):
        reason = frame_failure(frame, float(energy), previous, bonds, species, criterion)
        if reason is not None:
            return Failure(step, reason)
        previous = float(energy)
    return None


# ---- survival ------------------------------------------------------------------------------------------

def kaplan_meier(times: Sequence[float], failed: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival: (t, S) with S[k] the probability of surviving past t[k]; t starts
    at 0 with S = 1 and has one entry per distinct failure time. Censored trajectories
    (failed = False) count as at risk up to their time."""
    times = np.asarray(times, dtype=np.float64)
    failed = np.asarray(failed, dtype=bool)
    t_out, s_out, survival = [0.0], [1.0], 1.0
    for t in np.unique(times[failed]):
        at_risk = int(np.sum(times >= t))
        deaths = int(np.sum((times == t) & failed))
        survival *= 1.0 - deaths / at_risk
        t_out.append(float(t))
        s_out.append(survival)
    return np.asarray(t_out), np.asarray(s_out)


def median_survival(times: Sequence[float], failed: Sequence[bool]) -> Optional[float]:
    """The first time the Kaplan–Meier survival falls to 0.5 or below (None: it never does
    within the run, the median is longer than the run)."""
    t, s = kaplan_meier(times, failed)
    below = np.flatnonzero(s <= 0.5)
    return float(t[below[0]]) if below.size else None


# ---- molecules and trajectories ----------------------------------------------------------------------

@dataclass
class Molecule:
    name: str
    species: np.ndarray
    positions: np.ndarray


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


@dataclass
class MDSettings:
    """Langevin NVT: temperature (K), steps, timestep (fs), friction (1/fs), seeds per molecule."""

    temperature: float = 500.0
    steps: int = 4000
    timestep: float = 0.25
    friction: float = 0.01
    seeds: int = 5

    def check(self) -> "MDSettings":
        if self.steps < 1 or self.seeds < 1:
            raise EkdError(f"--steps and --seeds must be at least 1 (got {self.steps}, {self.seeds})")
        if not (self.timestep > 0 and self.temperature >= 0 and self.friction >= 0):
            raise EkdError("--timestep must be positive, --temperature and --friction not negative")
        return self

    @property
    def length_ps(self) -> float:
        return self.steps * self.timestep / 1000.0


@dataclass
class TrajectoryResult:
    """One trajectory: survived (censored at the run length) or the time (ps) and reason of failure."""

    model: str
    molecule: str
    seed: int
    survived: bool
    time_ps: float
    steps: int
    reason: str = ""
    seconds: float = 0.0


def run_trajectory(calculator: Any, molecule: Molecule, molecule_index: int, seed: int, settings: MDSettings,
                   criterion: FailureCriterion, model: str = "") -> TrajectoryResult:
    """One Langevin trajectory, checked after every step; stops at the first failure."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution,
        Stationary,
        ZeroRotation,
    )

    start = time.perf_counter()
    atoms = Atoms(numbers=molecule.species, positions=molecule.positions)
    atoms.calc = calculator
    # The same generator state for every model: identical starting velocities and noise per (molecule, seed).
    rng = np.random.default_rng([seed, molecule_index])
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature, rng=rng)
    Stationary(atoms)
    if len(atoms) > 2:
        ZeroRotation(atoms)
    # the centre of mass stays put through a constraint: Langevin(fixcm=True) is deprecated since
    # ASE 3.28 because it does not sample NVT exactly
    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, timestep=settings.timestep * units.fs, temperature_K=settings.temperature,
                        friction=settings.friction / units.fs, rng=rng, fixcm=False)
    bonds = covalent_bonds(molecule.species, molecule.positions, criterion.bond_factor)

    def result(step: int, reason: str) -> TrajectoryResult:
        return TrajectoryResult(model, molecule.name, seed, not reason, step * settings.timestep / 1000.0, step,
                                reason, time.perf_counter() - start)

    previous: Optional[float] = None
    for step in range(settings.steps + 1):
        if step > 0:
            try:
                dynamics.step()
            except (RuntimeError, ValueError, FloatingPointError) as err:  # e.g. NaN positions in the neighbour list
                return result(step, f"the MD step failed: {type(err).__name__}: {err}")
        energy = float(atoms.get_potential_energy())
        reason = frame_failure(atoms.positions, energy, previous, bonds, molecule.species, criterion)
        if reason is not None:
            return result(step, reason)
        previous = energy
    return result(settings.steps, "")


# ---- periodic boxes in LAMMPS --------------------------------------------------------------------------

SKIN = 1.0                 # Å, LAMMPS neighbour skin
DUMP_EVERY = 10            # steps between dumped frames (energies are checked at every step)


@dataclass
class BoxSettings:
    """`--lammps-box N`: about N atoms of the molecules at `density` g/cm³, one run per seed."""

    atoms: int = 0
    density: float = 0.9
    dump_every: int = DUMP_EVERY
    timeout: float = 3600.0


def build_box(molecules: List[Molecule], settings: BoxSettings) -> Any:
    """A periodic box of the molecules (lowest-energy conformations, randomly rotated, on a
    lattice), replicated to about `settings.atoms` atoms (the benchmark's boxes)."""
    from ase import Atoms

    from ..bench.boxes import base_box, box_of_size

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
    return box


def lammps_deck(model: Path, elements: List[str], md: MDSettings, seed: int, dump_every: int) -> str:
    """Langevin NVT in LAMMPS (metal units): energies every step, unwrapped positions every
    `dump_every` steps. LAMMPS's damping time is 1 / friction."""
    lammps_seed = 104729 + 7919 * seed
    return f"""units metal
atom_style atomic
atom_modify map array
read_data data.lmp
pair_style ekd {model}
pair_coeff * * {' '.join(elements)}
neighbor {SKIN} bin
neigh_modify every 1 delay 0 check yes
velocity all create {md.temperature} {lammps_seed} mom yes rot yes dist gaussian
fix thermostat all langevin {md.temperature} {md.temperature} {1.0 / md.friction / 1000.0 if md.friction > 0 else 1e9} {lammps_seed}
fix integrate all nve
timestep {md.timestep / 1000.0}
thermo_style custom step pe
thermo_modify lost error format float %.12g
thermo 1
dump frames all custom {dump_every} frames.dump id xu yu zu
dump_modify frames sort id format float %.10g
run {md.steps}
"""


def read_thermo(log: str) -> Dict[int, float]:
    """step → potential energy (eV) from the `Step PotEng` block of a LAMMPS log."""
    energies: Dict[int, float] = {}
    inside = False
    for line in log.splitlines():
        words = line.split()
        if words[:2] == ["Step", "PotEng"]:
            inside = True
            continue
        if inside:
            if len(words) == 2 and words[0].lstrip("-").isdigit():
                energies[int(words[0])] = float(words[1])
            else:
                inside = False
    return energies


def read_dump(path: Path) -> Dict[int, np.ndarray]:
    """step → (N, 3) unwrapped positions (sorted by atom id) from a `custom id xu yu zu` dump."""
    frames: Dict[int, np.ndarray] = {}
    if not path.exists():
        return frames
    lines = path.read_text().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: TIMESTEP"):
            step = int(lines[k + 1])
            n = int(lines[k + 3])
            rows = lines[k + 9:k + 9 + n]
            if len(rows) < n:  # a frame cut short by a crash
                break
            table = np.array([[float(v) for v in row.split()] for row in rows])
            frames[step] = table[np.argsort(table[:, 0]), 1:4]
            k += 9 + n
        else:
            k += 1
    return frames


def sampled_failure(energies: Dict[int, float], frames: Dict[int, np.ndarray], species: np.ndarray,
                    criterion: FailureCriterion, box: Optional[np.ndarray]) -> Optional[Failure]:
    """The criterion on a run with energies at every step and positions at some steps; bonds
    from the first frame."""
    failure: Optional[Failure] = None
    previous: Optional[float] = None
    for step in sorted(energies):
        reason = energy_failure(energies[step], previous, len(species), criterion)
        if reason:
            failure = Failure(step, reason)
            break
        previous = energies[step]
    if frames:
        first = min(frames)
        bonds = covalent_bonds(species, frames[first], criterion.bond_factor, box)
        for step in sorted(frames):
            if failure is not None and step >= failure.step:
                break
            reason = structure_failure(frames[step], bonds, species, criterion, box)
            if reason:
                failure = Failure(step, reason)
                break
    return failure


def run_lammps_box(model_path: Path, elements: List[str], box: Any, seed: int, md: MDSettings,
                   settings: BoxSettings, criterion: FailureCriterion, folder: Path, model: str = ""
                   ) -> TrajectoryResult:
    """One LAMMPS run of the box; the criterion is applied to its log and dump afterwards. A
    LAMMPS error (lost atoms, ...) is a failure at the last step it logged."""
    import subprocess

    from ..bench.lammps_runner import BIN, write_data

    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", box, elements)
    (folder / "in.deck").write_text(lammps_deck(Path(model_path).resolve(), elements, md, seed, settings.dump_every))
    name = f"box of {len(box)} atoms"
    try:
        process = subprocess.run([str(BIN / "lmp"), "-in", "in.deck", "-log", "log.lammps", "-screen", "none"],
                                 cwd=folder, capture_output=True, text=True, timeout=settings.timeout)
        crashed = process.returncode != 0
        output = process.stdout + process.stderr
    except FileNotFoundError:
        raise EkdError(f"--lammps-box: LAMMPS not found ({BIN / 'lmp'}); install ekd with its dependencies") from None
    except subprocess.TimeoutExpired:
        crashed, output = True, f"ERROR: timed out after {settings.timeout:.0f} s"
    log = (folder / "log.lammps").read_text() if (folder / "log.lammps").exists() else ""
    if "Unrecognized pair style" in log + output:
        raise EkdError("--lammps-box: LAMMPS does not know pair_style ekd; build the plugin with "
                       "python -m ekd.plugin build")
    energies = read_thermo(log)
    if not energies and crashed:
        message = next((line for line in (log + output).splitlines() if "ERROR" in line), "no output")
        raise EkdError(f"--lammps-box: LAMMPS failed before the first step with {model_path}: {message.strip()}")
    failure = sampled_failure(energies, read_dump(folder / "frames.dump"), box.numbers, criterion,
                              np.asarray(box.cell.lengths()))
    if failure is None and crashed:
        message = next((line for line in (log + output).splitlines() if "ERROR" in line), "LAMMPS stopped")
        failure = Failure(max(energies), f"LAMMPS stopped: {message.strip()}")
    step = md.steps if failure is None else failure.step
    return TrajectoryResult(model, name, seed, failure is None, step * md.timestep / 1000.0, step,
                            "" if failure is None else failure.reason, time.perf_counter() - start)


# ---- the whole study ------------------------------------------------------------------------------------

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


def open_calculator(path: Path) -> Any:
    """The ASE calculator of an exported file; checkpoints are refused with what to do instead."""
    from ..calculator import EKDCalculator
    from .model_outputs import is_exported

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not is_exported(path):
        raise ModelFileError(f"{path}: not an exported ekd model; stability runs need exported files "
                             "(python -m ekd.export RUN_DIR --model NAME -o FILE)")
    return EKDCalculator(str(path))


def check_molecule_elements(name: str, calculator: Any, molecules: List[Molecule]) -> None:
    from ase.data import chemical_symbols

    known = set(calculator.elements)
    for molecule in molecules:
        symbols = [chemical_symbols[int(z)] for z in molecule.species]
        unknown = sorted(set(symbols) - known)
        if unknown:
            raise EkdError(f"molecule {molecule.name} has element {unknown[0]}, which model {name} "
                           f"({calculator.model_path}) does not know; it knows {' '.join(calculator.elements)}")


def summarize(results: List[TrajectoryResult], length_ps: float) -> Dict[str, Any]:
    """Fraction survived and Kaplan–Meier median time to failure, overall and per molecule."""
    def block(rows: List[TrajectoryResult]) -> Dict[str, Any]:
        times = [r.time_ps for r in rows]
        failed = [not r.survived for r in rows]
        return {"trajectories": len(rows), "survived": int(sum(r.survived for r in rows)),
                "fraction_survived": float(np.mean([r.survived for r in rows])) if rows else None,
                "median_time_to_failure_ps": median_survival(times, failed)}

    out = block(results)
    out["per_molecule"] = {name: block([r for r in results if r.molecule == name])
                           for name in dict.fromkeys(r.molecule for r in results)}
    out["run_length_ps"] = length_ps
    return out


def model_names(paths: Sequence[Path]) -> List[str]:
    from .model_outputs import model_names as names

    return names(paths)


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
    box = prepare_box(request, calculators) if request.box.atoms > 0 else None
    results: Dict[str, List[TrajectoryResult]] = {}
    for name, calculator in calculators.items():
        rows = []
        with warnings.catch_warnings():
            # The calculator warns once about close contacts; in a stability study they are expected.
            warnings.simplefilter("ignore")
            for index, molecule in enumerate(request.molecules):
                for seed in range(request.md.seeds):
                    row = run_trajectory(calculator, molecule, index, seed, request.md, request.criterion, name)
                    rows.append(row)
                    state = "survived" if row.survived else f"failed at {row.time_ps:.4f} ps: {row.reason}"
                    say(f"{name}: {molecule.name} seed {seed}: {state} ({row.seconds:.1f} s)")
        results[name] = rows
    boxes = run_boxes(request, box, names, calculators, say) if box is not None else {}
    report = {
        "source": request.source,
        "settings": {**asdict(request.md), "run_length_ps": request.md.length_ps},
        "criterion": asdict(request.criterion),
        "molecules": [m.name for m in request.molecules],
        "models": {name: {"path": str(path), **summarize(results[name], request.md.length_ps),
                          "trajectories_detail": [asdict(r) for r in results[name]]}
                   for name, path in zip(names, request.models)},
    }
    if boxes:
        report["lammps_box"] = {"atoms_requested": request.box.atoms, "density": request.box.density,
                                "dump_every": request.box.dump_every}
        for name, rows in boxes.items():
            report["models"][name]["lammps_box"] = {**summarize(rows, request.md.length_ps),
                                                    "trajectories_detail": [asdict(r) for r in rows]}
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(survival_plot(results, request.md.length_ps, out / "survival.png", boxes))
    atomic_write_text(out / "stability.json", json.dumps(report, indent=1))
    atomic_write_text(out / "stability.md", markdown(report))
    return report


def prepare_box(request: StabilityRequest, calculators: Dict[str, Any]) -> Any:
    """The `--lammps-box` box, checked before any trajectory runs."""
    box = build_box(request.molecules, request.box)
    edge = float(min(box.cell.lengths()))
    largest_cutoff = max(c.cutoff for c in calculators.values())
    if edge < largest_cutoff + SKIN:
        raise EkdError(f"--lammps-box {request.box.atoms} gives a {edge:.1f} Å box, smaller than the cutoff "
                       f"{largest_cutoff} Å + skin {SKIN} Å; ask for more atoms")
    return box


def run_boxes(request: StabilityRequest, box: Any, names: List[str], calculators: Dict[str, Any],
              say: Callable[[str], None]) -> Dict[str, List[TrajectoryResult]]:
    """`--lammps-box`: one LAMMPS run per model and seed on the same box."""
    out: Dict[str, List[TrajectoryResult]] = {}
    for name, path in zip(names, request.models):
        rows = []
        for seed in range(request.md.seeds):
            folder = Path(request.out) / "lammps" / f"{name.replace('/', '_')}_seed{seed}"
            row = run_lammps_box(path, list(calculators[name].elements), box, seed, request.md, request.box,
                                 request.criterion, folder, name)
            rows.append(row)
            state = "survived" if row.survived else f"failed at {row.time_ps:.4f} ps: {row.reason}"
            say(f"{name}: LAMMPS {row.molecule} seed {seed}: {state} ({row.seconds:.1f} s)")
        out[name] = rows
    return out


def survival_plot(results: Dict[str, List[TrajectoryResult]], length_ps: float, path: Path,
                  boxes: Optional[Dict[str, List[TrajectoryResult]]] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.5))
    for name, rows in results.items():
        t, s = kaplan_meier([r.time_ps for r in rows], [not r.survived for r in rows])
        line = ax.step(np.append(t, length_ps), np.append(s, s[-1]), where="post", label=f"{name} ({len(rows)} runs)")
        if boxes and name in boxes:
            t, s = kaplan_meier([r.time_ps for r in boxes[name]], [not r.survived for r in boxes[name]])
            ax.step(np.append(t, length_ps), np.append(s, s[-1]), where="post", ls="--", color=line[0].get_color(),
                    label=f"{name}, LAMMPS box ({len(boxes[name])} runs)")
    ax.set_xlim(0, length_ps)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of trajectories intact")
    ax.set_title("Kaplan–Meier survival", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _median(value: Optional[float], length: float) -> str:
    return f"> {length:g}" if value is None else f"{value:.4g}"


def markdown(report: Dict[str, Any]) -> str:
    s, c = report["settings"], report["criterion"]
    length = s["run_length_ps"]
    lines = [f"# MD stability{' on ' + report['source'] if report['source'] else ''}", "",
             f"Langevin NVT at {s['temperature']:g} K, {s['steps']} steps of {s['timestep']:g} fs "
             f"({length:g} ps), friction {s['friction']:g} /fs, {s['seeds']} seeds per molecule. A trajectory fails "
             f"at the first step with a non-finite energy, an energy change above {c['energy_jump']:g} eV/atom, a "
             f"bond (closer than {c['bond_factor']:g} x the covalent radii at the start) stretched beyond "
             f"{c['stretch_factor']:g} x its initial length, or an atom more than {c['isolation']:g} Å from all "
             "others. Median: Kaplan–Meier median time to failure (ps).", "",
             "| model | survived | fraction | median time to failure (ps) |", "|---|---:|---:|---:|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['survived']}/{m['trajectories']} | {m['fraction_survived']:.2f} | "
                     f"{_median(m['median_time_to_failure_ps'], length)} |")
    molecules = report["molecules"]
    lines += ["", "Per molecule: survived / trajectories (median time to failure, ps):", "",
              "| model | " + " | ".join(molecules) + " |", "|---|" + "---:|" * len(molecules)]
    for name, m in report["models"].items():
        cells = [f"{m['per_molecule'][mol]['survived']}/{m['per_molecule'][mol]['trajectories']} "
                 f"({_median(m['per_molecule'][mol]['median_time_to_failure_ps'], length)})" for mol in molecules]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "lammps_box" in report:
        lines += ["", f"Periodic box in LAMMPS ({report['lammps_box']['density']:g} g/cm³, positions checked every "
                      f"{report['lammps_box']['dump_every']} steps, energies every step):", "",
                  "| model | box | survived | median time to failure (ps) |", "|---|---|---:|---:|"]
        for name, m in report["models"].items():
            b = m["lammps_box"]
            lines.append(f"| {name} | {b['trajectories_detail'][0]['molecule']} | {b['survived']}/{b['trajectories']} | "
                         f"{_median(b['median_time_to_failure_ps'], length)} |")
    failures = [(name, r) for name, m in report["models"].items()
                for r in m["trajectories_detail"] + m.get("lammps_box", {}).get("trajectories_detail", [])
                if not r["survived"]]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {name}, {r['molecule']}, seed {r['seed']}: {r['time_ps']:.4f} ps, {r['reason']}"
                  for name, r in failures]
    return "\n".join(lines) + "\n"
