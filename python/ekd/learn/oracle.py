"""The oracle of active learning: the reference method that labels what the student's MD found.

`[learn] oracle` names it:
- "ccsd(t)": RHF-CCSD(T) with PySCF, the embedded data's own level (`oracle_options`: basis,
  default cc-pVDZ; frozen_core, default true, freezes the 1s cores of Li–Ne; forces, default
  false, adds analytic CCSD(T) gradients at several times the cost of an energy; threads, default 1);
- "gfn2-xtb": GFN2-xTB with tblite (energies and forces, milliseconds per molecule: for tests and
  demonstrations of the loop, never a substitute for coupled-cluster data);
- "ase:package.module.Class": any ASE calculator, built as Class(**oracle_options).

Every call stands alone (`run_calls`): each result — energy and forces in eV and eV/Å, or the
reason it failed — is written to its own file before the next call starts, so a killed run
resumes with nothing lost and nothing computed twice; `jobs` processes share the calls.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np
from ase import Atoms

from ..data.units import BOHR_ANGSTROM as BOHR, HARTREE_EV as HARTREE
from ..errors import ConfigError, DataError
from ..fileio import replacing
from ..training.progress import Progress

SCF_CONV_TOL = 1e-10           # Hartree
CC_CONV_TOL = 1e-9
CC_CONV_TOL_NORMT = 1e-7
LAMBDA_CONV_TOL = 1e-7


class Oracle(Protocol):
    """A reference method: energy (eV) and, if it gives them, forces (eV/Å) of one structure."""

    level: str      # level of theory, e.g. "CCSD(T)/cc-pVDZ (frozen core)"
    program: str    # program and version, e.g. "pyscf 2.14.0"

    def compute(self, species: np.ndarray, positions: np.ndarray) -> tuple[float, Optional[np.ndarray]]: ...

    def check_elements(self, elements: Sequence[int]) -> None: ...


def _package_version(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


def _import(module: str, oracle: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"[learn] oracle = {oracle!r} needs the Python package {module.split('.')[0]!r}, which is "
                          "not installed (pip install .[qc] installs PySCF and tblite)") from None


@dataclass
class CoupledCluster:
    """RHF-CCSD(T) energies (and, with forces = true, analytic gradients) with PySCF."""

    basis: str = "cc-pVDZ"
    frozen_core: bool = True
    forces: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        self.pyscf = _import("pyscf", "ccsd(t)")
        self.level = f"CCSD(T)/{self.basis}" + (" (frozen core)" if self.frozen_core else " (all electron)")
        self.program = _package_version("pyscf")

    def check_elements(self, elements: Sequence[int]) -> None:
        from pyscf import gto

        for z in elements:
            try:
                gto.M(atom=[(int(z), (0.0, 0.0, 0.0))], basis=self.basis, spin=int(z) % 2, verbose=0)
            except Exception as err:  # PySCF raises several kinds for a missing basis
                raise ConfigError(f"[learn] oracle ccsd(t): basis {self.basis!r} has no functions for element "
                                  f"{int(z)} ({err})") from None

    def compute(self, species: np.ndarray, positions: np.ndarray) -> tuple[float, Optional[np.ndarray]]:
        solved = self.solve(species, positions)
        return solved.energy, (self.gradient_forces(solved) if self.forces else None)

    def solve(self, species: np.ndarray, positions: np.ndarray) -> "Solved":
        """The CCSD(T) energy (eV), keeping what the gradient needs."""
        from pyscf import cc, gto, lib, scf

        lib.num_threads(self.threads)
        mol = gto.M(atom=[(int(z), tuple(r)) for z, r in zip(species, positions)], unit="Angstrom",
                    basis=self.basis, charge=0, spin=0, verbose=0)
        mean_field = scf.RHF(mol)
        mean_field.conv_tol = SCF_CONV_TOL
        mean_field.kernel()
        if not mean_field.converged:
            raise RuntimeError("RHF did not converge")
        frozen = int(np.count_nonzero((species >= 3) & (species <= 10))) if self.frozen_core else 0
        coupled = cc.CCSD(mean_field, frozen=frozen or None)
        coupled.conv_tol, coupled.conv_tol_normt = CC_CONV_TOL, CC_CONV_TOL_NORMT
        coupled.kernel()
        if not coupled.converged:
            raise RuntimeError("CCSD did not converge")
        eris = coupled.ao2mo()
        return Solved((coupled.e_tot + coupled.ccsd_t(eris=eris)) * HARTREE, coupled, eris)

    def gradient_forces(self, solved: "Solved") -> np.ndarray:
        """Analytic CCSD(T) forces (eV/Å) of a solved structure."""
        from pyscf.cc import ccsd_t_lambda
        from pyscf.grad import ccsd_t as ccsd_t_grad

        coupled, eris = solved.coupled, solved.eris
        # the (T) gradient needs the (T) lambda amplitudes, not the CCSD ones
        converged, l1, l2 = ccsd_t_lambda.kernel(coupled, eris, coupled.t1, coupled.t2, tol=LAMBDA_CONV_TOL,
                                                 verbose=0)
        if not converged:
            raise RuntimeError("CCSD(T) lambda equations did not converge")
        gradient = ccsd_t_grad.Gradients(coupled).kernel(coupled.t1, coupled.t2, l1, l2, eris=eris)
        return -np.asarray(gradient) * HARTREE / BOHR


@dataclass
class Solved:
    """A converged CCSD(T) calculation: its energy (eV) and the amplitudes the gradient needs."""

    energy: float
    coupled: Any
    eris: Any


class AseOracle:
    """Any ASE calculator; "gfn2-xtb" is tblite's."""

    def __init__(self, name: str, options: Dict[str, Any]) -> None:
        if name == "gfn2-xtb":
            module, cls, options = "tblite.ase", "TBLite", {"method": "GFN2-xTB", "verbosity": 0, **options}
        else:
            module, _, cls = name[len("ase:"):].rpartition(".")
        calculator_class = getattr(_import(module, name), cls, None)
        if calculator_class is None:
            raise ConfigError(f"[learn] oracle {name!r}: module {module} has no {cls}")
        try:
            self.calculator = calculator_class(**options)
        except TypeError as err:
            raise ConfigError(f"[learn] oracle_options do not fit {module}.{cls}: {err}") from None
        self.level = options.get("method", cls) if name == "gfn2-xtb" else f"{module}.{cls}({json.dumps(options)})"
        self.program = _package_version(module.split(".")[0])

    def check_elements(self, elements: Sequence[int]) -> None:
        """An ASE calculator cannot say which elements it knows; the agreement check with the data finds out."""

    def compute(self, species: np.ndarray, positions: np.ndarray) -> tuple[float, Optional[np.ndarray]]:
        atoms = Atoms(numbers=species, positions=positions)
        atoms.calc = self.calculator
        energy = float(atoms.get_potential_energy())
        try:
            forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        except Exception:  # a calculator without forces (PropertyNotImplementedError and kin)
            forces = None
        return energy, forces


