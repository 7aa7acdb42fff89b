#!/usr/bin/env python
"""Generate ekd's small embedded CCSD(T) data set (``chno_ccsdt.h5``).

Protocol
--------
1. Molecules: small closed-shell CHNO molecules with at most three heavy
   atoms (default: water, ammonia, methane, formaldehyde, methanol,
   methylamine, ethanol; formamide is available but left out of the default
   set to keep the run near three hours on one core).  Starting geometries
   come from ASE's G2 collection (formamide is typed in below) and are
   relaxed with GFN2-xTB.
2. Geometries: one GFN2-xTB molecular-dynamics trajectory per molecule
   (tblite's ASE calculator, ASE Langevin thermostat, default 800 K, 0.5 fs
   time step).  After an equilibration period one frame is kept every
   ``--interval`` steps, so the kept frames are decorrelated.  A frame whose
   covalent bonding pattern differs from the relaxed molecule's is skipped.
   Initial velocities and thermostat noise come from a seeded NumPy RNG, so
   the geometries are reproducible.
3. Labels: RHF-based CCSD(T)/cc-pVDZ total energies (PySCF; frozen 1s cores
   of C, N and O by default) for every frame.  For a held-out test subset
   (default 10 % of each molecule's frames, drawn with the seed) also the
   analytic CCSD(T) gradient (PySCF's ``grad.ccsd_t`` with the (T) lambda
   equations; about 10-20 times the cost of an energy), stored as
   forces = -gradient in Hartree/Angstrom.  Frames outside the test subset
   have NaN forces.  The GFN2-xTB energy (eV) and
   forces (eV/Angstrom) of every frame are stored too.
4. Output: one HDF5 file in the ANI-1x / ANI-1ccx layout (one group per
   molecule, named by its chemical formula), written atomically.

The run is long (three to four hours on one core), so partial results are kept in
a work folder and saved atomically every few conformations; rerun with
``--resume`` to continue a killed run.  ``--benchmark`` times one conformation
of each molecule and estimates the total cost; ``--check`` compares the
analytic CCSD(T) forces of a distorted water molecule with central finite
differences of the CCSD(T) energy.

Regenerate the shipped file (from the repository root; PySCF and tblite come with
``pip install -e .[qc]``)::

    OMP_NUM_THREADS=1 python examples/data/make_default_data.py --resume
"""
from __future__ import annotations

import os

# Single-threaded by default: BLAS and OpenMP read these at import time.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.build import molecule as ase_molecule
from ase.md.langevin import Langevin
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.neighborlist import natural_cutoffs, neighbor_list
from ase.optimize import BFGS
from pyscf import lib
from tblite.ase import TBLite

from ekd.data.units import HARTREE_EV
from ekd.learn.oracle import CoupledCluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "python" / "ekd" / "embedded" / "chno_ccsdt.h5"
DEFAULT_WORK = HERE / ".work"

# ASE 3.29 renamed MaxwellBoltzmannDistribution; both take the same arguments.
thermalize_momenta = getattr(velocitydistribution, "thermalize_momenta",
                             velocitydistribution.MaxwellBoltzmannDistribution)

# Planar formamide (not in ASE's G2 collection); relaxed with GFN2-xTB later.
FORMAMIDE = Atoms(
    "CONHHH",
    positions=[
        (0.000, 0.419, 0.000),
        (1.212, 0.540, 0.000),
        (-0.717, -0.730, 0.000),
        (-0.573, 1.350, 0.000),
        (-0.250, -1.620, 0.000),
        (-1.720, -0.700, 0.000),
    ],
)

