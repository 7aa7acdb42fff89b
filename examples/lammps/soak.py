"""Soak test: the student in LAMMPS for a long run on several ranks; memory and energy over time.

    .venv/bin/python examples/lammps/soak.py [--run RUN_DIR] [--model student|FILE] [--steps 100000]
                                             [--ranks 2] [--every 1000] [--out soak]

Runs `pair_style ekd` on a periodic box of the run's molecules (a dilute gas by default, the
domain of a student trained on isolated molecules; see run_md.py) split into slabs along x, one
per MPI rank (`processors R 1 1`), with neighbour lists checked every step, so molecules cross
between ranks and lists are rebuilt throughout. A Langevin thermostat holds --temperature for
all but the last --nve-steps steps, which run in NVE to measure the energy drift: without it,
the molecules of a student with the demo's settings found holes of its energy surface and the
box reached 1,550 K after 5 ps of NVE (docs/bench.md), which tests the model, not the run. While LAMMPS
runs, every thermo row (every --every steps) is paired with the resident memory (VmRSS) of
each rank's process read from /proc at that moment (ekd.md.lammps_driver's `monitor`).

Model: --model names a model of the run directory --run (default: the demo's student in
runs/default, exported at --dtype as run_md.py does) or is an exported file used as it is.
The box is built from the run's molecules (without a run directory: the demo's embedded data).

Reports (printed, and written to OUT/soak.md and OUT/soak.json with every sample; the LAMMPS
deck, data, model and log stay in OUT/lammps/):
- resident memory of each rank after warm-up (--warmup, default the first 10% of the steps),
  at half of the steps and at the end; its growth in % from warm-up and over the second half (a
  leak grows alike in both; a heap keeping its largest step's pages grows in steps, early), and
  the largest value after warm-up;
- total energy drift in the NVE segment: the least-squares slope of the total energy, eV per
  atom per ps, and the largest |E(t) - E(start)| per atom;
- temperature, neighbour list builds, rms displacement, and the range of atom counts in rank 0's
  slab (evidence that atoms moved between ranks); timesteps/s over the whole run.

Exit codes: 0 done and every rank grew less than --max-growth %; 1 LAMMPS failed or memory grew
more; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from ase import Atoms

from ekd.config import load_config
from ekd.data import read_data
from ekd.errors import EkdError
from ekd.export import Metadata, export_model, is_exported, read_metadata
from ekd.md.boxes import base_box, box_of_size, representative_molecules
from ekd.md.lammps_driver import (LOG, SKIN, neighbor_lines, pair_lines, read_thermo, run_lammps,
                                  system_lines, thermo_lines, write_data)
from ekd.run_layout import RunLayout, checkpoints_for

COLUMNS = ["step", "time", "temp", "pe", "etotal", "c_msd[4]", "c_rank0"]   # thermo, in this order
BASE_ATOMS = 120     # atoms per base box, replicated to --atoms (as ekd.bench and run_md.py build boxes)


@dataclass
class Sample:
    """One thermo row and the resident memory of every rank when it appeared in the log."""

    step: int
    time_ps: float
    temperature: float
    total_energy: float
    msd: float                        # Å², mean squared displacement from the start (unwrapped)
    rank0_atoms: int                  # atoms in rank 0's slab
    rss_mb: Dict[int, float]          # rank -> VmRSS, MB


@dataclass
class Watcher:
    """The driver's monitor: reads new thermo rows from the growing log and pairs each with the
    memory sample taken when it appeared; prints progress every `report_every` steps."""

    log: Path
    report_every: int
    samples: List[Sample] = field(default_factory=list)
    size: int = -1

    def __call__(self, rss_mb: Dict[int, float]) -> None:
        if not self.log.exists() or self.log.stat().st_size == self.size:
            return
        self.size = self.log.stat().st_size
        text = self.log.read_text()
        complete = text[:text.rfind("\n") + 1]   # a row still being written is read at the next sample
        thermo = read_thermo(complete)
        for row in thermo.rows[len(self.samples):]:
            values = dict(zip(thermo.columns, row))
            sample = Sample(int(values["Step"]), values["Time"], values["Temp"], values["TotEng"],
                            values["c_msd[4]"], int(values["c_rank0"]), dict(rss_mb))
            repeated = bool(self.samples) and self.samples[-1].step == sample.step   # the NVE run's first row
            self.samples.append(sample)
            if sample.step % self.report_every == 0 and not repeated:
                memory = " ".join(f"{mb:.1f}" for _, mb in sorted(sample.rss_mb.items()))
                print(f"step {sample.step:>9d}  T {sample.temperature:7.1f} K  E {sample.total_energy:.6f} eV  "
                      f"RSS per rank {memory} MB", flush=True)


# ---- input -----------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"),
                        help="run directory whose model and molecules are used (default runs/default, the demo's)")
    parser.add_argument("--model", default="student",
                        help="a model of the run (default student) or an exported .pt file")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision when exporting the run's model (default float32, as deployed)")
    parser.add_argument("--steps", type=int, default=100_000, help="MD steps in all (default 100000)")
    parser.add_argument("--nve-steps", type=int, default=10_000,
                        help="the last steps, run in NVE for the energy drift (default 10000; the steps before "
                             "are thermostatted)")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per rank (default 1)")
    parser.add_argument("--every", type=int, default=1000,
                        help="steps between samples of energy and memory (default 1000)")
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="fraction of the steps after which memory is the baseline (default 0.1)")
    parser.add_argument("--max-growth", type=float, default=1.0,
                        help="memory growth after warm-up, %%, above which the exit code is 1 (default 1)")
    parser.add_argument("--atoms", type=int, default=1000, help="approximate number of atoms (default 1000)")
    parser.add_argument("--density", type=float, default=0.01,
                        help="g/cm³ (default 0.01: molecules ~20 Å apart, as run_md.py; the demo student knows "
                             "isolated molecules only)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--damping", type=float, default=0.1, help="Langevin damping time, ps (default 0.1)")
    parser.add_argument("--timestep", type=float, default=0.25, help="fs (default 0.25)")
    parser.add_argument("--out", type=Path, default=Path("soak"), help="output folder (default soak)")
    args = parser.parse_args(argv)
    problem = input_problem(args)
    if problem:
        parser.error(problem)
    return args


def input_problem(args: argparse.Namespace) -> str:
    """What is wrong with the numbers given ("" if nothing)."""
    if args.steps < 10 or args.ranks < 1 or args.threads < 1 or args.atoms < 1:
        return "--steps must be >= 10, --ranks, --threads and --atoms >= 1"
    if not 1 <= args.every <= args.steps // 10:
        return f"--every must be between 1 and --steps / 10 = {args.steps // 10} (at least 10 samples)"
    if not 0.0 < args.warmup < 1.0:
        return "--warmup is a fraction of the steps, between 0 and 1"
    if not 2 * args.every <= args.nve_steps <= args.steps or args.nve_steps % args.every:
        return "--nve-steps must be a multiple of --every, at least 2 of them, and at most --steps"
    if args.density <= 0 or args.temperature <= 0 or args.timestep <= 0 or args.damping <= 0:
        return "--density, --temperature, --timestep and --damping must be positive"
    return ""


def model_file(args: argparse.Namespace, folder: Path) -> Path:
    """The exported file to run: --model itself, or the run's model exported into `folder`."""
    given = Path(args.model)
    if given.is_file() and is_exported(given):
        return given.resolve()
    if given.suffix == ".pt" and not given.is_file():
        raise EkdError(f"model file not found: {given}")
    if not given.is_file() and not args.run.is_dir():
        raise EkdError(f"no run directory {args.run} (the demo writes runs/default: ./run.sh demo) and "
                       f"--model {args.model} is not a file; give --run RUN_DIR or an exported --model FILE")
    target = folder / f"{given.stem}_{args.dtype}.pt"
    export_model(checkpoints_for(given if given.is_file() else args.run, args.model), target,
                 getattr(torch, args.dtype))
    return target