def make_oracle(name: str, options: Dict[str, Any]) -> Oracle:
    """The oracle `[learn] oracle` names, with its `oracle_options`."""
    if name == "ccsd(t)":
        known = {"basis", "frozen_core", "forces", "threads"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"[learn] oracle_options: unknown key(s) {', '.join(unknown)} for ccsd(t); known: "
                              f"{', '.join(sorted(known))}")
        return CoupledCluster(**options)
    if name == "gfn2-xtb" or name.startswith("ase:"):
        return AseOracle(name, options)
    raise ConfigError(f"[learn] oracle {name!r} is not known")


@lru_cache(maxsize=2)
def _cached_oracle(name: str, options_json: str) -> Oracle:
    return make_oracle(name, json.loads(options_json))


# ---- calls ----------------------------------------------------------------------------------------

@dataclass
class CallResult:
    """One oracle call: energy (eV), forces (eV/Å; NaN when the oracle gives none) or why it failed."""

    ok: bool
    energy: float
    forces: np.ndarray
    seconds: float
    message: str = ""


def call_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"{index:06d}.npz"


def read_call(path: Path) -> CallResult:
    """A call's result file (numbers only: reading it never runs code)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return CallResult(bool(saved["ok"]), float(saved["energy"]), np.asarray(saved["forces"], np.float64),
                              float(saved["seconds"]), str(saved["message"]))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a readable oracle result ({err}); delete it to compute it again") from None


def _write_call(path: Path, result: CallResult) -> None:
    # the temporary name is this process's (calls run in parallel workers) and matches the
    # leftovers run_calls removes
    with replacing(path, path.with_name(f"{path.name}.{os.getpid()}.tmp")) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, ok=result.ok, energy=result.energy, forces=result.forces, seconds=result.seconds,
                 message=result.message)


def one_call(name: str, options_json: str, species: np.ndarray, positions: np.ndarray, path: str) -> CallResult:
    """Compute one structure and write its result file (also in a worker process)."""
    oracle = _cached_oracle(name, options_json)
    start = time.perf_counter()
    try:
        energy, forces = oracle.compute(species, positions)
        ok = bool(np.isfinite(energy)) and (forces is None or bool(np.isfinite(forces).all()))
        message = "" if ok else "non-finite energy or forces"
    except Exception as err:  # non-convergence and any other failure of one structure: recorded, skipped
        energy, forces, ok, message = float("nan"), None, False, f"{type(err).__name__}: {err}"
    result = CallResult(ok, float(energy) if ok else float("nan"),
                        forces if (ok and forces is not None) else np.full((len(species), 3), np.nan),
                        time.perf_counter() - start, message)
    _write_call(Path(path), result)
    return result


def run_calls(name: str, options: Dict[str, Any], structures: List[tuple[np.ndarray, np.ndarray]], folder: Path,
              jobs: int, progress: bool, say: Callable[[str], None]) -> List[CallResult]:
    """Every structure's result, computing only those without a result file in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.npz*.tmp"):  # a call killed while writing its result: computed again
        leftover.unlink()
    options_json = json.dumps(options, sort_keys=True)
    todo = [i for i in range(len(structures)) if not call_path(folder, i).exists()]
    if len(todo) < len(structures):
        say(f"oracle: {len(structures) - len(todo)} of {len(structures)} results kept from an earlier run")
    bar = Progress(len(todo), f"oracle {name}", unit="call", enabled=progress)
    if jobs == 1 or len(todo) <= 1:
        for i in todo:
            one_call(name, options_json, *structures[i], str(call_path(folder, i)))
            bar.update(1)
    else:
        # spawn, not fork: the parent holds torch's thread pools, which do not survive a fork
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(one_call, name, options_json, *structures[i], str(call_path(folder, i)))
                       for i in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return [read_call(call_path(folder, i)) for i in range(len(structures))]


def check_agreement(oracle: Oracle, name: str, species: List[np.ndarray], positions: List[np.ndarray],
                    energies: np.ndarray, labels: List[str], tolerance: float) -> List[float]:
    """Recompute data conformations with the oracle; their energies must agree with the data's
    within `tolerance` eV (the same level of theory, in the same units), else the grown data
    would mix methods. Returns the differences (eV)."""
    differences = []
    for z, x, energy, label in zip(species, positions, energies, labels):
        try:
            mine, _ = oracle.compute(z, x)
        except Exception as err:
            raise ConfigError(f"[learn] oracle {name} failed on data conformation {label}: {err}") from None
        differences.append(float(mine - energy))
        if not abs(mine - energy) <= tolerance:
            raise ConfigError(
                f"[learn] oracle {name} ({oracle.level}) gives {mine:.6f} eV for data conformation {label}, the data "
                f"{energy:.6f} eV (difference {mine - energy:+.4g} eV, oracle_tolerance {tolerance:g} eV): another "
                "level of theory or another unit; the grown data would mix methods. Choose the data's own method")
    return differences