# Common name -> name in ASE's G2 collection (or an Atoms object).
MOLECULES: dict[str, str | Atoms] = {
    "water": "H2O",
    "ammonia": "NH3",
    "methane": "CH4",
    "formaldehyde": "H2CO",
    "methanol": "CH3OH",
    "methylamine": "H3CNH2",
    "formamide": FORMAMIDE,
    "ethanol": "CH3CH2OH",
}
DEFAULT_MOLECULES = [name for name in MOLECULES if name != "formamide"]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="See the module docstring for the full protocol.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output HDF5 file (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="folder for resumable partial results (default: %(default)s)")
    parser.add_argument("--molecules", nargs="+", default=DEFAULT_MOLECULES,
                        choices=list(MOLECULES), metavar="NAME",
                        help="molecules to include, by common name, out of %(choices)s "
                             f"(default: {' '.join(DEFAULT_MOLECULES)})")
    parser.add_argument("--conformations", type=int, default=200,
                        help="conformations per molecule (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.10,
                        help="fraction of each molecule's conformations that also get "
                             "CCSD(T) forces (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20240611,
                        help="seed of all random choices (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=800.0,
                        help="MD thermostat temperature in K (default: %(default)s)")
    parser.add_argument("--timestep", type=float, default=0.5,
                        help="MD time step in fs (default: %(default)s)")
    parser.add_argument("--equilibration", type=int, default=2000,
                        help="MD steps discarded before sampling (default: %(default)s)")
    parser.add_argument("--interval", type=int, default=50,
                        help="MD steps between kept frames (default: %(default)s)")
    parser.add_argument("--friction", type=float, default=0.01,
                        help="Langevin friction in 1/fs (default: %(default)s)")
    parser.add_argument("--basis", default="cc-pVDZ",
                        help="Gaussian basis set for CCSD(T) (default: %(default)s)")
    parser.add_argument("--all-electron", action="store_true",
                        help="correlate all electrons (default: freeze the 1s cores of C, N, O)")
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="save partial results after this many conformations (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for PySCF (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from partial results in --work instead of starting over")
    parser.add_argument("--benchmark", action="store_true",
                        help="only time one conformation (energy and gradient) per molecule "
                             "and estimate the total cost")
    parser.add_argument("--check", action="store_true",
                        help="only compare analytic CCSD(T) forces on water with finite differences")
    args = parser.parse_args(argv)
    if args.conformations < 1 or not 0.0 <= args.test_fraction <= 1.0:
        parser.error("need --conformations >= 1 and 0 <= --test-fraction <= 1")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def formula(atoms: Atoms) -> str:
    return atoms.get_chemical_formula()


def molecule_rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """An RNG that depends only on the seed, the molecule and the purpose.

    Selecting a different subset of molecules does not change any molecule's data.
    """
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


# --------------------------------------------------------------------------
# Geometry sampling with GFN2-xTB
# --------------------------------------------------------------------------
def gfn2_calculator() -> TBLite:
    return TBLite(method="GFN2-xTB", verbosity=0)


def starting_geometry(name: str) -> Atoms:
    """The molecule's geometry relaxed with GFN2-xTB."""
    source = MOLECULES[name]
    atoms = source.copy() if isinstance(source, Atoms) else ase_molecule(source)
    atoms.calc = gfn2_calculator()
    BFGS(atoms, logfile=None).run(fmax=0.005, steps=500)
    return atoms


def bond_matrix(atoms: Atoms) -> np.ndarray:
    """Covalent bonds: pairs closer than 1.25 x the sum of natural radii."""
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.25))
    bonds = np.zeros((len(atoms), len(atoms)), dtype=bool)
    bonds[i, j] = True
    return bonds


@dataclass
class Trajectory:
    """Kept MD frames of one molecule with their GFN2-xTB labels."""

    numbers: np.ndarray  # (n_atoms,)
    positions: np.ndarray  # (n_conf, n_atoms, 3) Angstrom
    gfn2_energy: np.ndarray  # (n_conf,) eV
    gfn2_forces: np.ndarray  # (n_conf, n_atoms, 3) eV/Angstrom
    n_skipped: int  # frames skipped because a bond broke or formed


def sample_trajectory(name: str, args: argparse.Namespace) -> Trajectory:
    """Run Langevin MD with GFN2-xTB and keep ``args.conformations`` frames."""
    atoms = starting_geometry(name)
    reference_bonds = bond_matrix(atoms)
    rng = molecule_rng(args.seed, name, "md")
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, timestep=args.timestep * units.fs,
                        temperature_K=args.temperature,
                        friction=args.friction / units.fs, fixcm=False, rng=rng)
    dynamics.run(args.equilibration)

    positions, energies, forces = [], [], []
    n_skipped = 0
    while len(positions) < args.conformations:
        dynamics.run(args.interval)
        if not np.array_equal(bond_matrix(atoms), reference_bonds):
            n_skipped += 1
            if n_skipped > args.conformations:
                raise RuntimeError(f"{name}: the molecule keeps reacting at this temperature")
            continue
        positions.append(atoms.get_positions())
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return Trajectory(atoms.get_atomic_numbers(), np.array(positions),
                      np.array(energies), np.array(forces), n_skipped)