def molecules_for(run: Path) -> List[Atoms]:
    """The run's molecules, or the demo's (embedded data) without a run directory."""
    layout = RunLayout(run)
    config = load_config(layout.config_path if layout.config_path.exists() else None)
    return representative_molecules(read_data(config.data))


def build_box(molecules: List[Atoms], metadata: Metadata, args: argparse.Namespace) -> Atoms:
    """The base box of the molecules replicated to about --atoms; refused if the model does not
    know its elements or if it is smaller than the cutoff + skin."""
    unknown = sorted({s for m in molecules for s in m.get_chemical_symbols()} - set(metadata.elements))
    if unknown:
        raise EkdError(f"the model knows {' '.join(metadata.elements)} but the molecules contain {' '.join(unknown)}")
    per_set = sum(len(m) for m in molecules)
    box = box_of_size(base_box(molecules, copies=max(1, BASE_ATOMS // per_set), density=args.density), args.atoms)
    if box.cell[0, 0] < metadata.cutoff + SKIN:
        raise EkdError(f"box of {box.cell[0, 0]:.1f} Å is smaller than the cutoff + skin "
                       f"({metadata.cutoff + SKIN:.1f} Å): ask for more --atoms or a lower --density")
    return box


# ---- the run ------------------------------------------------------------------------------------------

def deck(model: Path, elements: List[str], args: argparse.Namespace) -> str:
    """Langevin at --temperature, then NVE for the last --nve-steps, on slabs along x, one per
    rank; thermo rows flushed to the log as they are printed (the watcher reads them while
    LAMMPS runs)."""
    thermostatted = args.steps - args.nve_steps
    return "\n".join([
        system_lines(processors=f"{args.ranks} 1 1"), pair_lines(model, elements), neighbor_lines(),
        f"velocity all create {args.temperature} 4928459 mom yes rot yes dist gaussian",
        "fix nve all nve", f"timestep {args.timestep / 1000.0}",
        "compute msd all msd",
        # atoms in rank 0's slab: a count that changes means atoms moved between ranks
        f'variable rank0 atom "x < xlo + lx / {args.ranks}"', "compute rank0 all reduce sum v_rank0",
        thermo_lines(COLUMNS, every=args.every, digits=15, modify="flush yes"),
        *([f"fix langevin all langevin {args.temperature} {args.temperature} {args.damping} 20261201 zero yes",
           f"run {thermostatted}", "unfix langevin"] if thermostatted else []),
        f"run {args.nve_steps}", ""])


def run_soak(folder: Path, model: Path, box: Atoms, elements: List[str], args: argparse.Namespace
             ) -> tuple[List[Sample], str, str, float]:
    """Run the deck while watching it: (samples, log, error or "", wall seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", box, elements)
    (folder / "in.deck").write_text(deck(model, elements, args))
    watcher = Watcher(folder / LOG, report_every=max(args.steps // 10 // args.every, 1) * args.every)
    start = time.monotonic()
    run = run_lammps(folder / "in.deck", ranks=args.ranks, threads=args.threads, monitor=watcher)
    seconds = time.monotonic() - start
    watcher.size = -1
    watcher({})   # rows printed after the last memory sample: kept for the energy, without memory
    return watcher.samples, run.log, run.error, seconds


# ---- the figures ---------------------------------------------------------------------------------------

def memory_figures(samples: List[Sample], warmup_step: int, last_step: int) -> Dict[str, Any]:
    """Per rank: VmRSS (MB) at the first sample at or after the warm-up step, at the first at or
    after half of the steps and at the last sample before `last_step`; growth from warm-up and
    over the second half (%), and the largest value from warm-up on. A leak grows alike in both
    halves; a heap that keeps its largest step's pages (the pair style's `heap keep`) grows in
    steps, when a rank first holds more atoms or pairs than before. The row of the last step is
    left out: it is read while LAMMPS already frees its memory to exit."""
    measured = [s for s in samples if s.rss_mb and s.step < last_step]
    after = [s for s in measured if s.step >= warmup_step]
    if len(after) < 2:
        return {"error": "fewer than two memory samples after warm-up"}
    first, last = after[0], after[-1]
    middle = next(s for s in after if s.step >= min(last_step // 2, last.step))
    ranks = {}
    for rank in sorted(first.rss_mb):
        start, half, end = first.rss_mb[rank], middle.rss_mb.get(rank, np.nan), last.rss_mb.get(rank, np.nan)
        ranks[rank] = {"warmup_mb": start, "middle_mb": half, "end_mb": end,
                       "growth_percent": 100.0 * (end - start) / start,
                       "second_half_growth_percent": 100.0 * (end - half) / half,
                       "max_after_warmup_mb": max(s.rss_mb.get(rank, 0.0) for s in after)}
    return {"warmup_step": first.step, "middle_step": middle.step, "end_step": last.step, "ranks": ranks}


def energy_figures(samples: List[Sample], atoms: int, nve_from: int) -> Dict[str, Any]:
    """Total-energy drift of the NVE segment (from step `nve_from`): least-squares slope
    (eV/atom/ps) and largest |E(t) - E(start)| per atom."""
    nve = {s.step: s for s in samples if s.step >= nve_from}   # the step both runs print, once
    t = np.array([s.time_ps for s in nve.values()])
    e = np.array([s.total_energy for s in nve.values()])
    if len(t) < 2:
        return {"error": "fewer than two rows of the NVE segment"}
    return {"drift_ev_per_atom_per_ps": float(np.polyfit(t, e, 1)[0] / atoms),
            "max_deviation_ev_per_atom": float(np.abs(e - e[0]).max() / atoms),
            "nve_ps": float(t[-1] - t[0]), "nve_from_step": nve_from}


def motion_figures(samples: List[Sample], log: str) -> Dict[str, float]:
    """Temperature, list builds, rms displacement and rank 0's atom count: the dynamics stayed
    sane and atoms crossed between ranks."""
    builds = re.findall(r"Neighbor list builds = (\d+)", log)
    dangerous = re.findall(r"Dangerous builds = (\d+)", log)
    counts = [s.rank0_atoms for s in samples]
    temperatures = [s.temperature for s in samples]
    return {"temperature_start_k": temperatures[0], "temperature_end_k": temperatures[-1],
            "temperature_mean_k": float(np.mean(temperatures)),
            "neighbor_list_builds": int(builds[-1]) if builds else -1,
            "dangerous_builds": int(dangerous[-1]) if dangerous else -1,
            "rms_displacement_a": float(np.sqrt(samples[-1].msd)),
            "rank0_atoms_min": min(counts), "rank0_atoms_max": max(counts)}


def timesteps_per_second(log: str) -> float:
    """Over every run of the log (LAMMPS's Performance line covers the last run only)."""
    loops = re.findall(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", log)
    seconds = sum(float(s) for s, _ in loops)
    return sum(int(n) for _, n in loops) / seconds if seconds > 0 else float("nan")


def summarise(samples: List[Sample], log: str, box: Atoms, args: argparse.Namespace, seconds: float
              ) -> Dict[str, Any]:
    return {"memory": memory_figures(samples, int(args.warmup * args.steps), args.steps),
            "energy": energy_figures(samples, len(box), args.steps - args.nve_steps),
            "motion": motion_figures(samples, log),
            "timesteps_per_s": timesteps_per_second(log),
            "wall_seconds": seconds}


def table(figures: Dict[str, Any], box: Atoms, args: argparse.Namespace) -> str:
    """The short report (markdown)."""
    memory, energy, motion = figures["memory"], figures["energy"], figures["motion"]
    lines = [f"# Soak: {args.steps} steps of {args.timestep} fs, {len(box)} atoms, {args.ranks} ranks "
             f"x {args.threads} thread(s), {args.temperature:.0f} K (Langevin), the last {args.nve_steps} in NVE", ""]
    if "ranks" in memory:
        lines += [f"| rank | RSS (MB) at step {memory['warmup_step']} | {memory['middle_step']} | {memory['end_step']} "
                  f"| growth from step {memory['warmup_step']} | from step {memory['middle_step']} "
                  f"| largest after warm-up (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {rank} | {r['warmup_mb']:.1f} | {r['middle_mb']:.1f} | {r['end_mb']:.1f} "
                  f"| {r['growth_percent']:+.2f} % | {r['second_half_growth_percent']:+.2f} % "
                  f"| {r['max_after_warmup_mb']:.1f} |" for rank, r in memory["ranks"].items()]
    else:
        lines += [f"memory: {memory['error']}"]
    lines += ["", f"- NVE energy drift {energy['drift_ev_per_atom_per_ps']:+.2e} eV/atom/ps over "
              f"{energy['nve_ps']:.3g} ps; largest |E(t) - E(start)| {energy['max_deviation_ev_per_atom']:.2e} eV/atom"
              if "error" not in energy else f"- energy: {energy['error']}",
              f"- temperature {motion['temperature_start_k']:.0f} K -> {motion['temperature_end_k']:.0f} K "
              f"(mean {motion['temperature_mean_k']:.0f} K); rms displacement {motion['rms_displacement_a']:.1f} Å "
              f"in a {box.cell[0, 0]:.1f} Å box",
              f"- {motion['neighbor_list_builds']} neighbour list builds ({motion['dangerous_builds']} dangerous); "
              f"atoms in rank 0's slab between {motion['rank0_atoms_min']} and {motion['rank0_atoms_max']}",
              f"- {figures['timesteps_per_s']:.1f} timesteps/s; {figures['wall_seconds'] / 60:.1f} min", ""]
    return "\n".join(lines)


def write_report(out: Path, figures: Dict[str, Any], samples: List[Sample], box: Atoms, model: Path,
                 args: argparse.Namespace, argv: Sequence[str]) -> str:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"command": "examples/lammps/soak.py " + shlex.join(argv), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "model": str(model), "atoms": len(box), "box_a": float(box.cell[0, 0]), "settings": settings,
              **figures, "samples": [asdict(s) for s in samples]}
    (out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    text = table(figures, box, args)
    (out / "soak.md").write_text(text)
    return text


def grew_too_much(figures: Dict[str, Any], limit: float) -> bool:
    ranks = figures["memory"].get("ranks", {})
    return not ranks or any(not r["growth_percent"] <= limit for r in ranks.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    folder = args.out / "lammps"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model = model_file(args, folder)
        metadata = read_metadata(model)
        box = build_box(molecules_for(args.run), metadata, args)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(box)} atoms in a {box.cell[0, 0]:.1f} Å box, {model}, {args.ranks} ranks, {args.steps} steps",
          flush=True)
    try:
        samples, log, error, seconds = run_soak(folder, model, box, list(metadata.elements), args)
    except EkdError as err:   # LAMMPS not installed
        print(f"error: {err}", file=sys.stderr)
        return 1
    if error or len(samples) < 2:
        print(f"error: LAMMPS failed: {error or 'fewer than two thermo rows'} (log: {folder / LOG})", file=sys.stderr)
        return 1
    figures = summarise(samples, log, box, args, seconds)
    print(write_report(args.out, figures, samples, box, model, args, argv))
    return 1 if grew_too_much(figures, args.max_growth) else 0


if __name__ == "__main__":
    sys.exit(main())
