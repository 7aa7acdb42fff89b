"""One LAMMPS MD run through `pair_style ekd`, timed by LAMMPS itself, with peak memory.

The run is a subprocess (`lmp`, or `mpirun -np R lmp`): warm-up steps first (model loading,
first allocations, JIT profiling), then the timed run, whose `Performance:` line and timing
breakdown are parsed. Peak memory is the sum over the run's processes of their resident-set
high-water marks (VmHWM), sampled from /proc while the run lasts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

BIN = Path(sys.executable).parent


@dataclass
class MDResult:
    ok: bool
    atoms: int
    ranks: int
    threads: int
    steps: int
    timesteps_per_s: float = float("nan")
    katom_step_per_s: float = float("nan")
    ns_per_day: float = float("nan")
    pair_seconds_per_step: float = float("nan")
    pair_fraction: float = float("nan")
    peak_rss_mb: float = float("nan")
    error: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


def write_data(path: Path, atoms: Atoms, elements: list[str]) -> None:
    cell = atoms.cell.lengths()
    lines = ["ekd benchmark box", "", f"{len(atoms)} atoms", f"{len(elements)} atom types", ""]
    lines += [f"0.0 {cell[k]:.10f} {name}lo {name}hi" for k, name in enumerate("xyz")]
    lines += ["", "Masses", ""]
    lines += [f"{k + 1} {atomic_masses[atomic_numbers[s]]:.6f}" for k, s in enumerate(elements)]
    lines += ["", "Atoms # atomic", ""]
    type_of = {s: k + 1 for k, s in enumerate(elements)}
    for i, (s, x) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions), start=1):
        lines.append(f"{i} {type_of[s]} {x[0]:.10f} {x[1]:.10f} {x[2]:.10f}")
    path.write_text("\n".join(lines) + "\n")


def deck(model: Path, elements: list[str], steps: int, warmup: int, timestep_fs: float = 0.25) -> str:
    return f"""
units metal
atom_style atomic
read_data data.lmp
pair_style ekd {model}
pair_coeff * * {' '.join(elements)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 4928459 mom yes rot yes
fix nve all nve
timestep {timestep_fs / 1000.0}
thermo {max(steps, 1)}
run {warmup}
run {steps}
"""


def _descendants(pid: int) -> list[int]:
    children: Dict[int, list[int]] = {}
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


def _high_water_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
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


def run_md(folder: Path, model: Path, atoms: Atoms, elements: list[str], ranks: int, threads: int,
           steps: int, warmup: int, timeout: float = 3600.0) -> MDResult:
    """Run MD and parse LAMMPS's own timings; a failed run returns ok=False with the error."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", atoms, elements)
    (folder / "in.deck").write_text(deck(model.resolve(), elements, steps, warmup))
    command = [str(BIN / "lmp"), "-in", "in.deck", "-log", "log.lammps", "-screen", "none"]
    if ranks > 1:
        command = [str(BIN / "mpirun"), "-np", str(ranks)] + command
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = MDResult(ok=False, atoms=len(atoms), ranks=ranks, threads=threads, steps=steps)
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    peaks: Dict[int, int] = {}
    start = time.monotonic()
    while process.poll() is None:
        for pid in _descendants(process.pid):
            if _is_lammps(pid):
                peaks[pid] = max(peaks.get(pid, 0), _high_water_kb(pid))
        if time.monotonic() - start > timeout:
            process.kill()
            result.error = f"timed out after {timeout:.0f} s"
            return result
        time.sleep(0.1)
    output = process.stdout.read() if process.stdout else ""
    log = (folder / "log.lammps").read_text() if (folder / "log.lammps").exists() else output
    result.peak_rss_mb = sum(peaks.values()) / 1024.0 if peaks else float("nan")
    if process.returncode != 0:
        errors = [line for line in (log + output).splitlines() if "ERROR" in line]
        result.error = errors[0] if errors else f"lmp exited with code {process.returncode}"
        return result
    return _parse(log, result)


def _parse(log: str, result: MDResult) -> MDResult:
    performance = re.findall(r"Performance: ([\d.]+) ns/day.*?([\d.]+) timesteps/s, ([\d.]+) (|k|M)atom-step/s", log)
    loops = re.findall(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", log)
    pair_rows = re.findall(r"^Pair\s*\|\s*([\d.eE+-]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*([\d.eE+-]+)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)",
                           log, flags=re.MULTILINE)
    if not performance or not loops:
        result.error = "no Performance line in the LAMMPS log"
        return result
    ns_day, per_s, rate, prefix = performance[-1]
    katom = float(rate) * {"": 1e-3, "k": 1.0, "M": 1e3}[prefix]
    ns_day, per_s = float(ns_day), float(per_s)
    loop_time, steps = float(loops[-1][0]), int(loops[-1][1])
    result.ns_per_day, result.timesteps_per_s, result.katom_step_per_s = ns_day, per_s, katom
    if pair_rows:
        pair_avg, pair_percent = float(pair_rows[-1][1]), float(pair_rows[-1][3])
        result.pair_seconds_per_step = pair_avg / max(steps, 1)
        result.pair_fraction = pair_percent / 100.0
    result.extra["loop_seconds"] = loop_time
    result.ok = True
    return result