def choose_test_subset(name: str, args: argparse.Namespace) -> np.ndarray:
    """Sorted indices of the conformations that also get CCSD(T) forces."""
    n_test = int(round(args.test_fraction * args.conformations))
    rng = molecule_rng(args.seed, name, "test-subset")
    return np.sort(rng.choice(args.conformations, size=n_test, replace=False))


# --------------------------------------------------------------------------
# CCSD(T) labels with PySCF
# --------------------------------------------------------------------------
@dataclass
class CCResult:
    energy: float  # Hartree
    forces: np.ndarray | None  # (n_atoms, 3) Hartree/Angstrom, or None
    seconds_energy: float
    seconds_gradient: float


def ccsd_t(numbers: np.ndarray, positions: np.ndarray, basis: str,
           frozen_core: bool, gradient: bool) -> CCResult:
    """RHF-CCSD(T) energy and, if asked, the analytic CCSD(T) forces (ekd's CCSD(T) oracle,
    ekd/learn/oracle.py, the one place of the recipe), in Hartree and Hartree/Angstrom."""
    oracle = CoupledCluster(basis=basis, frozen_core=frozen_core, threads=lib.num_threads())
    start = time.perf_counter()
    solved = oracle.solve(np.asarray(numbers), np.asarray(positions))
    seconds_energy = time.perf_counter() - start
    if not gradient:
        return CCResult(solved.energy / HARTREE_EV, None, seconds_energy, 0.0)
    forces = oracle.gradient_forces(solved) / HARTREE_EV
    return CCResult(solved.energy / HARTREE_EV, forces, seconds_energy,
                    time.perf_counter() - start - seconds_energy)


# --------------------------------------------------------------------------
# Resumable per-molecule work files
# --------------------------------------------------------------------------
def settings_key(args: argparse.Namespace) -> str:
    """The settings a work file depends on; a resume must match them."""
    keys = ("conformations", "test_fraction", "seed", "temperature", "timestep",
            "equilibration", "interval", "friction", "basis", "all_electron")
    return json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True)


def save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(handle, "wb") as stream:
        np.savez(stream, **arrays)
    os.replace(tmp, path)


def load_work(path: Path, args: argparse.Namespace) -> dict[str, np.ndarray] | None:
    """Partial results from an earlier run, or None when starting over."""
    if not (args.resume and path.exists()):
        return None
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    if str(arrays["settings"]) != settings_key(args):
        raise SystemExit(f"{path} was made with other settings; "
                         "rerun without --resume or delete it")
    return arrays


def trajectory_work(name: str, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """MD frames and test subset of one molecule, sampled once then reused."""
    path = args.work / f"{name}.md.npz"
    work = load_work(path, args)
    if work is not None:
        return work
    log(f"[{name}] GFN2-xTB MD at {args.temperature:g} K ...")
    start = time.perf_counter()
    trajectory = sample_trajectory(name, args)
    log(f"[{name}] {args.conformations} frames in {time.perf_counter() - start:.0f} s "
        f"({trajectory.n_skipped} skipped for changed bonding)")
    work = dict(settings=np.array(settings_key(args)), numbers=trajectory.numbers,
                positions=trajectory.positions, gfn2_energy=trajectory.gfn2_energy,
                gfn2_forces=trajectory.gfn2_forces, n_skipped=np.array(trajectory.n_skipped),
                test=choose_test_subset(name, args))
    save_npz_atomically(path, **work)
    return work


def empty_labels(n_conf: int, n_atoms: int, settings: str) -> dict[str, np.ndarray]:
    return dict(settings=np.array(settings),
                energy=np.full(n_conf, np.nan),
                forces=np.full((n_conf, n_atoms, 3), np.nan),
                done=np.zeros(n_conf, dtype=bool),
                seconds_energy=np.full(n_conf, np.nan),
                seconds_gradient=np.full(n_conf, np.nan))


def eta_seconds(labels: dict[str, np.ndarray], is_test: np.ndarray) -> float:
    """Remaining time from the mean cost of the conformations done so far."""
    done = labels["done"]
    mean_energy = labels["seconds_energy"][done].mean()
    grad_times = labels["seconds_gradient"][done & is_test]
    mean_grad = grad_times.mean() if grad_times.size else 0.0
    return float(np.sum(~done) * mean_energy + np.sum(~done & is_test) * mean_grad)


def log_progress(name: str, labels: dict[str, np.ndarray], is_test: np.ndarray) -> None:
    done = labels["done"]
    grad_times = labels["seconds_gradient"][done & is_test]
    log(f"[{name}] {done.sum()}/{done.size} conformations "
        f"({(done & is_test).sum()}/{is_test.sum()} gradients), "
        f"{np.mean(labels['seconds_energy'][done]):.1f} s/energy, "
        f"{grad_times.mean() if grad_times.size else float('nan'):.1f} s/gradient, "
        f"ETA {eta_seconds(labels, is_test) / 60:.0f} min")


def label_work(name: str, md: dict[str, np.ndarray],
               args: argparse.Namespace) -> dict[str, np.ndarray]:
    """CCSD(T) energies of all frames and forces of the test frames, resumable."""
    path = args.work / f"{name}.cc.npz"
    positions, numbers = md["positions"], md["numbers"]
    labels = load_work(path, args) or empty_labels(len(positions), len(numbers),
                                                   settings_key(args))
    is_test = np.zeros(len(positions), dtype=bool)
    is_test[md["test"]] = True
    todo = np.flatnonzero(~labels["done"])
    for count, index in enumerate(todo, start=1):
        result = ccsd_t(numbers, positions[index], args.basis,
                        frozen_core=not args.all_electron, gradient=bool(is_test[index]))
        labels["energy"][index] = result.energy
        if result.forces is not None:
            labels["forces"][index] = result.forces
            labels["seconds_gradient"][index] = result.seconds_gradient
        labels["seconds_energy"][index] = result.seconds_energy
        labels["done"][index] = True
        if count % args.checkpoint_every == 0 or count == len(todo):
            save_npz_atomically(path, **labels)
            log_progress(name, labels, is_test)
    return labels


# --------------------------------------------------------------------------
# Output file
# --------------------------------------------------------------------------
def file_attributes(args: argparse.Namespace) -> dict[str, object]:
    frozen = ("none (all electrons correlated)" if args.all_electron
              else "1s orbitals of C, N and O frozen")
    description = (
        "Small CHNO molecules (at most three heavy atoms). Geometries are frames of "
        f"one GFN2-xTB Langevin molecular-dynamics trajectory per molecule at "
        f"{args.temperature:g} K (tblite through ASE, {args.timestep:g} fs time step, "
        f"first {args.equilibration} steps discarded, then one frame every "
        f"{args.interval} steps; frames whose covalent bonding changed are skipped). "
        f"Every frame has an RHF-based CCSD({'T'})/{args.basis} total energy from PySCF "
        f"(frozen core: {frozen}). A seeded random {args.test_fraction:.0%} of each "
        "molecule's frames (the test subset) also has analytic CCSD(T) forces; all "
        "other frames have NaN forces. GFN2-xTB energies (eV) and forces (eV/Angstrom) "
        "of every frame are included. Made by examples/data/make_default_data.py."
    )
    return {
        "method": "CCSD(T)",
        "basis": args.basis,
        "reference": "RHF",
        "frozen_core": frozen,
        "sampling_method": "GFN2-xTB Langevin molecular dynamics",
        "temperature_K": args.temperature,
        "timestep_fs": args.timestep,
        "equilibration_steps": args.equilibration,
        "sampling_interval_steps": args.interval,
        "friction_per_fs": args.friction,
        "conformations_per_molecule": args.conformations,
        "test_fraction": args.test_fraction,
        "seed": args.seed,
        "energy_unit": "Hartree",
        "length_unit": "Angstrom",
        "forces_unit": "Hartree/Angstrom",
        "gfn2_energy_unit": "eV",
        "gfn2_forces_unit": "eV/Angstrom",
        "test_subset": "conformations whose ccsd(t)_dz.forces are finite",
        "programs": (f"pyscf {version('pyscf')}, tblite {version('tblite')}, "
                     f"ase {version('ase')}, numpy {np.__version__}, "
                     f"h5py {h5py.__version__}, python {platform.python_version()}"),
        "date": datetime.date.today().isoformat(),
        "description": description,
    }


def write_dataset(path: Path, molecules: dict[str, tuple[dict, dict]],
                  args: argparse.Namespace) -> None:
    """Write all molecules in the ANI-1x layout to a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    os.chmod(tmp, 0o644)  # mkstemp makes the file private
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs.update(file_attributes(args))
            for name, (md, labels) in molecules.items():
                group = out.create_group(formula(Atoms(numbers=md["numbers"])))
                group.attrs["name"] = name
                group.attrs["md_frames_skipped"] = int(md["n_skipped"])
                group.create_dataset("atomic_numbers", data=md["numbers"].astype(np.int64))
                group.create_dataset("coordinates", data=md["positions"])
                group.create_dataset("ccsd(t)_dz.energy", data=labels["energy"])
                group.create_dataset("ccsd(t)_dz.forces", data=labels["forces"])
                group.create_dataset("gfn2.energy", data=md["gfn2_energy"])
                group.create_dataset("gfn2.forces", data=md["gfn2_forces"])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --------------------------------------------------------------------------
# Benchmark and finite-difference check
# --------------------------------------------------------------------------
def benchmark(args: argparse.Namespace) -> None:
    """Time one conformation per molecule and estimate the full run."""
    n_test = int(round(args.test_fraction * args.conformations))
    total = 0.0
    for name in args.molecules:
        atoms = starting_geometry(name)
        atoms.rattle(0.05, seed=args.seed)
        result = ccsd_t(atoms.numbers, atoms.positions, args.basis,
                        frozen_core=not args.all_electron, gradient=True)
        cost = (args.conformations * result.seconds_energy
                + n_test * result.seconds_gradient)
        total += cost
        log(f"{name:13s} {formula(atoms):6s} energy {result.seconds_energy:6.2f} s, gradient +{result.seconds_gradient:6.2f} s"
            f" -> {cost / 60:5.1f} min for {args.conformations} energies + {n_test} gradients")
    log(f"estimated CCSD(T) total: {total / 3600:.2f} h (plus GFN2-xTB MD)")


def finite_difference_check(args: argparse.Namespace, step: float = 1e-3) -> None:
    """Compare analytic CCSD(T) forces on distorted water with central differences."""
    atoms = ase_molecule("H2O")
    atoms.rattle(0.1, seed=args.seed)
    numbers, positions = atoms.numbers, atoms.positions
    frozen_core = not args.all_electron
    analytic = ccsd_t(numbers, positions, args.basis, frozen_core, gradient=True).forces
    numeric = np.zeros_like(positions)
    for atom in range(len(atoms)):
        for axis in range(3):
            shifted = []
            for sign in (+1, -1):
                displaced = positions.copy()
                displaced[atom, axis] += sign * step
                shifted.append(ccsd_t(numbers, displaced, args.basis, frozen_core,
                                      gradient=False).energy)
            numeric[atom, axis] = -(shifted[0] - shifted[1]) / (2 * step)
    print("analytic CCSD(T) forces (Hartree/Angstrom):\n", analytic)
    print("-dE/dx by central differences, step 1e-3 Angstrom:\n", numeric)
    print(f"max |difference| = {np.abs(analytic - numeric).max():.2e} Hartree/Angstrom, "
          f"max |force| = {np.abs(analytic).max():.2e}")


# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lib.num_threads(args.threads)
    if args.check:
        finite_difference_check(args)
        return
    if args.benchmark:
        benchmark(args)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / ".gitignore").write_text("*\n")
    start = time.perf_counter()
    results = {}
    for number, name in enumerate(args.molecules, start=1):
        log(f"== molecule {number}/{len(args.molecules)}: {name}")
        md = trajectory_work(name, args)
        results[name] = (md, label_work(name, md, args))
    write_dataset(args.out, results, args)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) "
        f"in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
